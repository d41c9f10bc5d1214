"""Tests of mri_translate.metrics on constructed volumes with known answers (and one real pair if present)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mri_translate import metrics
from mri_translate.metrics import (
    auto_mask,
    baseline_identity,
    baseline_inverted_histogram_matched,
    cycle_error,
    cycle_error_map,
    histogram_distance,
    interslice_consistency,
    paired_metrics,
    per_slice_metrics,
    scale_for_comparison,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "volumes" / "tcga_du_7294"
REGION_KEYS = {"psnr", "ssim_3d", "ssim_2d", "mae", "nmse", "pearson_r"}


def smooth_volume(shape=(24, 24, 16), seed=0, sigma=2.0):
    """Structured random volume with values in [0.2, 0.8]."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return 0.2 + 0.6 * (field - field.min()) / (field.max() - field.min())


def ball(shape, radius, centre=None):
    grid = np.indices(shape).astype(float)
    centre = np.array(shape, dtype=float) / 2 - 0.5 if centre is None else np.asarray(centre, dtype=float)
    return np.sum((grid - centre.reshape(-1, 1, 1, 1)) ** 2, axis=0) <= radius**2


def test_identical_volumes_give_perfect_scores():
    mask = ball((24, 24, 16), 9)
    ref = np.where(mask, smooth_volume() * 500, 0.0)
    result = paired_metrics(torch.from_numpy(ref.copy()), ref, mask)
    assert result["normalisation"] == metrics.NORMALISATION
    assert result["mask_voxels"] == int(mask.sum())
    for region in ("mask", "whole"):
        values = result[region]
        assert set(values) == REGION_KEYS and all(type(v) is float for v in values.values())
        assert values["psnr"] == metrics.PSNR_CAP_DB == 100.0
        assert values["ssim_3d"] == pytest.approx(1.0, abs=1e-6)
        assert values["ssim_2d"] == pytest.approx(1.0, abs=1e-6)
        assert values["mae"] == 0.0 and values["nmse"] == 0.0
        assert values["pearson_r"] == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_mse_for_known_noise():
    rng = np.random.default_rng(1)
    ref = smooth_volume((32, 32, 16), seed=1)
    peaks = rng.random(ref.shape) < 0.02  # same voxels exactly 1 in both: 99.5th percentile stays 1
    ref[peaks] = 1.0
    pred = np.clip(ref + rng.normal(0.0, 0.05, ref.shape), 0.0, 0.95)
    pred[peaks] = 1.0
    mask = np.ones(ref.shape, dtype=bool)
    np.testing.assert_array_equal(scale_for_comparison(pred, mask), pred)
    result = paired_metrics(pred, ref, mask)["mask"]
    mse = np.mean((pred - ref) ** 2)
    assert result["psnr"] == pytest.approx(-10 * np.log10(mse), abs=1e-9)
    assert result["psnr"] == pytest.approx(26.0, abs=0.5)
    assert result["mae"] == pytest.approx(np.mean(np.abs(pred - ref)))
    assert result["nmse"] == pytest.approx(np.sum((pred - ref) ** 2) / np.sum(ref**2))
    assert result["pearson_r"] == pytest.approx(np.corrcoef(pred.ravel(), ref.ravel())[0, 1])
    assert 0.0 < result["ssim_3d"] < 1.0 and 0.0 < result["ssim_2d"] < 1.0


def test_ssim_map_equals_monai_away_from_border():
    from monai.metrics.regression import compute_ssim_and_cs

    rng = np.random.default_rng(2)
    x = smooth_volume((20, 22, 18), seed=2, sigma=1.0)
    y = np.clip(x + rng.normal(0.0, 0.05, x.shape), 0.0, 1.0)
    ssim_3d, ssim_2d = metrics._ssim_maps(x, y, slice_axis=2)
    assert ssim_3d.shape == ssim_2d.shape == x.shape
    monai_3d, _ = compute_ssim_and_cs(
        torch.tensor(x[None, None]), torch.tensor(y[None, None]), 3, [11] * 3, [1.5] * 3, data_range=1.0
    )
    np.testing.assert_allclose(ssim_3d[5:-5, 5:-5, 5:-5], monai_3d[0, 0].numpy(), atol=5e-4)
    slices_x, slices_y = (torch.tensor(np.moveaxis(a, 2, 0)[:, None]) for a in (x, y))
    monai_2d, _ = compute_ssim_and_cs(slices_x, slices_y, 2, [11] * 2, [1.5] * 2, data_range=1.0)
    np.testing.assert_allclose(np.moveaxis(ssim_2d, 2, 0)[:, 5:-5, 5:-5], monai_2d[:, 0].numpy(), atol=5e-4)


