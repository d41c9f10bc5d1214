"""Know when not to trust a translation: is the input the contrast the direction expects, and does the
translation look like the model's training domain?

Contrast check (cheap, before translating). Inside the brain, T1w and T2w order the tissues the opposite way:
T1w CSF < GM < WM, T2w WM < GM < CSF. Seen as an intensity histogram of a central brain region (white matter is
the largest class, CSF a small one), a T1w has a long *dark* tail (CSF) below a bulk of bright white matter and
a T2w a long *bright* tail (CSF) above a bulk of dark white matter. FLAIR has the dark tail of a T1w but its
grey matter is brighter than its white matter; PD has little contrast at all. The features
(:func:`contrast_features`) measure exactly that on the volume subsampled to about 2 mm:

- ``tail``: ``log((q95 - q50) / (q50 - q5))`` of the region's intensities: < 0 T1w-like, > 0 T2w-like;
- ``contrast``: ``(q95 - q5) / q50``: the spread of tissue intensities (PD, CT, flat images: low);
- ``rim``: the tissue two voxels from the darkest tenth (what borders CSF: cortex) against the median tissue,
  over ``q95 - q5``: < 0 in T1w (grey darker than white), > 0 in FLAIR (grey brighter than white).

The region (:func:`brain_region`) is the centre of each axial slice (an ellipse at 60 % of the head's extent
in that slice) from 20 to 80 mm below the top of the head, so skull, scalp, neck and face stay out of it in
whole-head scans; skull-stripped scans, slabs and single 2D slices use the same rule on what they contain.

Out-of-domain flag (after translating, needs the cycle pass of ``convert --qc``): the reference-free checks of
:func:`~mri_translate.convert.quality_checks` against per-direction upper limits stored in ``model.pt`` under
:data:`CHECKS_KEY` by ``scripts/calibrate_checks.py`` (:data:`DEFAULT_CHECKS` otherwise).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import InputError

#: Target sampling (mm) of the features; finer volumes are subsampled by an integer stride.
FEATURE_SPACING_MM = 2.0
#: Decision thresholds of :func:`classify_contrast` (measured margins: docs/benchmarks.md, bench_checks).
MIN_VOXELS = 200
MIN_CONTRAST = 0.3
T1W_MAX_TAIL = 0.0
T1W_MAX_RIM = 0.0
T2W_MIN_TAIL = 0.6
T2W_MIN_CONTRAST = 0.6


@dataclass(frozen=True)
class ContrastVerdict:
    """What an input looks like.

    Attributes:
        label: ``"T1w"``, ``"T2w"``, ``"other"`` (neither: FLAIR, PD, CT, a mask, not a head) or ``"unknown"``
            (too little tissue to tell; the check abstains).
        scores: the features of :func:`contrast_features` (plain floats).
        reason: one short phrase for messages.
    """

    label: str
    scores: dict = field(default_factory=dict)
    reason: str = ""


def _subsample(x: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Every n-th voxel per axis so the spacing becomes about :data:`FEATURE_SPACING_MM`; returns the new spacing."""
    step = np.maximum(1, np.round(FEATURE_SPACING_MM / np.asarray(spacing, dtype=np.float64))).astype(int)
    return x[:: step[0], :: step[1], :: step[2]], np.asarray(spacing, dtype=np.float64) * step


def brain_region(x: np.ndarray, spacing) -> np.ndarray:
    """Central brain region of a RAS volume in [0, 1].

    Args:
        x: ``(X, Y, Z)`` RAS (Z = superior), background near 0.
        spacing: voxel size (mm) along X, Y, Z.

    Returns:
        Boolean ``(X, Y, Z)``: per axial slice, the ellipse at 60 % of the head's extent in that slice, in the
        slices 20-80 mm below the top of the head (the middle half of the slices when the volume is thinner).
    """
    from .transforms import largest_pieces

    head = largest_pieces(x > 0.1)
    region = np.zeros_like(head)
    area = head.sum(axis=(0, 1))
    filled = np.flatnonzero(area > 0.05 * area.max()) if area.max() else np.array([], dtype=int)
    if not len(filled):
        return region
    top, bottom = filled[-1], filled[0]
    extent_mm = (top - bottom + 1) * spacing[2]
    if extent_mm > 100:
        slices = range(max(bottom, top - int(80 / spacing[2])), top - int(20 / spacing[2]) + 1)
    else:
        quarter = (top - bottom + 1) // 4
        slices = range(bottom + quarter, top - quarter + 1)
    gx, gy = np.indices(head.shape[:2], dtype=np.float64)
    for z in slices:
        idx = np.argwhere(head[:, :, z])
        if len(idx) < 4:
            continue
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        centre, radius = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1) * 0.6
        ellipse = ((gx - centre[0]) / radius[0]) ** 2 + ((gy - centre[1]) / radius[1]) ** 2 <= 1
        region[:, :, z] = ellipse & head[:, :, z]
    return region


