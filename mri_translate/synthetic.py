"""Synthetic paired T1w/T2w brain volumes for the demo and the tests (works offline).

Model. The anatomy is the MNI152 2009a symmetric template shipped inside nilearn: its grey
matter (GM) and white matter (WM) probability maps, and a brain mask from its skull-stripped T1
template (threshold 0.2 of the maximum, holes filled); CSF is ``clip(mask - GM - WM, 0, 1)``.
The 1 mm maps are low-pass filtered and resampled onto an isotropic grid of the requested
resolution with the same field of view (2 mm: 99 x 117 x 95 voxels, like nilearn's 2 mm
templates). Each "subject" (one integer seed) gets:

* a smooth random deformation (low-frequency cosine basis, at most ``DEFORM_MM`` per axis),
  applied to the tissue maps once, so its T1w and T2w stay voxel-wise paired;
* tissue T1/T2/PD values jittered by a few percent (``TISSUE_JITTER``);
* the spin-echo signal ``PD * (1 - exp(-TR/T1)) * exp(-TE/T2)`` of each tissue, mixed by the
  tissue probabilities (partial volume), for the two protocols in ``SEQUENCES``;
* a smooth multiplicative bias field per contrast (``1 +- BIAS_AMPLITUDE``) and Rician noise
  with ``sigma = NOISE_FRACTION * max`` drawn independently per contrast.

Limits. No skull, scalp, fat, vessels or lesions (background is zero plus noise); three tissue
classes with one value each (no deep-grey-matter or regional variation); an ideal spin-echo
equation (no flip angle, slice profile, magnetisation transfer, motion or k-space effects);
every subject is a smooth warp of the same average brain. Intensities are in units of the
fully relaxed magnetisation of pure water (PD = 1), not scanner units.
"""

from __future__ import annotations

import functools
import importlib.util
import json

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from . import __version__
from .io import atomic_path

# Tissue (T1 ms, T2 ms, relative proton density) at 1.5 T: the BrainWeb MRI simulator's tissue
# parameters (Kwan, Evans & Pike, IEEE Trans Med Imaging 1999;18(11):1085-1097; Cocosco et al.,
# NeuroImage 1997;5:S425), chosen because they reproduce clinical spin-echo contrast with this
# simple equation; in-vivo relaxometry (e.g. Stanisz et al., MRM 2005;54:507-512) gives longer T1s
# and almost no GM/WM contrast in a plain spin-echo T1w model.
TISSUES = {"gm": (833.0, 83.0, 0.86), "wm": (500.0, 70.0, 0.77), "csf": (2569.0, 329.0, 1.00)}
T1W_TR_MS, T1W_TE_MS = 500.0, 15.0
T2W_TR_MS, T2W_TE_MS = 4000.0, 100.0
SEQUENCES = {"t1": (T1W_TR_MS, T1W_TE_MS), "t2": (T2W_TR_MS, T2W_TE_MS)}
DEFORM_MM = 3.0  # largest displacement along each axis
TISSUE_JITTER = 0.03  # standard deviation of the per-subject relative change of T1, T2, PD
BIAS_AMPLITUDE = 0.12  # bias field within 1 +- this
NOISE_FRACTION = 0.02  # Rician sigma as a fraction of the noise-free maximum
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MASK_THRESHOLD = 0.2  # fraction of the T1 template's maximum, as nilearn's brain mask


@dataclass(frozen=True)
class SyntheticPair:
    """One synthetic subject.

    Attributes:
        t1: T1-weighted volume, shape (X, Y, Z), float32, >= 0.
        t2: T2-weighted volume, same shape and voxels as ``t1``, float32, >= 0.
        mask: brain mask, shape (X, Y, Z), bool.
        affine: (4, 4) voxel-to-RAS affine in mm (MNI space; voxel size = the resolution).
    """

    t1: np.ndarray
    t2: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def _check_resolution(resolution: float) -> float:
    if not np.isfinite(resolution) or resolution < 1.0:
        raise ValueError(f"resolution must be a finite number of mm >= 1.0, got {resolution!r}")
    return float(resolution)