def test_flipped_structured_volume_has_low_mask_ssim():
    ref = smooth_volume((24, 24, 16), seed=3)
    mask = np.ones(ref.shape, dtype=bool)
    result = paired_metrics(np.flip(ref, axis=0).copy(), ref, mask)["mask"]
    assert result["ssim_3d"] < 0.5 and result["ssim_2d"] < 0.5
    assert result["psnr"] < 30.0


def test_whole_image_ssim_is_inflated_by_zero_background():
    shape = (40, 40, 16)
    mask = np.zeros(shape, dtype=bool)
    mask[14:26, 14:26, 4:12] = True
    ref = np.where(mask, smooth_volume(shape, seed=4), 0.0)
    noise = np.random.default_rng(4).normal(0.0, 0.2, shape)
    pred = np.where(mask, np.clip(ref + noise, 0.0, None), 0.0)
    result = paired_metrics(pred, ref, mask)
    assert result["mask"]["ssim_3d"] < 0.8
    assert result["whole"]["ssim_3d"] > result["mask"]["ssim_3d"] + 0.15
    assert result["whole"]["ssim_2d"] > result["mask"]["ssim_2d"] + 0.15
    assert result["whole"]["psnr"] > result["mask"]["psnr"] + 5.0


def test_2d_slice_is_a_one_slice_volume():
    ref = smooth_volume((24, 24, 1), seed=5)[..., 0]
    pred = np.clip(ref + np.random.default_rng(5).normal(0.0, 0.05, ref.shape), 0.0, 1.0)
    result = paired_metrics(pred, ref, np.ones(ref.shape))
    assert result["mask"]["ssim_3d"] == pytest.approx(result["mask"]["ssim_2d"], abs=1e-5)
    assert 0.0 < result["mask"]["ssim_2d"] < 1.0
    assert scale_for_comparison(ref, np.ones(ref.shape)).shape == ref.shape


def test_shape_mismatch_raises_naming_both_shapes():
    with pytest.raises(ValueError, match=re.escape("pred shape (2, 3, 4) does not match ref shape (2, 3, 5)")):
        paired_metrics(np.ones((2, 3, 4)), np.ones((2, 3, 5)), np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=re.escape("mask shape (2, 3, 4) does not match ref shape (2, 3, 5)")):
        paired_metrics(np.ones((2, 3, 5)), np.ones((2, 3, 5)), np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="shape"):
        cycle_error_map(np.ones((4, 4)), np.ones((4, 5)))


def test_empty_mask_or_zero_percentile_raises():
    volume = smooth_volume((8, 8, 4))
    empty = np.zeros(volume.shape, dtype=bool)
    with pytest.raises(ValueError, match="mask is empty"):
        scale_for_comparison(volume, empty)
    with pytest.raises(ValueError, match="mask is empty"):
        paired_metrics(volume, volume, empty)
    with pytest.raises(ValueError, match="percentile"):
        scale_for_comparison(np.zeros(volume.shape), np.ones(volume.shape))
    with pytest.raises(ValueError, match="mask is empty"):
        cycle_error(volume, volume, empty)


def test_auto_mask_keeps_largest_component_with_holes_filled():
    shape = (32, 32, 24)
    brain = ball(shape, 9)
    hole = ball(shape, 3)
    blob = ball(shape, 2, centre=(3, 3, 3))
    volume = np.where(brain & ~hole, 100.0, 0.0) + np.where(blob, 100.0, 0.0)
    mask = auto_mask(torch.from_numpy(volume))
    assert mask.dtype == bool and mask.shape == shape
    np.testing.assert_array_equal(mask, brain)
    np.testing.assert_array_equal(auto_mask(np.zeros(shape), reference=volume), brain)