def contrast_features(x: np.ndarray, spacing) -> dict:
    """The features of the contrast check (see the module docstring).

    Args:
        x: ``(X, Y, Z)`` RAS volume scaled to [0, 1] (``(RobustNormalize + 1) / 2``).
        spacing: voxel size (mm) along X, Y, Z.

    Returns:
        ``{"tail", "contrast", "rim", "voxels"}`` as plain floats (``voxels``: size of the region at ~2 mm;
        the others are NaN when it holds fewer than :data:`MIN_VOXELS`).
    """
    x, spacing = _subsample(np.asarray(x, dtype=np.float32), spacing)
    region = brain_region(x, spacing)
    values = x[region]
    features = {"tail": float("nan"), "contrast": float("nan"), "rim": float("nan"), "voxels": float(values.size)}
    if values.size < MIN_VOXELS:
        return features
    q5, q10, q50, q95 = np.percentile(values, [5, 10, 50, 95])
    spread = max(q95 - q5, 1e-6)
    # Rim: tissue two voxels (in-plane) away from the darkest tenth, i.e. what borders dark CSF.
    cross = ndimage.generate_binary_structure(2, 1)[..., None]
    dark = region & (x < q10)
    near = ndimage.binary_dilation(dark, cross)
    rim = ndimage.binary_dilation(near, cross) & region & ~near
    tissue = x[region & ~dark]
    features.update(
        tail=float(np.log(max(q95 - q50, 1e-6) / max(q50 - q5, 1e-6))),
        contrast=float(spread / max(q50, 1e-6)),
        rim=float((np.median(x[rim]) - np.median(tissue)) / spread) if rim.any() and tissue.size else 0.0)
    return features


def classify_contrast(volume) -> ContrastVerdict:
    """Does a scan look like T1w, T2w or neither?

    Args:
        volume: a ``MetaTensor`` ``(1, X, Y, Z)`` from :func:`~mri_translate.io.load_volume` (any orientation;
            2D images are ``(1, H, W, 1)``).

    Returns:
        The :class:`ContrastVerdict`; its rules, in order: fewer than :data:`MIN_VOXELS` region voxels ->
        ``unknown``; ``contrast`` < :data:`MIN_CONTRAST` -> ``other``; ``tail`` < :data:`T1W_MAX_TAIL` ->
        ``T1w``, unless ``rim`` > :data:`T1W_MAX_RIM` (FLAIR-like) -> ``other``; ``tail`` >
        :data:`T2W_MIN_TAIL` -> ``T2w``, unless ``contrast`` < :data:`T2W_MIN_CONTRAST` (PD-like) -> ``other``;
        else ``other``.
    """
    import torch
    from monai.data import MetaTensor

    from .io import voxel_spacing
    from .transforms import RobustNormalize, to_canonical

    canonical = to_canonical(volume)
    x, spacing = _subsample(canonical[0].numpy(), voxel_spacing(canonical.affine))
    normalized = RobustNormalize()(MetaTensor(torch.from_numpy(np.ascontiguousarray(x))[None], meta=canonical.meta))
    scores = contrast_features((normalized[0].numpy() + 1) / 2, spacing)
    if scores["voxels"] < MIN_VOXELS:
        return ContrastVerdict("unknown", scores, f"too little tissue to tell ({scores['voxels']:.0f} voxels)")
    if scores["contrast"] < MIN_CONTRAST:
        return ContrastVerdict("other", scores, "almost no tissue contrast, like PD, CT, a mask or no head")
    if scores["tail"] < T1W_MAX_TAIL:
        if scores["rim"] > T1W_MAX_RIM:
            return ContrastVerdict("other", scores, "dark CSF but grey brighter than white matter, like FLAIR")
        return ContrastVerdict("T1w", scores, "dark CSF, bright white matter")
    if scores["tail"] > T2W_MIN_TAIL:
        if scores["contrast"] < T2W_MIN_CONTRAST:
            return ContrastVerdict("other", scores, "bright CSF but too little contrast for a T2w, like PD")
        return ContrastVerdict("T2w", scores, "bright CSF, dark white matter")
    return ContrastVerdict("other", scores, "no clear T1w or T2w tissue order")


class ContrastMismatchError(InputError):
    """The input does not look like the contrast ``--direction`` translates from (exit status 2)."""


