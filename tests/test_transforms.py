"""Tests of mri_translate.transforms: exact RAS reorientation and its inverse, robust [-1, 1] normalisation and
its inverse, on real volumes (LAS, LPS, oblique) and a synthetic LPS one."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import SYNTHETIC_AFFINE, synthetic_volume
from mri_translate.errors import InputError
from mri_translate.io import load_volume
from mri_translate.transforms import (
    RANGE_KEY,
    RobustNormalize,
    denormalize,
    foreground_mask,
    from_canonical,
    largest_pieces,
    to_canonical,
)

REAL_VOLUMES = {
    "avg152_LAS": "volumes/avg152/avg152T1.nii",
    "tcga_du_7294_LPS": "volumes/tcga_du_7294/t1.nii.gz",
    "tcga_fg_6692_oblique_LAS": "volumes/tcga_fg_6692_native/t1_ax_se.nii.gz",
}


@pytest.fixture(scope="module")
def real_volumes(shared_data):
    """The three shared T1 volumes, loaded once for this module."""
    return {name: load_volume(shared_data / relative) for name, relative in REAL_VOLUMES.items()}


def world_to_voxel_check(original, canonical, n=200, seed=0):
    """The voxel at index i of ``canonical`` is the voxel of ``original`` at the same world position."""
    rng = np.random.default_rng(seed)
    shape_c = np.asarray(canonical.shape[1:])
    idx_c = rng.integers(0, shape_c, size=(n, 3))
    world = (np.asarray(canonical.affine) @ np.c_[idx_c, np.ones(n)].T)
    idx_o = np.linalg.solve(np.asarray(original.meta["original_affine"]), world)[:3].T
    idx_o_int = np.rint(idx_o).astype(int)
    np.testing.assert_allclose(idx_o, idx_o_int, atol=1e-3)
    a = canonical[0].as_tensor().numpy()[tuple(idx_c.T)]
    b = original[0].as_tensor().numpy()[tuple(idx_o_int.T)]
    np.testing.assert_array_equal(a, b)


def check_canonical_round_trip(volume, expected_codes):
    assert volume.meta["original_axcodes"] == expected_codes
    original_voxels = volume.as_tensor().clone()
    canonical = to_canonical(volume)
    assert tuple(nib.aff2axcodes(np.asarray(canonical.affine))) == ("R", "A", "S")
    assert sorted(canonical.shape[1:]) == sorted(volume.shape[1:])
    world_to_voxel_check(volume, canonical)

    restored = from_canonical(canonical, volume.meta["original_axcodes"], affine=volume.meta["original_affine"])
    assert torch.equal(restored.as_tensor(), original_voxels)
    np.testing.assert_allclose(np.asarray(restored.affine), volume.meta["original_affine"], atol=1e-4)
    assert tuple(nib.aff2axcodes(np.asarray(restored.affine))) == tuple(expected_codes)
    assert torch.equal(volume.as_tensor(), original_voxels)  # the input was not modified in place


@pytest.mark.parametrize("name", list(REAL_VOLUMES))
def test_canonical_round_trip_real(real_volumes, name):
    check_canonical_round_trip(real_volumes[name], name.rsplit("_", 1)[1])


def test_canonical_round_trip_synthetic(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    check_canonical_round_trip(volume, "LPS")
    # independent reference: nibabel's closest canonical orientation of the same file
    reference = nib.as_closest_canonical(nib.load(str(synthetic_nifti)))
    canonical = to_canonical(load_volume(synthetic_nifti))
    np.testing.assert_array_equal(canonical[0].numpy(), reference.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(np.asarray(canonical.affine), reference.affine, atol=1e-5)
    np.testing.assert_allclose(np.diag(np.asarray(canonical.affine))[:3], [1.0, 1.2, 2.5], atol=1e-6)


def test_from_canonical_checks_the_affine(synthetic_nifti):
    canonical = to_canonical(load_volume(synthetic_nifti))
    wrong = SYNTHETIC_AFFINE.copy()
    wrong[0, 3] += 5.0
    with pytest.raises(ValueError, match="differs"):
        from_canonical(canonical, "LPS", affine=wrong)


# --- RobustNormalize ----------------------------------------------------------------------------------------


def reference_range(x: np.ndarray, lower=0.5, upper=99.5):
    """numpy version of the documented rule: whole-image lower percentile, upper percentile of the foreground
    (voxels above 10 % of the way from the darkest to the 99th percentile). "Darkest" is taken as the 1st
    percentile, not the minimum, so that one negative resampling artefact (tcga_du_7294 has a -69 voxel in a
    zero background) does not turn the background into foreground; on clean images both agree."""
    flat = x.reshape(-1).astype(np.float64)
    low = np.percentile(flat, lower)
    darkest = np.percentile(flat, 1)
    foreground = flat[flat > darkest + 0.1 * (np.percentile(flat, 99) - darkest)]
    return low, np.percentile(foreground, upper)


def check_normalized(image, out):
    data = image.as_tensor().float() if isinstance(image, MetaTensor) else torch.as_tensor(image).float()
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.float32 and out.shape == data.shape
    values = out.as_tensor()
    assert not bool(torch.isnan(values).any())
    assert float(values.min()) == -1.0 and float(values.max()) == 1.0
    low, high = out.meta[RANGE_KEY]
    assert high > low
    assert bool(torch.where(data <= low, values == -1, True).all())
    assert bool(torch.where(data >= high, values == 1, True).all())
    inside = (data >= low) & (data <= high)
    assert int(inside.sum()) > 0.5 * data.numel()
    error = torch.where(inside, (denormalize(values, (low, high)) - data).abs(), 0.0)
    assert float(error.max()) <= 1e-4 * max(abs(low), abs(high)), float(error.max())
    return low, high


def test_normalize_synthetic(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    out = RobustNormalize()(volume)
    low, high = check_normalized(volume, out)
    np.testing.assert_allclose((low, high), reference_range(synthetic_volume()), rtol=1e-5)
    assert low == 0.0
    assert bool((out[volume == 0] == -1).all())  # background
    assert out.meta["filename_or_obj"] == volume.meta["filename_or_obj"]  # meta is carried over
    assert RANGE_KEY not in volume.meta  # the input's meta is not modified


@pytest.mark.parametrize("name", ["avg152_LAS", "tcga_du_7294_LPS"])
def test_normalize_real(real_volumes, name):
    volume = real_volumes[name]
    out = RobustNormalize()(volume)
    low, high = check_normalized(volume, out)
    data = volume[0].as_tensor().numpy()
    np.testing.assert_allclose((low, high), reference_range(data), rtol=1e-4, atol=1e-6)
    background = ~foreground_mask(volume.as_tensor())
    assert float(out.as_tensor()[background].median()) < -0.85  # background maps to (near) -1
    if name.startswith("tcga"):  # skull-stripped: the background is exactly zero
        assert float(out[0, 0, 0, 0]) == -1.0


def test_normalize_int16_with_negative_values(real_volumes):
    volume = real_volumes["tcga_du_7294_LPS"]
    assert volume.meta["original_dtype"] == "int16" and float(volume.min()) < 0
    out = RobustNormalize()(volume)
    assert bool((out[volume < 0] == -1).all())


def test_normalize_int16_tensor_with_negative_background():
    rng = np.random.default_rng(1)
    data = synthetic_volume((16, 16, 12)) * 4 - 20  # background -20, head 380..~1200
    data += rng.normal(0, 3, data.shape)
    image = torch.as_tensor(np.rint(data).astype(np.int16))[None]
    assert image.dtype == torch.int16 and int(image.min()) < 0
    out = RobustNormalize()(image)
    check_normalized(image, out)


def test_normalize_uint8_png(shared_data):
    volume = load_volume(shared_data / "seed_2d/TrainT1/Image #10.png")
    out = RobustNormalize()(volume)
    check_normalized(volume, out)
    raw = torch.as_tensor(np.asarray(volume[0].numpy(), dtype=np.uint8))[None]
    assert raw.dtype == torch.uint8
    out_raw = RobustNormalize()(raw)
    assert torch.equal(out_raw.as_tensor(), out.as_tensor())
    assert out_raw.meta[RANGE_KEY] == out.meta[RANGE_KEY]


@pytest.mark.parametrize("value", [0.0, 7.0, -3.0])
def test_constant_image_is_refused(value):
    image = MetaTensor(torch.full((1, 6, 5, 4), value), meta={"filename_or_obj": "/data/flat.nii.gz"})
    with pytest.raises(InputError, match="constant") as excinfo:
        RobustNormalize()(image)
    assert str(excinfo.value).startswith("/data/flat.nii.gz: ")
    assert "nan" not in str(excinfo.value).lower()


def test_all_negative_image_is_not_called_constant():
    image = torch.linspace(-200.0, -50.0, 1000).reshape(1, 10, 10, 10)
    out = RobustNormalize()(image)
    check_normalized(image, out)
    np.testing.assert_allclose(out.meta[RANGE_KEY], reference_range(image.numpy()), rtol=1e-3)


def test_percentiles_change_the_range(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    low_a, high_a = RobustNormalize(0.5, 99.5)(volume).meta[RANGE_KEY]
    low_b, high_b = RobustNormalize(0.5, 50.0)(volume).meta[RANGE_KEY]
    assert high_b < high_a


@pytest.mark.parametrize("lower, upper", [(50, 10), (5, 5), (-1, 99), (1, 101), (100, 100)])
def test_invalid_percentiles(lower, upper):
    with pytest.raises(ValueError):
        RobustNormalize(lower, upper)


def test_denormalize_clamps_and_maps_ends():
    out = denormalize(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]), (10.0, 30.0))
    assert out.tolist() == [10.0, 10.0, 20.0, 30.0, 30.0]


@pytest.mark.parametrize("offset", [0.0, -1000.0, 250.0])
def test_foreground_mask(offset):
    """Background is what lies below 10 % of the way from the minimum to the 99th percentile, wherever the
    intensities sit (all-negative images included)."""
    data = torch.as_tensor(synthetic_volume()) + offset
    mask = foreground_mask(data)
    assert mask.dtype == torch.bool
    values = data.numpy().astype(np.float64)
    threshold = values.min() + 0.1 * (np.percentile(values, 99) - values.min())
    assert torch.equal(mask, data > threshold)
    assert torch.equal(mask, torch.as_tensor(synthetic_volume()) > 0)  # the ellipsoid, exactly


def test_largest_pieces_keeps_the_largest_and_the_big_enough():
    """The largest 6-connected piece and every piece of at least ``min_voxels`` stay; smaller ones go; pieces
    touching only at a corner are separate."""
    mask = np.zeros((12, 12, 12), bool)
    mask[1:6, 1:6, 1:6] = True      # 125 voxels: the largest
    mask[8:11, 8:11, 8:11] = True   # 27 voxels
    mask[0, 11, 0] = True           # a speck
    mask[6, 6, 6] = True            # touches the largest only at a corner: its own piece
    expected = mask.copy()
    expected[0, 11, 0] = expected[6, 6, 6] = False
    assert np.array_equal(largest_pieces(mask, min_voxels=20), expected)
    only = np.zeros_like(mask)
    only[1:6, 1:6, 1:6] = True
    assert np.array_equal(largest_pieces(mask), only)  # no minimum: the largest piece alone
    assert largest_pieces(only) is only  # one piece: returned as it is


def test_foreground_mask_ignores_one_negative_outlier():
    data = torch.as_tensor(synthetic_volume())
    head = data > 0
    data[0, 0, 0] = -1000.0  # a resampling/ringing artefact in the background
    assert torch.equal(foreground_mask(data)[head], head[head])
    assert float(foreground_mask(data).float().mean()) < 0.35
