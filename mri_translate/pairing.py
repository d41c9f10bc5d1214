"""Pairs of one subject's T1w and T2w: the one-grid check that paired training and validation rely on,
matching files by subject, and rigid registration that puts a pair on one grid.

Registration (:func:`register`) is rigid (6 degrees of freedom), driven by Mattes mutual information (the
contrasts differ, so intensities cannot be compared directly), multi-resolution, in SimpleITK. Scans of one
session share the scanner's coordinates, so it starts from the identity. The scan with the thicker slices is
the fixed one and the other is resampled onto its grid, so no scan is interpolated across thick slices; with
``onto="t1"`` the T2w is always resampled onto the T1w grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import NIFTI_SUFFIXES, atomic_path, json_text, load_volume, suffix

#: Contrast tokens removed from a file name to find its subject (``sub-01_T1w`` and ``sub-01_T2w`` -> ``sub-01``).
_CONTRAST = re.compile(r"(?i)(^|[_.-])(t1w?|t2w?)(?=$|[_.-])")


def same_grid(a, b) -> str | None:
    """``None`` when two loaded volumes ``(1, X, Y, Z)`` share one grid (shape, and affine within 1e-3 mm),
    else what differs, for a message."""
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(b.shape[1:])} vs {tuple(a.shape[1:])}"
    if not np.allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-3):
        return "affines differ"
    return None


def check_pair(t1, t2) -> tuple:
    """Load a T1w/T2w pair and require one grid.

    Returns:
        The two loaded volumes.

    Raises:
        InputError: unusable file, or not on one grid (names the T2w file, says what differs and what to do).
    """
    a, b = load_volume(t1), load_volume(t2)
    problem = same_grid(a, b)
    if problem:
        raise InputError(t2, f"is not on the grid of {t1} ({problem}); a pair must be co-registered: use "
                             "train --register or mri-translate pair")
    return a, b


def check_region(t1, mask):
    """Load a region mask (e.g. an expert lesion mask) and require it on the grid of its pair's T1w.

    Returns:
        The loaded mask ``(1, X, Y, Z)``.

    Raises:
        InputError: unusable file, or the mask is off the T1w's grid (names the mask, says what differs).
    """
    volume = load_volume(mask)
    differs = same_grid(load_volume(t1), volume)
    if differs is not None:
        raise InputError(mask, f"is not on the grid of {t1} ({differs}): a region mask must be drawn on its T1w")
    return volume


def match_regions(pairs, masks) -> dict[str, Path]:
    """``{t1: mask}``: each region mask file (e.g. ``sub-01_lesions.nii.gz``) given to the pair ``(t1, t2)`` whose
    subject (:func:`subject_key`, same folder) its name starts with, followed by ``_``, ``-`` or ``.`` (the longest
    such subject).

    Raises:
        InputError: a mask matches no pair, or two masks match one pair.
    """
    keys = {subject_key(t1): str(t1) for t1, _ in pairs}
    found: dict[str, Path] = {}
    for mask in map(Path, masks):
        name = str(mask.parent / _stem(mask))
        matches = [key for key in keys if name.startswith(key) and name[len(key): len(key) + 1] in ("_", "-", ".")]
        if not matches:
            raise InputError(mask, "matches no T1w/T2w pair: a region mask is named after its pair's subject "
                                   "(e.g. sub-01_lesions.nii.gz beside sub-01_T1w and sub-01_T2w)")
        t1 = keys[max(matches, key=len)]
        if t1 in found:
            raise InputError(mask, f"is a second region mask for {t1} (the first: {found[t1]})")
        found[t1] = mask
    return found


def subject_key(path) -> str:
    """A file's subject: its folder and its name without suffix and contrast token."""
    path = Path(path)
    return str(path.parent / _CONTRAST.sub("", _stem(path)).strip("_.-"))


def _stem(path: Path) -> str:
    """The file name without its suffix (:func:`~mri_translate.io.suffix`, e.g. ``.nii.gz``)."""
    return path.name[: -len(suffix(path))] if suffix(path) else path.name