def check_direction(volume, direction: str, source) -> ContrastVerdict:
    """Refuse a scan whose contrast contradicts ``direction``.

    Args:
        volume: the loaded scan, ``(1, X, Y, Z)``.
        direction: ``t1-to-t2`` or ``t2-to-t1``.
        source: the input's path, named in the message.

    Returns:
        The verdict (``T1w``/``T2w`` matching the direction, or ``unknown``: the check abstains).

    Raises:
        ContrastMismatchError: the scan looks like the other contrast or like neither.
    """
    verdict = classify_contrast(volume)
    shown = ", ".join(f"{key} {value:.2f}" for key, value in verdict.scores.items() if key != "voxels")
    expected = "T1w" if direction == "t1-to-t2" else "T2w"
    if verdict.label in (expected, "unknown"):
        return verdict
    if verdict.label == "other":
        raise ContrastMismatchError(source, f"does not look like a {expected}: {verdict.reason} ({shown}); "
                                            "translate it anyway with --force")
    other = "t2-to-t1" if direction == "t1-to-t2" else "t1-to-t2"
    raise ContrastMismatchError(source, f"looks like a {verdict.label}, not a {expected}: {verdict.reason} "
                                        f"({shown}); use --direction {other}, or --force to translate it anyway")


# ---------------------------------------------------------------------------------------------------------
# Out-of-domain flag: the reference-free checks of convert --qc against thresholds stored in the model.

#: Key of the thresholds in ``model.pt``: ``{"t1-to-t2": {check: limit}, "t2-to-t1": {...}, "Calibration": note}``.
CHECKS_KEY = "checks"
#: Upper limits used when a model file has no :data:`CHECKS_KEY` (e.g. a run you trained: calibrate it with
#: scripts/calibrate_checks.py): the shipped model's calibration (1.25 x the largest value on 35 held-out
#: right-contrast volumes), the larger of its two directions, rounded up.
DEFAULT_CHECKS = {"CycleErrorMAE": 0.55, "HistogramDistance": 0.17, "InterSliceConsistency": 2.4}


#: Largest axial cross-section (cm^2) of a skull-stripped brain; whole heads measured 236-298, brains 157-202.
SKULL_STRIPPED_AREA_CM2 = 220.0
#: A head voxel is at least this many standard deviations of the background noise above the background's median
#: (a Rayleigh background exceeds its median + 6 of its robust standard deviations about once in 10^5 voxels).
NOISE_SIGMAS = 6.0


def head_mask(image):
    """The head (or brain) of a volume with a clean or a noisy background.

    :func:`~mri_translate.transforms.foreground_mask` alone counts the brighter background voxels of a noisy scan
    (Rician noise: the magnitude of complex Gaussian noise) as head, and the area of
    :func:`head_area_cm2` spans a slice's rows from their first to their last foreground voxel, so a few of them
    make a brain look like a whole head. Here a voxel must also stand ``NOISE_SIGMAS`` robust standard deviations
    (1.4826 x the median absolute deviation) above the median of what ``foreground_mask`` calls background
    (exact zeros: no change), and only the largest connected component (6-connected, 3D) is kept.

    Args:
        image: ``(X, Y, Z)`` torch tensor, background darkest (e.g. normalised + 1).

    Returns:
        Boolean ``(X, Y, Z)`` torch tensor (all False when nothing is above the thresholds).
    """
    import torch

    from .transforms import foreground_mask, largest_pieces, strided_sample

    image = image.detach().float()
    mask = foreground_mask(image)
    background = strided_sample(image[~mask])
    if background.numel():
        centre = background.median()
        mask &= image > centre + NOISE_SIGMAS * 1.4826 * (background - centre).abs().median()
    return torch.from_numpy(largest_pieces(mask.numpy()))


def head_area_cm2(mask, spacing) -> float:
    """Largest axial cross-section of a RAS foreground ``mask`` ``(X, Y, Z)`` (torch bool) with voxel ``spacing``
    (mm), in cm^2: the 98th percentile over axial slices of the area spanned row by row (holes and sulci filled)."""
    import torch

    from .transforms import sample_quantiles

    index = torch.arange(mask.shape[1])[None, :, None]
    first = torch.where(mask, index, mask.shape[1]).amin(1)
    last = torch.where(mask, index, -1).amax(1)
    area = (last - first + 1).clamp_min(0).sum(0).float() * float(spacing[0] * spacing[1]) / 100
    return float(sample_quantiles(area, 0.98))


