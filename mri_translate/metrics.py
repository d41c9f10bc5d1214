"""Image-quality metrics for T1w <-> T2w translation, computed honestly inside a foreground mask.

Every function takes one volume ``(X, Y, Z)`` or one 2D slice ``(H, W)`` (treated as an ``(H, W, 1)``
volume) as a numpy array or a torch tensor, and is pure (no I/O, no global state).

Paired metrics compare images after :func:`scale_for_comparison`: each image is divided by its own
99.5th percentile inside the mask and clipped to [0, 1], so the data range is 1.

SSIM: one implementation, :func:`_ssim_maps`, serves 2D and 3D. It is MONAI's formula
(``monai.metrics.regression.compute_ssim_and_cs``: Gaussian window of size 11, sigma 1.5, k1 = 0.01,
k2 = 0.03, data range 1), computed with a separable window on edge-replicated (replicate-padded) input,
so the SSIM map has the image's shape and can be averaged over any region (mask or whole image).
Away from the border it equals MONAI's map (both in float32, agreeing to ~1e-4); MONAI's ``SSIMMetric``
instead drops a 5-voxel border. 2D maps filter the two in-plane axes only; 3D maps filter all three.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from .transforms import largest_pieces

try:  # NumPy >= 2
    from numpy.lib.array_utils import normalize_axis_index
except ImportError:  # NumPy 1.x (setup.cfg allows >= 1.24: MONAI 1.4 pins numpy < 2)
    from numpy.core.multiarray import normalize_axis_index

NORMALISATION = "each image / its own 99.5th percentile inside the mask, clipped to [0, 1]; data range 1"
PSNR_CAP_DB = 100.0
SSIM_KERNEL_SIZE = 11
SSIM_KERNEL_SIGMA = 1.5
_C1 = (0.01 * 1.0) ** 2
_C2 = (0.03 * 1.0) ** 2


def _as_volume(x, name: str) -> np.ndarray:
    """Return ``x`` as a float64 numpy volume (X, Y, Z); a 2D slice (H, W) becomes (H, W, 1)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume (X, Y, Z) or a 2D slice (H, W), got shape {arr.shape}")
    return arr


def _as_mask(mask, like: np.ndarray, like_name: str) -> np.ndarray:
    """Return ``mask`` as a boolean volume with the shape of ``like`` (non-zero = foreground)."""
    m = _as_volume(mask, "mask") != 0
    _check_same_shape(m, "mask", like, like_name)
    return m


def _check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} shape {a.shape} does not match {b_name} shape {b.shape}")


def auto_mask(volume, reference=None) -> np.ndarray:
    """Foreground (brain) mask of one volume.

    Voxels above 10% of the 99th percentile of ``reference`` (or of ``volume`` when no reference is given)
    are kept; then only the largest connected component remains and its holes are filled (in 3D).

    Args:
        volume: array or tensor (X, Y, Z) or (H, W); gives the output shape.
        reference: optional array or tensor of the same shape whose intensities define the mask.

    Returns:
        Boolean array with the shape of ``volume`` (all False when nothing exceeds the threshold).
    """
    vol = _as_volume(volume, "volume")
    ref = vol if reference is None else _as_volume(reference, "reference")
    _check_same_shape(ref, "reference", vol, "volume")
    foreground = ndimage.binary_fill_holes(largest_pieces(ref > 0.1 * np.percentile(ref, 99)))
    return foreground.reshape(np.shape(volume))


def scale_for_comparison(volume, mask) -> np.ndarray:
    """Divide by the volume's own 99.5th percentile inside ``mask`` and clip to [0, 1].

    Args:
        volume: array or tensor (X, Y, Z) or (H, W), any intensity units.
        mask: boolean (or 0/1) array of the same shape.

    Returns:
        float64 array with the shape of ``volume``, values in [0, 1] (unitless, data range 1).

    Raises:
        ValueError: shapes differ, the mask is empty, or the percentile inside the mask is not positive.
    """
    vol = _as_volume(volume, "volume")
    m = _as_mask(mask, vol, "volume")
    if not m.any():
        raise ValueError("mask is empty: no voxels to normalise by")
    p995 = np.percentile(vol[m], 99.5)
    if not p995 > 0:
        raise ValueError(f"99.5th percentile inside the mask is {p995}; it must be > 0 to normalise")
    return np.clip(vol / p995, 0.0, 1.0).reshape(np.shape(volume))