def match_subjects(t1, t2) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Split two file lists into pairs of one subject (:func:`subject_key`) and the unmatched rest.

    Returns:
        ``(pairs, unmatched T1w, unmatched T2w)``.

    Raises:
        InputError: two files of one list have the same subject (the pairing would be ambiguous).
    """
    def index(paths):
        keyed = {}
        for path in map(Path, paths):
            key = subject_key(path)
            if key in keyed:
                raise InputError(path, f"has the same subject as {keyed[key]} ('{key}'); cannot tell which to pair")
            keyed[key] = path
        return keyed

    a, b = index(t1), index(t2)
    pairs = [(a[key], b[key]) for key in a if key in b]
    return pairs, [p for k, p in a.items() if k not in b], [p for k, p in b.items() if k not in a]


@dataclass
class Registration:
    """What :func:`register` did: ``t1`` and ``t2`` on one grid (one of them is the input file, the other the
    resampled one), which was ``moved``, the final and initial mutual information (more negative = better
    aligned), the rigid transform parameters (3 rotations in rad, 3 translations in mm), the pictures, and the
    T1w's region mask on the T1w's new grid (resampled with it when the T1w moved; ``None`` when none was given)."""

    t1: Path
    t2: Path
    moved: str
    metric_initial: float
    metric_final: float
    parameters: list[float]
    checkerboard: Path
    t1_region: Path | None = None

    def to_dict(self) -> dict:
        return {**self.__dict__, "t1": str(self.t1), "t2": str(self.t2), "checkerboard": str(self.checkerboard),
                "t1_region": None if self.t1_region is None else str(self.t1_region)}


def _thickness(image) -> float:
    return max(image.GetSpacing())


def register(t1, t2, out_dir, onto: str = "thicker", seed: int = 0, t1_region=None) -> Registration:
    """Rigidly align one subject's T1w and T2w (NIfTI) and resample one onto the other's grid.

    Args:
        t1, t2: NIfTI files of one subject.
        out_dir: where the resampled scan (``<name>_space-<other>.nii.gz``), a checkerboard PNG of the middle
            slice and ``<subject>_registration.json`` are written (atomically).
        onto: ``"thicker"``: the scan with the thicker slices stays fixed; ``"t1"``: the T1w stays fixed.
        seed: seed of the metric's random sampling (two runs on one scan pair still differ slightly: ITK sums
            the metric over threads; on brainix by up to 0.04 mm and 0.0005 rad).
        t1_region: a region mask on the T1w's grid (:func:`check_region`): when the T1w moves, the mask moves with
            it (same transform, linear, written as ``<name>_space-T2w.nii.gz`` in [0, 1]; threshold at 0.5).

    Raises:
        InputError: a file is not NIfTI or cannot be read.
    """
    import SimpleITK as sitk

    for path in (t1, t2):
        if suffix(Path(path)) not in NIFTI_SUFFIXES:
            raise InputError(path, "registration reads NIfTI (.nii/.nii.gz); convert DICOM first")
        load_volume(path)  # the project's validation (missing, empty, 4D ...) with its one-line errors
    images = {name: sitk.ReadImage(str(path), sitk.sitkFloat32) for name, path in (("t1", t1), ("t2", t2))}
    fixed_name = "t1" if onto == "t1" or _thickness(images["t1"]) >= _thickness(images["t2"]) else "t2"
    moving_name = "t2" if fixed_name == "t1" else "t1"
    fixed, moving = images[fixed_name], images[moving_name]

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)  # identity: one session, one scanner coordinate system
    method.SetInitialTransform(initial, inPlace=False)
    metric_initial = method.MetricEvaluate(fixed, moving)
    transform = method.Execute(fixed, moving)
    metric_final = method.GetMetricValue()
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    out_dir = Path(out_dir)
    moving_path = Path(t1 if moving_name == "t1" else t2)
    fixed_path = Path(t1 if fixed_name == "t1" else t2)
    stem = moving_path.name[: -len(suffix(moving_path))]
    output = out_dir / f"{stem}_space-{fixed_name.upper()}w.nii.gz"
    with atomic_path(output) as tmp:
        sitk.WriteImage(resampled, str(tmp))
    checkerboard = out_dir / f"{stem}_checkerboard.png"
    _write_checkerboard(fixed, resampled, checkerboard)
    region = None if t1_region is None else Path(t1_region)
    if region is not None and moving_name == "t1":
        mask = sitk.Resample(sitk.ReadImage(str(region), sitk.sitkFloat32), fixed, transform, sitk.sitkLinear, 0.0,
                             sitk.sitkFloat32)
        region = out_dir / f"{_stem(region)}_space-T2w.nii.gz"
        with atomic_path(region) as tmp:
            sitk.WriteImage(mask, str(tmp))
    result = Registration(output if moving_name == "t1" else fixed_path, output if moving_name == "t2" else fixed_path,
                          moving_name, float(metric_initial), float(metric_final),
                          [float(p) for p in transform.GetParameters()], checkerboard, region)
    key = Path(subject_key(fixed_path)).name or fixed_path.parent.name
    with atomic_path(out_dir / f"{key}_registration.json") as tmp:
        tmp.write_text(json_text(result.to_dict()))
    return result


def _write_checkerboard(fixed, moving, path: Path, tiles: int = 8) -> None:
    """The middle slice (along the thickest axis) of ``fixed`` and ``moving`` interleaved in squares, each
    windowed to its own 1-99 % range: edges that continue across squares show a good alignment."""
    import SimpleITK as sitk

    from .visualize import window, write_png

    a, b = (sitk.GetArrayFromImage(image) for image in (fixed, moving))  # (Z, Y, X)
    axis = int(np.argmax(fixed.GetSpacing()[::-1]))
    a, b = (np.take(x, x.shape[axis] // 2, axis=axis) for x in (a, b))
    a, b = window(a), window(b)
    rows, cols = np.indices(a.shape)
    squares = ((rows * tiles // a.shape[0]) + (cols * tiles // a.shape[1])) % 2 == 0
    write_png(np.where(squares, a, b)[::-1], path)