def check_skull_stripping(canonical, trained_on_brains: bool | None, source, strict: bool = False) -> dict | None:
    """Compare a scan with what the model's source domain was trained on: a whole-head scan given to a model that
    only ever saw skull-stripped brains gets a warning line on stderr (or, with ``strict``, is refused), since
    the model has never learned what to make of skull and scalp.

    Args:
        canonical: the normalised RAS input ``(1, X, Y, Z)`` in [-1, 1] (background at -1), with its affine.
        trained_on_brains: the model's record (``model.pt["skull_stripped"]`` of the source domain); ``None``:
            not recorded (older models), nothing is checked.
        source: the input's path, named in the message.

    Returns:
        The sidecar's ``SkullStripping`` entry, or ``None`` when the model records nothing.

    Raises:
        InputError: ``strict`` and a whole-head scan for a brain-only model.
    """
    if trained_on_brains is None:
        return None
    from .io import voxel_spacing

    area = head_area_cm2(head_mask(canonical[0].as_tensor() + 1), voxel_spacing(canonical.affine))
    record = {"InputLooksSkullStripped": area < SKULL_STRIPPED_AREA_CM2, "HeadAreaCm2": round(area, 1),
              "ModelTrainedOnSkullStripped": bool(trained_on_brains)}
    if trained_on_brains and not record["InputLooksSkullStripped"]:
        message = (f"looks like a whole head (largest axial head area {area:.0f} cm^2 >= {SKULL_STRIPPED_AREA_CM2:g}) "
                   "but the model was trained on skull-stripped brains only: skull-strip it first (e.g. SynthStrip, "
                   "HD-BET; or give convert its brain mask with --mask) or use a model trained on whole-head scans")
        if strict:
            raise InputError(source, message + "; refused by --strict")
        from tqdm import tqdm

        tqdm.write(f"warning: {source}: {message}", file=sys.stderr)
    return record


class OutOfDomainError(InputError):
    """``--strict``: the translation's reference-free checks exceed the model's thresholds (exit status 2)."""


def model_checks(model_path, direction: str) -> tuple[dict, str]:
    """Thresholds of ``direction`` stored in a model file, or :data:`DEFAULT_CHECKS`.

    Returns:
        ``({check: upper limit}, source)`` with ``source`` the calibration note or ``"defaults"``.
    """
    from .runtime import read_checkpoint

    stored = read_checkpoint(model_path).get(CHECKS_KEY) if model_path is not None else None
    if not stored or direction not in stored:
        return dict(DEFAULT_CHECKS), "defaults"
    return {**DEFAULT_CHECKS, **stored[direction]}, str(stored.get("Calibration", "model"))


def domain_verdict(qc: dict, thresholds: dict, source: str = "defaults") -> dict:
    """Compare the checks of :func:`~mri_translate.convert.quality_checks` with their upper limits.

    Returns:
        ``{"InDomain": bool, "Exceeded": [names], "Values": {...}, "Thresholds": {...}, "ThresholdSource": str}``
        (a check whose value is ``None`` is not judged).
    """
    values = {name: qc.get(name) for name in thresholds}
    exceeded = [name for name, limit in thresholds.items() if values[name] is not None and values[name] > limit]
    return {"InDomain": not exceeded, "Exceeded": exceeded, "Values": values, "Thresholds": dict(thresholds),
            "ThresholdSource": source}


def out_of_domain_message(verdict: dict) -> str:
    """One phrase naming each exceeded check with its value and limit."""
    values, limits = verdict["Values"], verdict["Thresholds"]
    parts = [f"{name} {values[name]:.3f} > {limits[name]:.3f}" for name in verdict["Exceeded"]]
    return f"looks outside the model's training domain ({', '.join(parts)}); the translation may not be trustworthy"


def judge_domain(qc: dict, checks: tuple[dict, str], source, strict: bool = False) -> dict:
    """:func:`domain_verdict` of one translation; out of domain prints a warning line on stderr, or raises.

    Args:
        qc: the reference-free checks.
        checks: ``(thresholds, source)`` from :func:`model_checks`.
        source: the input's path, named in the warning or error.
        strict: raise instead of warning.

    Raises:
        OutOfDomainError: out of domain and ``strict``.
    """
    verdict = domain_verdict(qc, *checks)
    if not verdict["InDomain"]:
        if strict:
            raise OutOfDomainError(source, out_of_domain_message(verdict) + "; refused by --strict")
        from tqdm import tqdm

        tqdm.write(f"warning: {source}: {out_of_domain_message(verdict)}", file=sys.stderr)
    return verdict


def contrast_record(verdict: ContrastVerdict | None) -> dict:
    """The sidecar's ``ContrastCheck`` entry (``verdict`` None: skipped by ``--force``)."""
    if verdict is None:
        return {"Label": None, "Skipped": "--force"}
    return {"Label": verdict.label, "Scores": {key: round(value, 4) for key, value in verdict.scores.items()},
            "Reason": verdict.reason}