def test_interslice_consistency():
    shape = (24, 24, 16)
    source = smooth_volume(shape, seed=6)
    mask = np.ones(shape, dtype=bool)
    assert interslice_consistency(source, source, mask) == 1.0
    flicker = np.random.default_rng(6).normal(0.0, 0.05, (1, 1, shape[2]))  # a different offset per slice
    noisy = np.clip(source + flicker + np.random.default_rng(7).normal(0.0, 0.02, shape), 0.0, 1.0)
    assert interslice_consistency(noisy, source, mask) > 1.5


def test_interslice_consistency_of_an_input_without_slice_change_is_none_or_one():
    """One slice repeated (no change between slices): the ratio is undefined (``None``, never infinity) when the
    output changes, 1.0 when it does not either."""
    shape = (24, 24, 16)
    repeated = np.repeat(smooth_volume(shape, seed=6)[..., :1], shape[2], axis=2)
    mask = np.ones(shape, dtype=bool)
    assert interslice_consistency(smooth_volume(shape, seed=7), repeated, mask) is None
    assert interslice_consistency(repeated * 0.5, repeated, mask) == 1.0


def test_cycle_error():
    x = smooth_volume((8, 8, 4), seed=8) * 2 - 1
    mask = np.ones(x.shape, dtype=bool)
    assert cycle_error(x, x.copy(), mask) == 0.0
    cycled = x + 0.1
    assert cycle_error(x, torch.from_numpy(cycled), mask) == pytest.approx(0.1)
    error_map = cycle_error_map(x, cycled)
    assert error_map.shape == x.shape
    np.testing.assert_allclose(error_map, 0.1)


def test_histogram_distance():
    mask = ball((24, 24, 16), 9)
    volume = np.where(mask, smooth_volume(seed=9), 0.0)
    volume[mask & (np.indices(mask.shape)[0] == 12)] = 1.0  # fixes the 99.5th percentile at 1
    assert histogram_distance(volume, volume, mask, mask) == 0.0
    darker = np.where(mask, np.clip(volume - 0.2, 0.0, None), 0.0)
    darker[volume == 1.0] = 1.0
    distance = histogram_distance(darker, volume, mask, mask)
    assert distance == pytest.approx(0.2, abs=0.03)


def test_baselines_on_synthetic_contrast_inversion():
    shape = (24, 24, 16)
    head = ball(shape, 10)
    tissue_a = ball(shape, 5)
    noise = np.random.default_rng(10).normal(0.0, 0.02, (2, *shape))
    t1 = np.where(head, np.where(tissue_a, 0.8, 0.4) + noise[0], 0.0)  # tissue A bright, B dark
    t2 = np.where(head, np.where(tissue_a, 0.3, 0.9) + noise[1], 0.0)  # the reverse
    identity = baseline_identity(torch.from_numpy(t1))
    assert identity.dtype == np.float32 and np.allclose(identity, t1, atol=1e-6)
    matched = baseline_inverted_histogram_matched(t1, head, t2, head)
    assert matched.dtype == np.float32 and matched.shape == shape
    assert np.all(matched[~head] == 0)
    assert np.corrcoef(matched[head], t2[head])[0, 1] > 0.8
    assert np.corrcoef(identity[head], t2[head])[0, 1] < -0.8
    np.testing.assert_allclose(np.sort(matched[head]), np.sort(t2[head]), atol=1e-6)


def test_per_slice_metrics_one_row_per_non_empty_slice():
    ref = smooth_volume((16, 16, 12), seed=11)
    pred = np.clip(ref + np.random.default_rng(11).normal(0.0, 0.05, ref.shape), 0.0, 1.0)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:14, 2:14, 3:11] = True
    rows = per_slice_metrics(pred, ref, mask)
    assert [row["slice"] for row in rows] == list(range(3, 11))
    assert all(set(row) == {"slice", "psnr", "ssim", "mae"} for row in rows)
    assert all(0.0 < row["ssim"] < 1.0 and row["psnr"] > 10.0 for row in rows)
    identical = per_slice_metrics(ref, ref, mask, slice_axis=0)
    assert [row["slice"] for row in identical] == list(range(2, 14))
    assert all(row["psnr"] == 100.0 and row["ssim"] == pytest.approx(1.0, abs=1e-6) for row in identical)


