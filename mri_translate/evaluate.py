"""The ``evaluate`` verb: compare a translated volume with a real one, inside the brain mask and over the
whole image, beside no-learning baselines; write a JSON summary, a per-slice CSV and a per-slice plot."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np

from . import metrics
from .errors import InputError
from .io import atomic_path, json_text, list_images_2d, load_volume
from .transforms import to_canonical


def load_array(path) -> np.ndarray:
    """A scan as a RAS ``(X, Y, Z)`` float array; a folder of 2D images as a stack ``(X, Y, N)`` (by name)."""
    path = Path(path)
    if path.is_dir() and list_images_2d(path):
        slices = [load_array(p) for p in list_images_2d(path)]
        shapes = {s.shape for s in slices}
        if len(shapes) > 1:
            raise InputError(path, f"2D images of different sizes {sorted(shapes)} cannot be stacked")
        return np.concatenate(slices, axis=2)
    return to_canonical(load_volume(path))[0].numpy().astype(np.float64)


def _matching_names(pred: Path, ref: Path) -> None:
    if pred.is_dir() and ref.is_dir():
        a, b = [p.name for p in list_images_2d(pred)], [p.name for p in list_images_2d(ref)]
        if a != b:
            missing = sorted(set(a) ^ set(b))[:3]
            raise InputError(pred, f"2D images do not match {ref} by name (e.g. {', '.join(missing)})")


def evaluate(pred, ref, mask="auto", source=None, baselines: bool = False, target_example=None,
             slice_axis: int = 2, region=None) -> dict:
    """Paired metrics of ``pred`` against ``ref`` (same grid), in the mask and over the whole image.

    Args:
        pred: translated volume (or folder of 2D slices).
        ref: real target-contrast volume on the same grid (or folder, matched by file name).
        mask: ``"auto"`` (foreground of ``ref``), a mask file (> 0 is inside), or ``None`` (everything).
        source: the input that was translated: adds inter-slice consistency and allows ``baselines``.
        baselines: also score identity (the source itself) and the inverted, histogram-matched source.
        target_example: a target-contrast volume whose histogram the baseline matches; default ``ref``
            itself (optimistic: it borrows the true answer's intensity distribution).
        slice_axis: RAS axis of the per-slice numbers (2 = axial).
        region: a mask file of a region inside the brain (> 0 is inside, e.g. lesions): adds
            :func:`~mri_translate.metrics.region_metrics` there (PSNR, SSIM, MAE and the region's contrast
            against the brain around it in the prediction and the reference, and their ratio).

    Returns:
        ``{"pred", "ref", "normalisation", "model": {"mask": {...}, "whole": {...}}, "per_slice": [...],
        "interslice_consistency"?, "reference_interslice_consistency"? (the same for the real target: what a
        perfect translation scores), "baselines"?, "region"?: {"path", "model": {...}, "baselines"?: {...}}}``.
    """
    pred_path, ref_path = Path(pred), Path(ref)
    _matching_names(pred_path, ref_path)
    p, r = load_array(pred_path), load_array(ref_path)
    if p.shape != r.shape:
        raise InputError(pred_path, f"shape {p.shape} does not match the reference's {r.shape} (after RAS "
                                    "reorientation); evaluate needs both on one grid")
    if isinstance(mask, str) and mask == "auto":
        brain = metrics.auto_mask(r)
    elif mask is None:
        brain = np.ones(r.shape, bool)
    else:
        brain = load_array(mask) > 0
        if brain.shape != r.shape:
            raise InputError(mask, f"mask shape {brain.shape} does not match the reference's {r.shape}")
    if not brain.any():
        raise InputError(mask if mask not in ("auto", None) else ref_path, "the brain/foreground mask is empty")
    for path, image in ((pred_path, p), (ref_path, r)):
        inside = image[brain]
        if np.ptp(inside) == 0:
            raise InputError(path, f"is constant inside the mask (every voxel is {inside[0]:g}); nothing to compare")
        if np.percentile(inside, 99.5) <= 0:
            raise InputError(path, "is blank (99.5th percentile <= 0) inside the mask; nothing to compare")
    model = _paired_scores(p, r, brain, slice_axis)
    report = {"pred": str(pred_path), "ref": str(ref_path), "normalisation": model.pop("normalisation"),
              "mask": "auto (foreground of the reference)" if mask == "auto" else str(mask), "model": model,
              "per_slice": metrics.per_slice_metrics(p, r, brain, slice_axis)}
    inside = None if region is None else _region(region, r.shape)
    if inside is not None:
        report["region"] = {"path": str(region), "model": _region_metrics(p, r, brain, inside, slice_axis, region)}
    if source is not None:
        s = load_array(source)
        if s.shape != r.shape:
            raise InputError(source, f"shape {s.shape} does not match the reference's {r.shape}")
        report["interslice_consistency"] = metrics.interslice_consistency(p, s, brain, slice_axis)
        report["reference_interslice_consistency"] = metrics.interslice_consistency(r, s, brain, slice_axis)
        if baselines:
            example = r if target_example is None else load_array(target_example)
            matched = metrics.baseline_inverted_histogram_matched(s, metrics.auto_mask(s), example,
                                                                  metrics.auto_mask(example))
            images = {"identity": metrics.baseline_identity(s), "inverted_histogram_matched": matched}
            report["baselines"] = {
                "histogram_target": "the reference itself (optimistic)" if target_example is None
                else str(target_example),
                **{name: _without_normalisation(_paired_scores(image, r, brain, slice_axis))
                   for name, image in images.items()},
            }
            if inside is not None:
                report["region"]["baselines"] = {name: _region_metrics(image, r, brain, inside, slice_axis, region)
                                                 for name, image in images.items()}
    elif baselines:
        raise InputError(pred_path, "--baselines needs --input (the volume that was translated)")
    return report


def _paired_scores(image, r, brain, slice_axis) -> dict:
    """:func:`~mri_translate.metrics.paired_metrics` of ``image`` against the reference ``r`` and, beside it,
    ``ssim_brasyn``: the 3D SSIM the BraSyn way (:func:`~mri_translate.metrics.brasyn_ssim`, its own scaling)."""
    return {**metrics.paired_metrics(image, r, brain, slice_axis), "ssim_brasyn": metrics.brasyn_ssim(image, r, brain)}


def _region(path, shape) -> np.ndarray:
    """The ``--region`` mask file as a boolean array of the reference's ``shape``."""
    inside = load_array(path) > 0
    if inside.shape != shape:
        raise InputError(path, f"region shape {inside.shape} does not match the reference's {shape}")
    if not inside.any():
        raise InputError(path, "the region is empty")
    return inside


def _region_metrics(image, r, brain, inside, slice_axis, path) -> dict:
    try:
        return metrics.region_metrics(image, r, brain, inside, slice_axis)
    except ValueError as err:
        raise InputError(path, str(err)) from err


def _without_normalisation(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "normalisation"}


def write_reports(report: dict, json_path=None, csv_path=None, plot_path=None) -> None:
    """Write the JSON summary, the per-slice CSV and a PNG of per-slice SSIM/PSNR (each atomically)."""
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json_text(report))
    if csv_path:
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["slice", "psnr", "ssim", "mae"])
        writer.writeheader()
        writer.writerows(report["per_slice"])
        with atomic_path(csv_path) as tmp:
            tmp.write_text(buffer.getvalue())
    if plot_path:
        _plot_per_slice(report["per_slice"], plot_path)