def _ssim_from_moments(moments: torch.Tensor) -> np.ndarray:
    """SSIM map (MONAI's formula, data range 1) from Gaussian-filtered moments of shape (5, *spatial)."""
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = moments
    sigma_x, sigma_y, sigma_xy = mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    return (luminance * (2 * sigma_xy + _C2) / (sigma_x + sigma_y + _C2)).double().numpy()


def _ssim_maps(p: np.ndarray, r: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """3D SSIM map and per-slice 2D SSIM maps of two (X, Y, Z) volumes in [0, 1], both of shape (X, Y, Z).

    The local moments are filtered with a separable Gaussian (size 11, sigma 1.5) on replicate-padded
    input: first along the two in-plane axes (giving the 2D maps), then along ``slice_axis`` (3D map).
    """
    slice_axis = normalize_axis_index(slice_axis, 3)
    pt, rt = torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(r, dtype=torch.float32)
    half = SSIM_KERNEL_SIZE // 2
    moments = F.pad(torch.stack([pt, rt, pt * pt, rt * rt, pt * rt])[None], (half,) * 6, mode="replicate")
    dist = torch.arange(SSIM_KERNEL_SIZE, dtype=torch.float32) - half
    weights = torch.exp(-0.5 * (dist / SSIM_KERNEL_SIGMA) ** 2)
    weights = weights / weights.sum()

    def smooth(x: torch.Tensor, axis: int) -> torch.Tensor:
        shape = [1, 1, 1]
        shape[axis] = SSIM_KERNEL_SIZE
        return F.conv3d(x, weights.reshape(1, 1, *shape).expand(5, 1, *shape), groups=5)

    for axis in (a for a in range(3) if a != slice_axis):
        moments = smooth(moments, axis)
    ssim_2d = _ssim_from_moments(moments[0].narrow(slice_axis + 1, half, p.shape[slice_axis]))
    return _ssim_from_moments(smooth(moments, slice_axis)[0]), ssim_2d


def _psnr(mse: float) -> float:
    """PSNR in dB for data range 1, capped at ``PSNR_CAP_DB`` (the cap is reported for identical images)."""
    return PSNR_CAP_DB if mse <= 10.0 ** (-PSNR_CAP_DB / 10.0) else float(-10.0 * np.log10(mse))


def _pearson(p: np.ndarray, r: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant."""
    pc, rc = p - p.mean(), r - r.mean()
    denom = np.sqrt(np.sum(pc * pc) * np.sum(rc * rc))
    return float(np.sum(pc * rc) / denom) if denom > 0 else float("nan")


def _region_metrics(p, r, ssim_3d, ssim_2d) -> dict:
    diff = p - r
    ref_energy = np.sum(r * r)
    return {
        "psnr": _psnr(float(np.mean(diff * diff))),
        "ssim_3d": float(np.mean(ssim_3d)),
        "ssim_2d": float(np.mean(ssim_2d)),
        "mae": float(np.mean(np.abs(diff))),
        "nmse": float(np.sum(diff * diff) / ref_energy) if ref_energy > 0 else float("nan"),
        "pearson_r": _pearson(p, r),
    }


def _scaled_pair(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, r = _as_volume(pred, "pred"), _as_volume(ref, "ref")
    _check_same_shape(p, "pred", r, "ref")
    m = _as_mask(mask, r, "ref")
    return scale_for_comparison(p, m), scale_for_comparison(r, m), m


def brasyn_ssim(pred, ref, mask) -> float:
    """3D SSIM scored the way the BraTS synthesis challenge (BraSyn) scores it: each volume clipped to its own
    0.5th-99.5th percentiles inside the brain ``mask`` and scaled to [0, 1], then the mean of the 3D SSIM map over
    the WHOLE volume (background included, which for a skull-stripped scan is mostly agreement at 0).

    Args:
        pred, ref: volumes (X, Y, Z) of one shape, any units.
        mask: the brain, same shape.

    Returns:
        The mean SSIM, a float in [-1, 1].

    Raises:
        ValueError: shapes differ, the mask is empty, or a volume is constant inside it.
    """
    p, r = _as_volume(pred, "pred"), _as_volume(ref, "ref")
    _check_same_shape(p, "pred", r, "ref")
    m = _as_mask(mask, r, "ref")
    if not m.any():
        raise ValueError("mask is empty: no percentiles to clip to")
    scaled = []
    for volume in (p, r):
        low, high = np.percentile(volume[m], (0.5, 99.5))
        if not high > low:
            raise ValueError("a volume is constant inside the mask: nothing to scale")
        scaled.append(np.clip((volume - low) / (high - low), 0.0, 1.0))
    return float(np.mean(_ssim_maps(*scaled, slice_axis=2)[0]))


def paired_metrics(pred, ref, mask, slice_axis: int = 2) -> dict:
    """Paired metrics of a prediction against its ground truth, inside the mask and over the whole image.

    Both images are first scaled with :func:`scale_for_comparison` using the same mask (data range 1).

    Args:
        pred: predicted volume (X, Y, Z) or slice (H, W), any units.
        ref: ground-truth volume of the same shape, any units.
        mask: foreground mask of the same shape (e.g. :func:`auto_mask` of ``ref``).
        slice_axis: axis of the (X, Y, Z) volume along which 2D slices are taken for ``ssim_2d``.

    Returns:
        ``{"normalisation": str, "mask": {...}, "whole": {...}, "mask_voxels": int}`` where each region holds
        plain floats: ``psnr`` (dB, data range 1, capped at 100 dB, so identical images report 100),
        ``ssim_3d`` (mean of the 3D SSIM map over the region), ``ssim_2d`` (mean over the region of the
        per-slice 2D SSIM maps, i.e. per-slice SSIM weighted by region voxels per slice), ``mae``,
        ``nmse`` (sum((p - r)^2) / sum(r^2)) and ``pearson_r`` (NaN if an image is constant there).

    Raises:
        ValueError: shapes differ, the mask is empty, or an image has a non-positive 99.5th percentile.
    """
    p, r, m = _scaled_pair(pred, ref, mask)
    ssim_3d, ssim_2d = _ssim_maps(p, r, slice_axis)
    return {
        "normalisation": NORMALISATION,
        "mask": _region_metrics(p[m], r[m], ssim_3d[m], ssim_2d[m]),
        "whole": _region_metrics(p, r, ssim_3d, ssim_2d),
        "mask_voxels": int(m.sum()),
    }


#: The brain that a region's contrast is measured against leaves out the region dilated by this many voxels.
REGION_MARGIN_VOXELS = 2


def region_contrast(volume, region, mask) -> float:
    """Contrast of a region (e.g. lesions) against the brain around it: the region's mean intensity over the median
    of the brain outside it, in the volume's own units (scale-free: any positive scaling gives the same value).

    Args:
        volume: array or tensor (X, Y, Z) or (H, W), background and tissue >= 0.
        region: boolean (or 0/1) array of the same shape.
        mask: the brain, same shape; the region dilated by :data:`REGION_MARGIN_VOXELS` (6-connected steps) is left
            out of it.

    Returns:
        The ratio (1 = as bright as the surrounding brain, > 1 brighter, < 1 darker); NaN when the median of the
        brain around the region is not positive (no contrast can be measured against it).

    Raises:
        ValueError: shapes differ, the region is empty, or no brain is left outside it.
    """
    vol = _as_volume(volume, "volume")
    inside, brain = _as_mask(region, vol, "volume"), _as_mask(mask, vol, "volume")
    outside = brain & ~ndimage.binary_dilation(inside, iterations=REGION_MARGIN_VOXELS)
    if not inside.any() or not outside.any():
        raise ValueError("the region is empty or fills the brain: no contrast to measure")
    around = np.median(vol[outside])
    return float(vol[inside].mean() / around) if around > 0 else float("nan")


def region_metrics(pred, ref, mask, region, slice_axis: int = 2) -> dict:
    """Paired metrics inside a region of the brain (e.g. a lesion mask), and how faithful its contrast is.

    PSNR, SSIM and MAE use the images scaled as in :func:`paired_metrics` (by the brain ``mask``, so the numbers
    are comparable with its ``"mask"`` ones) and are taken over the region's voxels (SSIM: the mean of the 3D SSIM
    map there); the contrasts are :func:`region_contrast` of each image, unscaled.

    Args:
        pred, ref: prediction and ground truth (X, Y, Z) or (H, W), any units (>= 0).
        mask: the brain, same shape.
        region: the region, same shape.
        slice_axis: as in :func:`paired_metrics`.

    Returns:
        ``{"psnr", "ssim_3d", "mae", "contrast", "reference_contrast", "contrast_ratio", "voxels"}``: plain
        floats (``voxels`` an int); ``contrast_ratio`` = ``contrast / reference_contrast`` (1 = faithful).

    Raises:
        ValueError: shapes differ, the brain mask or the region is empty, or no brain is left outside the region.
    """
    p, r, _ = _scaled_pair(pred, ref, mask)
    inside = _as_mask(region, r, "ref")
    contrast, reference = region_contrast(pred, inside, mask), region_contrast(ref, inside, mask)
    diff = p[inside] - r[inside]
    return {
        "psnr": _psnr(float(np.mean(diff * diff))),
        "ssim_3d": float(np.mean(_ssim_maps(p, r, slice_axis)[0][inside])),
        "mae": float(np.mean(np.abs(diff))),
        "contrast": contrast,
        "reference_contrast": reference,
        "contrast_ratio": contrast / reference if reference > 0 else float("nan"),
        "voxels": int(inside.sum()),
    }


def per_slice_metrics(pred, ref, mask, slice_axis: int = 2) -> list[dict]:
    """Per-slice PSNR (dB, capped at 100), 2D SSIM and MAE inside each slice's part of the mask.

    Images are scaled once per volume with :func:`scale_for_comparison`, as in :func:`paired_metrics`.

    Args:
        pred, ref, mask: as in :func:`paired_metrics`.
        slice_axis: axis along which slices are taken.

    Returns:
        One ``{"slice": i, "psnr": float, "ssim": float, "mae": float}`` per slice with mask voxels, in order.
    """
    p, r, m = _scaled_pair(pred, ref, mask)
    ssim = np.moveaxis(_ssim_maps(p, r, slice_axis)[1], slice_axis, 0)
    ps, rs, ms = (np.moveaxis(a, slice_axis, 0) for a in (p, r, m))
    rows = []
    for i in np.flatnonzero(ms.reshape(ms.shape[0], -1).any(axis=1)):
        diff = ps[i][ms[i]] - rs[i][ms[i]]
        rows.append({
            "slice": int(i),
            "psnr": _psnr(float(np.mean(diff * diff))),
            "ssim": float(np.mean(ssim[i][ms[i]])),
            "mae": float(np.mean(np.abs(diff))),
        })
    return rows


def cycle_error_map(x, x_cycled) -> np.ndarray:
    """Voxel-wise absolute cycle error |x - x_cycled| (same units as the inputs, same shape as ``x``)."""
    a, b = _as_volume(x, "x"), _as_volume(x_cycled, "x_cycled")
    _check_same_shape(b, "x_cycled", a, "x")
    return np.abs(a - b).reshape(np.shape(x))


def cycle_error(x, x_cycled, mask) -> float:
    """Mean absolute cycle error inside ``mask``, in the inputs' units (e.g. [-1, 1] normalised); 0 = perfect.

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    err = _as_volume(cycle_error_map(x, x_cycled), "x")
    m = _as_mask(mask, err, "x")
    if not m.any():
        raise ValueError("mask is empty: no voxels to average the cycle error over")
    return float(err[m].mean())


def _mean_slice_step(volume: np.ndarray, mask: np.ndarray, slice_axis: int) -> float:
    v, m = np.moveaxis(volume, slice_axis, 0), np.moveaxis(mask, slice_axis, 0)
    both = m[1:] & m[:-1]
    if not both.any():
        raise ValueError("no voxel is inside the mask on two adjacent slices")
    return float(np.abs(v[1:] - v[:-1])[both].mean())


def interslice_consistency(output, input, mask, slice_axis: int = 2) -> float | None:
    """Slice-to-slice flicker of a translated volume relative to its input (reference-free).

    Each volume is scaled with :func:`scale_for_comparison`; the mean absolute difference between adjacent
    slices is taken over voxels inside the mask on both slices. The result is output's / input's value:
    1.0 = as smooth across slices as the input, > 1 = the output flickers more between slices (typical of
    slice-wise 2D models), < 1 = smoother than the input.

    Args:
        output: translated volume (X, Y, Z); input: the source it was translated from; mask: foreground
            mask; all of one shape. slice_axis: axis along which slices are taken.

    Returns:
        The ratio (unitless, finite). If the input does not change from slice to slice inside the mask (e.g. a
        binary mask, or one slice repeated): 1.0 when the output does not either, else ``None`` (the ratio is
        undefined: there is no input change to compare with; the out-of-domain check leaves it unjudged).
    """
    out, inp = _as_volume(output, "output"), _as_volume(input, "input")
    _check_same_shape(out, "output", inp, "input")
    m = _as_mask(mask, inp, "input")
    num = _mean_slice_step(scale_for_comparison(out, m), m, slice_axis)
    den = _mean_slice_step(scale_for_comparison(inp, m), m, slice_axis)
    if den == 0:
        return 1.0 if num == 0 else None
    return num / den


def in_mask_histogram(volume, mask, bins: int = 64) -> np.ndarray:
    """Normalised histogram (sums to 1) of the in-mask values after :func:`scale_for_comparison`, ``bins``
    equal bins on [0, 1]."""
    vol = _as_volume(volume, "volume")
    m = _as_mask(mask, vol, "volume")
    counts = np.histogram(scale_for_comparison(vol, m)[m], bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _wasserstein(hist_a, hist_b) -> float:
    """Wasserstein distance between two histograms on the same equal bins of [0, 1]."""
    centres = (np.arange(len(hist_a)) + 0.5) / len(hist_a)
    return float(stats.wasserstein_distance(centres, centres, hist_a, hist_b))


def histogram_distance(output, target_reference, mask_out, mask_ref, bins: int = 64) -> float:
    """1-D Wasserstein distance between in-mask intensity distributions (reference-free, unpaired).

    Each image is scaled with :func:`scale_for_comparison` using its own mask, its in-mask values are
    binned into ``bins`` equal bins on [0, 1] (:func:`in_mask_histogram`), and
    ``scipy.stats.wasserstein_distance`` is taken between the two histograms. The images may have different
    shapes.

    Returns:
        Distance in units of the data range (0 = same distribution; resolution 1 / bins).
    """
    return _wasserstein(in_mask_histogram(output, mask_out, bins), in_mask_histogram(target_reference, mask_ref, bins))


def histogram_distance_to(output, mask, histogram) -> float:
    """Like :func:`histogram_distance`, against a stored :func:`in_mask_histogram` (e.g. of the target
    domain's training data)."""
    histogram = np.asarray(histogram, dtype=np.float64)
    return _wasserstein(in_mask_histogram(output, mask, len(histogram)), histogram)


def baseline_identity(source) -> np.ndarray:
    """No-learning baseline: the source image itself as float32 (same shape)."""
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    return np.array(source, dtype=np.float32)


def baseline_inverted_histogram_matched(source, source_mask, target_example, target_mask) -> np.ndarray:
    """No-learning baseline: invert the source's contrast, then match its histogram to a target example.

    Inside ``source_mask`` the source (X, Y, Z) or (H, W), e.g. T1w, is inverted (max - x); its in-mask
    values are then mapped by quantile (numpy interp of the empirical CDFs) onto the in-mask intensities
    of ``target_example`` (an image of the target contrast, any shape, e.g. an unpaired T2w volume).

    Returns:
        float32 array with the shape of ``source``, in the target example's units; 0 outside ``source_mask``.

    Raises:
        ValueError: a mask does not match its image's shape or is empty.
    """
    src, tgt = _as_volume(source, "source"), _as_volume(target_example, "target_example")
    sm, tm = _as_mask(source_mask, src, "source"), _as_mask(target_mask, tgt, "target_example")
    if not sm.any() or not tm.any():
        raise ValueError("source_mask and target_mask must each contain at least one voxel")
    inverted = src[sm].max() - src[sm]
    _, src_index, src_counts = np.unique(inverted, return_inverse=True, return_counts=True)
    tgt_values, tgt_counts = np.unique(tgt[tm], return_counts=True)
    src_quantiles = np.cumsum(src_counts) / inverted.size
    tgt_quantiles = np.cumsum(tgt_counts) / tgt_counts.sum()
    out = np.zeros_like(src)
    out[sm] = np.interp(src_quantiles, tgt_quantiles, tgt_values)[src_index]
    return out.reshape(np.shape(source)).astype(np.float32)