@pytest.mark.skipif(
    not ((DATA / "t1.nii.gz").exists() and (DATA / "t2.nii.gz").exists()),
    reason=f"real test volumes not found in {DATA}",
)
def test_inverted_histogram_baseline_on_real_pair():
    """T1 -> T2 of one subject; the target histogram is this subject's own T2 (an optimistic baseline)."""
    nib = pytest.importorskip("nibabel")
    t1 = nib.load(DATA / "t1.nii.gz").get_fdata(dtype=np.float32)
    t2 = nib.load(DATA / "t2.nii.gz").get_fdata(dtype=np.float32)
    mask = auto_mask(t2)
    baseline = baseline_inverted_histogram_matched(t1, auto_mask(t1), t2, mask)
    ours = paired_metrics(baseline, t2, mask)
    identity = paired_metrics(baseline_identity(t1), t2, mask)
    assert 0.2 < ours["mask"]["ssim_3d"] < 0.75
    assert 10.0 < ours["mask"]["psnr"] < 18.0
    assert ours["mask"]["psnr"] > identity["mask"]["psnr"] + 3.0
    assert ours["mask"]["ssim_3d"] > identity["mask"]["ssim_3d"]
    assert identity["whole"]["psnr"] > identity["mask"]["psnr"]  # background inflates whole-image scores


def region_case():
    """``(pred, ref, brain, region)`` with a known contrast: a 4-voxel cube (the region) at 150 in the reference and
    120 in the prediction; the brain is the region grown by 3 steps, the 2 steps next to the region are bright
    (1000) and the outermost step is 100. Left out with the region's 2-voxel margin, the bright ring cannot move
    the median of the brain around the region (100): contrasts 1.5 and 1.2, ratio 0.8."""
    region = np.zeros((16, 16, 16), dtype=bool)
    region[6:10, 6:10, 6:10] = True
    ring = ndimage.binary_dilation(region, iterations=2) & ~region
    brain = ndimage.binary_dilation(region, iterations=3)
    ref = np.where(brain, 100.0, 0.0)
    ref[ring] = 1000.0
    ref[region] = 150.0
    pred = ref.copy()
    pred[region] = 120.0
    return pred, ref, brain, region


def test_region_contrast_and_metrics_on_a_constructed_case():
    pred, ref, brain, region = region_case()
    assert metrics.region_contrast(ref, region, brain) == pytest.approx(1.5)
    assert metrics.region_contrast(pred, region, brain) == pytest.approx(1.2)
    inside = metrics.region_metrics(pred, ref, brain, region)
    assert inside["contrast"] == pytest.approx(1.2) and inside["reference_contrast"] == pytest.approx(1.5)
    assert inside["contrast_ratio"] == pytest.approx(0.8) and inside["voxels"] == 64
    # Both scaled by their 99.5th percentile in the brain (1000): the region differs by 0.03 everywhere.
    assert inside["mae"] == pytest.approx(0.03) and inside["psnr"] == pytest.approx(-10 * np.log10(0.03 ** 2))
    assert inside["ssim_3d"] < 1.0
    same = metrics.region_metrics(ref, ref, brain, region)
    assert same["contrast_ratio"] == 1.0 and same["psnr"] == 100.0 and same["ssim_3d"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no contrast"):
        metrics.region_contrast(ref, brain, brain)  # no brain left outside the region


def test_brasyn_ssim_clips_each_volume_to_its_own_percentiles_and_scores_the_whole_volume():
    """A prediction that is the truth under an increasing affine map scores 1 (each volume is clipped to its own
    0.5-99.5th brain percentiles and scaled); noise lowers it; the background counts (whole volume): one as bright as
    the brain scores lower than a dark one, which clips to 0 like the truth's."""
    x = smooth_volume((28, 28, 20), seed=4, sigma=1.5) + 0.2
    brain = ball(x.shape, 9)
    truth = np.where(brain, x, 0.0)
    assert metrics.brasyn_ssim(3.0 * truth + 0.0, truth, brain) == pytest.approx(1.0, abs=1e-6)
    noisy = truth + np.random.default_rng(0).normal(0, 0.05, x.shape) * brain
    score = metrics.brasyn_ssim(noisy, truth, brain)
    assert 0.3 < score < 0.99
    assert metrics.brasyn_ssim(noisy + 0.9 * ~brain, truth, brain) < score - 0.05
    assert metrics.brasyn_ssim(noisy - 0.1 * ~brain, truth, brain) == pytest.approx(score)
    with pytest.raises(ValueError, match="constant"):
        metrics.brasyn_ssim(np.ones(x.shape), truth, brain)
