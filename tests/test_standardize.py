"""Tests of mri_translate.standardize: Nyul-Udupa landmarks learned on a domain, applied, inverted, mapped back to
the domain's typical raw intensities, and stored as plain values."""

import io

import numpy as np
import pytest
import torch

from mri_translate.errors import ConstantImageError
from mri_translate.standardize import (LANDMARKS_KEY, PERCENTILES, LandmarkStandardizer, piecewise_linear,
                                       volume_landmarks)
from mri_translate.transforms import RANGE_KEY

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def head(seed: int, scale: float = 1.0, offset: float = 0.0, gamma: float = 1.0) -> torch.Tensor:
    """``(1, 40, 40, 20)``: zero background, a box of tissue whose values follow a smooth skewed distribution,
    mapped by ``offset + scale * v ** gamma`` (another scanner's intensities)."""
    gen = torch.Generator().manual_seed(seed)
    volume = torch.zeros(1, 40, 40, 20)
    tissue = torch.rand(30, 30, 14, generator=gen) ** 1.5 * 400 + 100
    volume[0, 5:35, 5:35, 3:17] = offset + scale * tissue ** gamma
    return volume


def test_piecewise_linear_extrapolates_with_the_end_slopes():
    xp, fp = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    x = torch.tensor([-1.0, 0.5, 2.0, 5.0])
    assert piecewise_linear(x, xp, fp).tolist() == pytest.approx([-2.0, 1.0, 2.5, 4.0])
    assert piecewise_linear(x, xp, fp, extrapolate=False).tolist() == pytest.approx([0.0, 1.0, 2.5, 3.0])


def test_standardisation_equals_numpy_interp_on_a_real_volume(shared_data):
    """The torch landmark map (:func:`piecewise_linear`, one lookup and one multiply-add per voxel) gives
    ``np.interp``'s numbers within 1e-4 on a real scan (tcga_du_7294's T1w, its own landmarks onto a domain's scale),
    inside the landmarks and, held constant, beyond them."""
    from mri_translate.io import load_volume

    volume = load_volume(shared_data / "volumes" / "tcga_du_7294" / "t1.nii.gz")
    landmarks = volume_landmarks(volume)
    scale = torch.linspace(-1.0, 1.0, len(landmarks))
    ours = piecewise_linear(volume.as_tensor().float(), landmarks, scale, extrapolate=False)
    numpy = np.interp(volume.numpy().astype(np.float64), landmarks.numpy(), scale.numpy())
    np.testing.assert_allclose(ours.numpy(), numpy, atol=1e-4)
    inside = (volume > landmarks[0]) & (volume < landmarks[-1])
    assert 0.1 < float(inside.float().mean()) < 0.9  # both the mapped range and the held ends are exercised


def test_landmarks_are_background_then_foreground_percentiles():
    volume = head(0)
    landmarks = volume_landmarks(volume)
    assert landmarks.shape == (len(PERCENTILES) + 1,)
    assert float(landmarks[0]) == pytest.approx(0.0, abs=0.1)
    tissue = volume[volume > 0]
    expected = torch.quantile(tissue, torch.tensor(PERCENTILES) / 100)
    torch.testing.assert_close(landmarks[1:], expected, rtol=1e-3, atol=0.5)
    assert torch.all(landmarks[1:] > landmarks[:-1])
    with pytest.raises(ConstantImageError):
        volume_landmarks(torch.full((1, 4, 4, 4), 7.0))


def test_standardised_volume_is_in_range_with_exact_background_and_meta():
    standardizer = LandmarkStandardizer.fit([head(0), head(1, 2.0, 50.0), head(2, 0.5)])
    out = standardizer(head(3, 3.0))
    assert out.dtype == torch.float32 and out.shape == (1, 40, 40, 20)
    assert out.min() == -1 and out.max() <= 1
    assert torch.all(out[head(3) == 0] == -1)                       # background stays background
    assert len(out.meta[LANDMARKS_KEY]) == len(PERCENTILES) + 1
    low, high = out.meta[RANGE_KEY]
    assert low == pytest.approx(0.0, abs=1.0) and high > out.meta[LANDMARKS_KEY][-1]


def test_scanner_differences_are_removed():
    """The same anatomy under different linear and non-linear intensity maps lands on the same values."""
    standardizer = LandmarkStandardizer.fit([head(0), head(1, 2.0, 50.0), head(2, 0.5, 0.0, 1.2)])
    a = standardizer(head(7))
    b = standardizer(head(7, 4.0, 30.0))
    c = standardizer(head(7, 1.0, 0.0, 1.3))
    inside = head(7) > 0
    assert float((a - b)[inside].abs().max()) < 0.01
    assert float((a - c)[inside].abs().max()) < 0.05  # non-linear: piecewise-linear between 12 landmarks


def test_round_trip_with_the_volume_s_own_landmarks():
    standardizer = LandmarkStandardizer.fit([head(0), head(1, 2.0, 50.0), head(2, 0.5)])
    raw = head(4, 1.7, 20.0)
    out = standardizer(raw)
    back = standardizer.invert(out, out.meta[LANDMARKS_KEY])
    low, high = out.meta[RANGE_KEY]
    kept = (raw >= low) & (raw <= high)  # voxels not clipped to [-1, 1]
    assert kept.float().mean() > 0.99
    assert float((back - raw)[kept].abs().max()) < 1e-3 * (high - low)
    assert torch.all(back[raw < low] == low)


def test_to_raw_maps_onto_the_median_training_volume():
    """A translation into this domain comes back in the domain's typical raw intensities: the training volume
    in the middle of three (the median landmarks) is reproduced from its standardised values."""
    volumes = [head(5, 1.0), head(5, 2.0, 40.0), head(5, 4.0, 80.0)]
    standardizer = LandmarkStandardizer.fit(volumes)
    middle = volumes[1]
    out = standardizer(middle)
    inside = middle > 0
    assert float((standardizer.to_raw(out) - middle)[inside].abs().max()) < 1e-3 * float(middle.max())
    assert standardizer.to_raw(torch.tensor([-1.0])).item() == pytest.approx(float(standardizer.raw[0]))


def test_to_dict_round_trips_through_a_weights_only_checkpoint():
    standardizer = LandmarkStandardizer.fit([head(0), head(1, 2.0, 50.0)])
    values = standardizer.to_dict()
    assert all(isinstance(v, float) for key in ("scale", "raw", "percentiles") for v in values[key])
    buffer = io.BytesIO()
    torch.save({"standardizer": values}, buffer)
    buffer.seek(0)
    restored = LandmarkStandardizer.from_dict(torch.load(buffer, weights_only=True)["standardizer"])
    volume = head(3)
    torch.testing.assert_close(restored(volume), standardizer(volume), rtol=0, atol=0)
    torch.testing.assert_close(restored.to_raw(torch.tensor([0.3])), standardizer.to_raw(torch.tensor([0.3])))
    with pytest.raises(ValueError, match="landmarks"):
        LandmarkStandardizer([0.0, 1.0], [0.0, 1.0, 2.0])