def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("synthetic data needs nilearn's bundled MNI152 templates: pip install nilearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=4)
def _prior(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue maps (3, X, Y, Z) float32 (GM, WM, CSF; read-only) and their affine, cached."""
    folder = _template_dir()
    try:
        imgs = [nib.load(folder / _TEMPLATE.format(name)) for name in ("gm", "wm", "t1")]
    except FileNotFoundError as exc:
        raise RuntimeError(f"nilearn's MNI152 template is missing ({exc}): pip install nilearn") from exc
    gm, wm, t1 = (np.asarray(img.dataobj, dtype=np.float32) for img in imgs)
    brain = ndi.binary_fill_holes(t1 > _MASK_THRESHOLD * t1.max()).astype(np.float32)
    gm, wm = gm / gm.max() * brain, wm / wm.max() * brain
    maps_1mm = (gm, wm, np.clip(brain - gm - wm, 0.0, 1.0))
    # Gaussian anti-aliasing with the FWHM of the new voxel, then sample voxel centres i * resolution.
    sigma = np.sqrt(max(resolution**2 - 1.0, 0.0)) / np.sqrt(8 * np.log(2))
    shape = tuple(int((n - 1) // resolution) + 1 for n in t1.shape)
    maps = np.stack(
        [
            ndi.affine_transform(ndi.gaussian_filter(m, sigma), [resolution] * 3, output_shape=shape, order=1)
            for m in maps_1mm
        ]
    )
    maps.setflags(write=False)
    affine = imgs[2].affine @ np.diag([resolution, resolution, resolution, 1.0])
    return maps, affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_basis: int) -> np.ndarray:
    """Random low-frequency field of ``shape`` (cosine basis, no constant term), max |value| = 1."""
    k = np.arange(n_basis)
    order = k[:, None, None] + k[None, :, None] + k[None, None, :]
    coef = rng.standard_normal((n_basis,) * 3) / np.maximum(order, 1)
    coef[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer(np.arange(n) + 0.5, k) / n) for n in shape]
    field = np.einsum("abc,xa,yb,zc->xyz", coef, *bases, optimize=True)
    return (field / np.abs(field).max()).astype(np.float32)


def _subject_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the anatomy and for everything else, so both depend on ``seed`` only."""
    anatomy, rest = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(anatomy), np.random.default_rng(rest)


def tissue_maps(resolution: float = 2.0, seed: int | None = None) -> dict[str, np.ndarray]:
    """Tissue probability maps and brain mask on the synthetic grid.

    Args:
        resolution: isotropic voxel size in mm, >= 1.
        seed: subject seed; ``None`` gives the undeformed template, an integer the deformed
            anatomy of ``make_pair(seed, resolution)``.

    Returns:
        ``{"gm", "wm", "csf"}``: float32 probabilities in [0, 1], shape (X, Y, Z) (read-only
        views of the cache when ``seed`` is None); ``"mask"``: bool brain mask (total tissue
        > 0.5), same shape.
    """
    maps, _ = _prior(_check_resolution(resolution))
    if seed is not None:
        rng = _subject_rngs(seed)[0]
        grid = np.indices(maps.shape[1:], dtype=np.float32)
        grid += np.stack([_smooth_field(rng, maps.shape[1:], 4) for _ in range(3)]) * (DEFORM_MM / resolution)
        maps = np.stack([ndi.map_coordinates(m, grid, output=np.float32, order=1) for m in maps])
    gm, wm, csf = maps  # linear interpolation of [0, 1] maps stays in [0, 1]
    return {"gm": gm, "wm": wm, "csf": csf, "mask": gm + wm + csf > 0.5}


def make_pair(seed: int, resolution: float = 2.0) -> SyntheticPair:
    """Simulate one subject's paired T1w and T2w volumes.

    Args:
        seed: non-negative integer; the same seed and resolution give identical volumes.
        resolution: isotropic voxel size in mm, >= 1 (2 mm: 99 x 117 x 95 voxels).

    Returns:
        The ``SyntheticPair`` (volumes in units of fully relaxed water magnetisation, plus noise).

    Raises:
        ValueError: ``resolution`` below 1 mm.
        RuntimeError: nilearn (the source of the anatomical prior) is not installed.
    """
    tissues = tissue_maps(resolution, seed)
    shape = tissues["mask"].shape
    rng = _subject_rngs(seed)[1]
    params = np.array([TISSUES[name] for name in ("gm", "wm", "csf")])
    params = params * rng.normal(1.0, TISSUE_JITTER, size=params.shape)
    t1_ms, t2_ms, pd = params.T
    volumes = {}
    for contrast, (tr, te) in SEQUENCES.items():
        signals = pd * (1.0 - np.exp(-tr / t1_ms)) * np.exp(-te / t2_ms)
        clean = sum(np.float32(s) * tissues[name] for s, name in zip(signals, ("gm", "wm", "csf")))
        clean *= 1.0 + BIAS_AMPLITUDE * _smooth_field(rng, shape, 3)
        sigma = np.float32(NOISE_FRACTION * clean.max())
        real = clean + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        volumes[contrast] = np.sqrt(real * real + imag * imag)
    return SyntheticPair(
        t1=volumes["t1"], t2=volumes["t2"], mask=tissues["mask"], affine=_prior(float(resolution))[1].copy()
    )


def write_dataset(out_dir, n_subjects: int = 4, resolution: float = 2.0, seed: int = 0) -> dict:
    """Write a BIDS-like folder of synthetic subjects.

    Subject ``i`` (0-based) uses ``make_pair(seed + i, resolution)`` and is written as
    ``out_dir/sub-XX/anat/sub-XX_{T1w,T2w,mask}.nii.gz`` (XX = i + 1 as 01, 02, ...): float32
    volumes and a uint8 mask with the pair's affine; ``out_dir/dataset_description.json``
    describes the generator. Every file is written atomically.

    Args:
        out_dir: output folder (created if needed; existing files are replaced).
        n_subjects: number of subjects, >= 1.
        resolution: isotropic voxel size in mm, >= 1.
        seed: seed of the first subject.

    Returns:
        ``{"t1": [Path], "t2": [Path], "mask": [Path], "root": Path}``, lists in subject order.

    Raises:
        ValueError: ``n_subjects`` < 1 or ``resolution`` < 1 mm.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects!r}")
    _check_resolution(resolution)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"t1": [], "t2": [], "mask": [], "root": root}
    for i in range(n_subjects):
        pair = make_pair(seed + i, resolution)
        sub = f"sub-{i + 1:02d}"
        anat = root / sub / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for key, suffix, data in (("t1", "T1w", pair.t1), ("t2", "T2w", pair.t2), ("mask", "mask", pair.mask)):
            img = nib.Nifti1Image(data.astype(np.uint8 if key == "mask" else np.float32), pair.affine)
            img.header.set_xyzt_units("mm")
            path = anat / f"{sub}_{suffix}.nii.gz"
            with atomic_path(path) as tmp:
                nib.save(img, tmp)
            paths[key].append(path)
    description = {
        "Name": "mri-translate synthetic paired T1w/T2w brains",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [
            {
                "Name": "mri-translate",
                "Version": __version__,
                "Description": (
                    f"mri_translate.synthetic: MNI152 2009a tissue maps (nilearn) warped per subject, "
                    f"spin-echo signal with BrainWeb 1.5 T tissue values, T1w TR={T1W_TR_MS:g} ms "
                    f"TE={T1W_TE_MS:g} ms, T2w TR={T2W_TR_MS:g} ms TE={T2W_TE_MS:g} ms, bias field, "
                    f"Rician noise; {resolution:g} mm isotropic, seeds {seed}..{seed + n_subjects - 1}"
                ),
            }
        ],
    }
    text = json.dumps(description, indent=2) + "\n"
    with atomic_path(root / "dataset_description.json") as tmp:
        tmp.write_text(text)
    return paths