def _plot_per_slice(rows: list[dict], path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    ssim_axes = figure.add_subplot(111)
    index = [row["slice"] for row in rows]
    ssim_axes.plot(index, [row["ssim"] for row in rows], color="tab:blue", label="SSIM (in mask)")
    ssim_axes.set_xlabel("slice")
    ssim_axes.set_ylabel("SSIM", color="tab:blue")
    psnr_axes = ssim_axes.twinx()
    psnr_axes.plot(index, [row["psnr"] for row in rows], color="tab:red", label="PSNR (in mask)")
    psnr_axes.set_ylabel("PSNR (dB)", color="tab:red")
    ssim_axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, format="png")


def format_summary(report: dict) -> str:
    """A short table of the headline numbers for the console."""
    lines = [f"{'':<28}{'PSNR dB':>9}{'SSIM':>8}{'MAE':>8}   region", "-" * 64]
    rows = [("model", report["model"])] + [
        (name, values) for name, values in report.get("baselines", {}).items() if isinstance(values, dict)]
    for name, values in rows:
        for region in ("mask", "whole"):
            v = values[region]
            lines.append(f"{name:<28}{v['psnr']:>9.2f}{v['ssim_3d']:>8.3f}{v['mae']:>8.4f}   {region}")
    lines.append("3D SSIM the BraSyn way (each volume clipped to its 0.5-99.5th percentiles in the mask, whole "
                 "volume): " + ", ".join(f"{name} {values['ssim_brasyn']:.3f}" for name, values in rows))
    if "interslice_consistency" in report:
        shown = ["undefined" if value is None else f"{value:.3f}"  # None: the input has no slice-to-slice change
                 for value in (report["interslice_consistency"], report["reference_interslice_consistency"])]
        lines.append(f"inter-slice consistency (output/input change, 1 = as smooth as the input): "
                     f"{shown[0]} (the reference itself: {shown[1]})")
    if "region" in report:
        region = report["region"]
        lines.append(f"in the region {region['path']} ({region['model']['voxels']} voxels; contrast = its mean over "
                     "the median of the brain around it):")
        lines.append(f"{'':<28}{'PSNR dB':>9}{'SSIM':>8}{'MAE':>8}{'contrast':>10}{'truth':>8}{'ratio':>8}")
        for name, v in [("model", region["model"]), *region.get("baselines", {}).items()]:
            lines.append(f"{name:<28}{v['psnr']:>9.2f}{v['ssim_3d']:>8.3f}{v['mae']:>8.4f}{v['contrast']:>10.3f}"
                         f"{v['reference_contrast']:>8.3f}{v['contrast_ratio']:>8.3f}")
    lines.append(f"normalisation: {report['normalisation']}")
    return "\n".join(lines)

