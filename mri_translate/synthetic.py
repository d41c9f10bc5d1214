"""Synthetic paired T1w/T2w brain (or head) volumes for the demo and the tests (works offline).

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

Three classes with one value each make the T2w an almost exact monotone inversion of the T1w,
which a histogram trick reproduces. Three options add what breaks that mirror in real heads,
each a tissue of :data:`TISSUES` through the same equation:

* ``deep_grey``: the thalamus, caudate, putamen and pallidum (:data:`DEEP_GREY_NUCLEI`) are
  ``deep_gm``: as dark as cortex on the T1w but darker than white matter on the T2w;
* ``lesions``: a random number (``LESION_COUNT``) of ovoid white-matter lesions of random size
  (``LESION_RADIUS_MM``) per subject, darker than white matter on the T1w and brighter than
  grey matter on the T2w; :attr:`SyntheticPair.lesions` is their mask;
* ``head``: a whole head: the skull's two tables (cortical bone: no signal), the fatty marrow
  between them and the scalp's fat (bright in both contrasts) under a layer of skin and muscle
  (``HEAD_LAYERS_MM``). The brain mask stays the brain's.

Limits. No vessels, face, neck or air sinuses; one value per tissue class (no regional
variation beyond the deep grey nuclei); an ideal spin-echo equation (no flip angle, slice
profile, magnetisation transfer, motion or k-space effects; fat's fast-spin-echo brightness
is put in its T2, see :data:`TISSUES`); every subject is a smooth warp of the same average
brain. Intensities are in units of the fully relaxed magnetisation of pure water (PD = 1),
not scanner units.
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

# Tissue (T1 ms, T2 ms, relative proton density) at 1.5 T. gm, wm, csf, lesion (BrainWeb's "MS
# lesion"), fat (T1 and PD) and skin (BrainWeb's "muscle/skin") are the BrainWeb MRI simulator's
# tissue parameters (Kwan, Evans & Pike, IEEE Trans Med Imaging 1999;18(11):1085-1097; Cocosco et
# al., NeuroImage 1997;5:S425), chosen because they reproduce clinical spin-echo contrast with this
# simple equation; in-vivo relaxometry (e.g. Stanisz et al., MRM 2005;54:507-512) gives longer T1s
# and almost no GM/WM contrast in a plain spin-echo T1w model.
# - fat: BrainWeb's T2 of 70 ms is fat's single spin-echo T2 and would make fat mid-grey on the
#   T2w; clinical T2w are fast (turbo) spin echo, whose train of refocusing pulses suppresses the
#   J-coupling modulation and diffusion dephasing of fat so that it stays bright (Henkelman et al.,
#   J Magn Reson Imaging 1992;2(5):533-540). Its apparent T2 here, 150 ms, is our choice (not a
#   measurement) that puts fat just below CSF on the T2w, as on clinical TSE images; it is used in
#   both protocols (on the T1w, TE = 15 ms, it changes fat's signal by 12 %). Skull marrow (the
#   adult diploe is fatty marrow) uses the same values.
# - deep_gm (basal ganglia and thalamus): BrainWeb has no such class. T1 and PD between its GM and
#   WM, and a T2 shorter than WM's, as the iron of the pallidum and putamen shortens T2 at 1.5 T
#   (Gelman et al., Radiology 1999;210(3):759-767): illustrative values in those ranges, not a
#   measured set.
# - cortical bone gives no signal (BrainWeb's skull: PD 0), so it is no tissue here: empty space.
TISSUES = {
    "gm": (833.0, 83.0, 0.86), "wm": (500.0, 70.0, 0.77), "csf": (2569.0, 329.0, 1.00),
    "deep_gm": (700.0, 60.0, 0.82), "lesion": (752.0, 237.0, 0.76),
    "fat": (350.0, 150.0, 1.00), "skin": (900.0, 47.0, 1.00),
}
T1W_TR_MS, T1W_TE_MS = 500.0, 15.0
T2W_TR_MS, T2W_TE_MS = 4000.0, 100.0
SEQUENCES = {"t1": (T1W_TR_MS, T1W_TE_MS), "t2": (T2W_TR_MS, T2W_TE_MS)}
DEFORM_MM = 3.0  # largest displacement along each axis
TISSUE_JITTER = 0.03  # standard deviation of the per-subject relative change of T1, T2, PD
BIAS_AMPLITUDE = 0.12  # bias field within 1 +- this
NOISE_FRACTION = 0.02  # Rician sigma as a fraction of the noise-free maximum
#: Deep grey nuclei as ellipsoids (centre, semi-axes; MNI mm, both hemispheres) around the approximate
#: centroids of the Harvard-Oxford subcortical atlas: a coarse stand-in for an atlas, intersected with
#: the template's GM map.
DEEP_GREY_NUCLEI = {
    "thalamus": ((11.0, -18.0, 7.0), (7.0, 13.0, 8.0)),
    "caudate": ((13.0, 11.0, 10.0), (5.0, 10.0, 8.0)),
    "putamen": ((25.0, 1.0, 0.0), (6.0, 14.0, 10.0)),
    "pallidum": ((19.0, -4.0, -1.0), (4.0, 8.0, 6.0)),
}
LESION_COUNT = (3, 10)  # fewest and most lesions per subject (uniform)
LESION_RADIUS_MM = (2.0, 6.0)  # range of a lesion's mean radius (uniform); each axis x 0.6-1.4
#: Whole head: (class, thickness mm) from the brain mask outwards; ``"bone"`` (cortical bone) gives no signal.
HEAD_LAYERS_MM = (("bone", 2.0), ("fat", 3.0), ("bone", 2.0), ("fat", 5.0), ("skin", 2.0))
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MASK_THRESHOLD = 0.2  # fraction of the T1 template's maximum, as nilearn's brain mask


@dataclass(frozen=True)
class SyntheticPair:
    """One synthetic subject.

    Attributes:
        t1: T1-weighted volume, shape (X, Y, Z), float32, >= 0.
        t2: T2-weighted volume, same shape and voxels as ``t1``, float32, >= 0.
        mask: brain mask, shape (X, Y, Z), bool (the brain's, also for a whole head).
        affine: (4, 4) voxel-to-RAS affine in mm (MNI space; voxel size = the resolution).
        lesions: lesion mask (lesion fraction > 0.5), shape (X, Y, Z), bool; ``None`` without lesions.
    """

    t1: np.ndarray
    t2: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    lesions: np.ndarray | None = None


def _check_resolution(resolution: float) -> float:
    if not np.isfinite(resolution) or resolution < 1.0:
        raise ValueError(f"resolution must be a finite number of mm >= 1.0, got {resolution!r}")
    return float(resolution)


def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("synthetic data needs nilearn's bundled MNI152 templates: pip install nilearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def _template_1mm() -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """The 1 mm maps ``(GM, WM, CSF)`` float32, the brain mask (bool) and the template's (diagonal) affine."""
    folder = _template_dir()
    try:
        imgs = [nib.load(folder / _TEMPLATE.format(name)) for name in ("gm", "wm", "t1")]
    except FileNotFoundError as exc:
        raise RuntimeError(f"nilearn's MNI152 template is missing ({exc}): pip install nilearn") from exc
    gm, wm, t1 = (np.asarray(img.dataobj, dtype=np.float32) for img in imgs)
    brain = ndi.binary_fill_holes(t1 > _MASK_THRESHOLD * t1.max())
    gm, wm = gm / gm.max() * brain, wm / wm.max() * brain
    return (gm, wm, np.clip(brain - gm - wm, 0.0, 1.0)), brain, imgs[2].affine


def _to_grid(maps_1mm, resolution: float) -> np.ndarray:
    """1 mm maps onto the grid of ``resolution``: Gaussian anti-aliasing with the FWHM of the new voxel, then
    the voxel centres ``i * resolution`` sampled; a read-only ``(len(maps_1mm), X, Y, Z)`` float32 stack."""
    sigma = np.sqrt(max(resolution**2 - 1.0, 0.0)) / np.sqrt(8 * np.log(2))
    shape = tuple(int((n - 1) // resolution) + 1 for n in maps_1mm[0].shape)
    maps = np.stack(
        [
            ndi.affine_transform(ndi.gaussian_filter(np.float32(m), sigma), [resolution] * 3, output_shape=shape,
                                 order=1)
            for m in maps_1mm
        ]
    )
    maps.setflags(write=False)
    return maps


@functools.lru_cache(maxsize=4)
def _prior(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue maps (3, X, Y, Z) float32 (GM, WM, CSF; read-only) and their affine, cached."""
    maps_1mm, _, affine = _template_1mm()
    return _to_grid(maps_1mm, resolution), affine @ np.diag([resolution, resolution, resolution, 1.0])


@functools.lru_cache(maxsize=4)
def _deep_grey_prior(resolution: float) -> np.ndarray:
    """``(1, X, Y, Z)`` float32 (read-only), cached: the share of GM that is ``deep_gm`` (inside
    :data:`DEEP_GREY_NUCLEI`)."""
    _, brain, affine = _template_1mm()
    axes = [affine[k, k] * np.arange(n) + affine[k, 3] for k, n in enumerate(brain.shape)]  # MNI mm per axis
    deep = np.zeros(brain.shape, bool)
    for centre, semi_axes in DEEP_GREY_NUCLEI.values():
        for side in (-1.0, 1.0):
            c = (side * centre[0], *centre[1:])
            deep |= sum(((a - ci) / si).reshape([-1 if j == k else 1 for j in range(3)]) ** 2
                        for k, (a, ci, si) in enumerate(zip(axes, c, semi_axes))) <= 1.0
    return _to_grid((deep,), resolution)


@functools.lru_cache(maxsize=4)
def _head_prior(resolution: float) -> np.ndarray:
    """``(2, X, Y, Z)`` float32 (read-only), cached: the fat and skin fractions of the :data:`HEAD_LAYERS_MM`
    around the brain mask (the distance is measured on the 1 mm template: a few seconds)."""
    _, brain, _ = _template_1mm()
    distance = ndi.distance_transform_edt(~brain)  # mm outside the brain (1 mm voxels)
    layers = {"fat": np.zeros(brain.shape, bool), "skin": np.zeros(brain.shape, bool)}
    inner = 0.0
    for name, thickness in HEAD_LAYERS_MM:
        if name in layers:
            layers[name] |= (distance > inner) & (distance <= inner + thickness)
        inner += thickness
    return _to_grid((layers["fat"], layers["skin"]), resolution)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_basis: int) -> np.ndarray:
    """Random low-frequency field of ``shape`` (cosine basis, no constant term), max |value| = 1."""
    k = np.arange(n_basis)
    order = k[:, None, None] + k[None, :, None] + k[None, None, :]
    coef = rng.standard_normal((n_basis,) * 3) / np.maximum(order, 1)
    coef[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer(np.arange(n) + 0.5, k) / n) for n in shape]
    field = np.einsum("abc,xa,yb,zc->xyz", coef, *bases, optimize=True)
    return (field / np.abs(field).max()).astype(np.float32)


def _subject_rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams, each depending on ``seed`` only: the anatomy, the brain's tissue values, bias and
    noise, the lesions, and the options' tissue values (so an option leaves the other streams as they were)."""
    return tuple(np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4))


def _lesions(rng: np.random.Generator, wm: np.ndarray, resolution: float) -> np.ndarray:
    """Lesion fractions (X, Y, Z) float32: :data:`LESION_COUNT` ovoids centred in pure white matter, mean radius in
    :data:`LESION_RADIUS_MM`, a one-voxel partial-volume edge, never more than the white matter there."""
    count = int(rng.integers(LESION_COUNT[0], LESION_COUNT[1] + 1))
    candidates = np.argwhere(wm > 0.9)
    centres = candidates[rng.choice(len(candidates), size=count, replace=False)]
    radii = rng.uniform(*LESION_RADIUS_MM, size=(count, 1)) * rng.uniform(0.6, 1.4, size=(count, 3)) / resolution
    blobs = np.zeros(wm.shape, np.float32)
    for centre, radius in zip(centres, radii):
        lo = np.maximum(centre - np.ceil(radius).astype(int) - 1, 0)
        hi = np.minimum(centre + np.ceil(radius).astype(int) + 2, wm.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(hi - lo, dtype=np.float32) + lo[:, None, None, None]
        q = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)))  # 1 on the surface
        blobs[box] = np.maximum(blobs[box], np.clip((1.0 - q) * radius.mean() + 0.5, 0.0, 1.0))
    return np.minimum(blobs, wm)


def tissue_maps(resolution: float = 2.0, seed: int | None = None, deep_grey: bool = False, lesions: bool = False,
                head: bool = False) -> dict[str, np.ndarray]:
    """Tissue probability maps and brain mask on the synthetic grid.

    Args:
        resolution: isotropic voxel size in mm, >= 1.
        seed: subject seed; ``None`` gives the undeformed template, an integer the deformed
            anatomy of ``make_pair(seed, resolution, ...)``.
        deep_grey, lesions, head: the options of :func:`make_pair` (``lesions`` needs a ``seed``).

    Returns:
        ``{"gm", "wm", "csf"}`` and, with the options, ``"deep_gm"``, ``"lesion"`` (taken out of
        ``"gm"`` and ``"wm"``), ``"fat"``, ``"skin"``: float32 fractions in [0, 1], shape (X, Y, Z)
        (read-only views of the cache when ``seed`` is None and no option is on); ``"mask"``: bool
        brain mask (brain tissue > 0.5), same shape.

    Raises:
        ValueError: ``lesions`` without a ``seed``.
    """
    if lesions and seed is None:
        raise ValueError("lesions are drawn per subject: give a seed")
    maps, _ = _prior(_check_resolution(resolution))
    extra = ([_deep_grey_prior(resolution)] if deep_grey else []) + ([_head_prior(resolution)] if head else [])
    if extra:
        maps = np.concatenate([maps, *extra])
    if seed is not None:
        rng = _subject_rngs(seed)[0]
        grid = np.indices(maps.shape[1:], dtype=np.float32)
        grid += np.stack([_smooth_field(rng, maps.shape[1:], 4) for _ in range(3)]) * (DEFORM_MM / resolution)
        maps = np.stack([ndi.map_coordinates(m, grid, output=np.float32, order=1) for m in maps])
    gm, wm, csf = maps[:3]  # linear interpolation of [0, 1] maps stays in [0, 1]
    tissues = {"mask": gm + wm + csf > 0.5}
    if deep_grey:
        tissues["deep_gm"] = gm * maps[3]
        gm = gm - tissues["deep_gm"]
    if lesions:
        tissues["lesion"] = _lesions(_subject_rngs(seed)[2], wm, resolution)
        wm = wm - tissues["lesion"]
    if head:
        tissues["fat"], tissues["skin"] = maps[-2:]
    return {"gm": gm, "wm": wm, "csf": csf, **tissues}


def make_pair(seed: int, resolution: float = 2.0, deep_grey: bool = False, lesions: bool = False,
              head: bool = False) -> SyntheticPair:
    """Simulate one subject's paired T1w and T2w volumes.

    Args:
        seed: non-negative integer; the same seed, resolution and options give identical volumes
            (the options keep the subject's deformation, brain tissue values and bias fields).
        resolution: isotropic voxel size in mm, >= 1 (2 mm: 99 x 117 x 95 voxels).
        deep_grey: deep grey nuclei (``deep_gm`` of :data:`TISSUES`).
        lesions: white-matter lesions (``lesion``), a random number and size per subject.
        head: a whole head: skull (bone and fatty marrow) and scalp (fat, skin) around the brain.

    Returns:
        The ``SyntheticPair`` (volumes in units of fully relaxed water magnetisation, plus noise).

    Raises:
        ValueError: ``resolution`` below 1 mm.
        RuntimeError: nilearn (the source of the anatomical prior) is not installed.
    """
    tissues = tissue_maps(resolution, seed, deep_grey, lesions, head)
    shape = tissues["mask"].shape
    _, rng, _, options_rng = _subject_rngs(seed)
    names = ["gm", "wm", "csf"] + [name for name in ("deep_gm", "lesion", "fat", "skin") if name in tissues]
    params = np.array([TISSUES[name] for name in names])
    params[:3] *= rng.normal(1.0, TISSUE_JITTER, size=(3, 3))
    params[3:] *= options_rng.normal(1.0, TISSUE_JITTER, size=(len(names) - 3, 3))
    t1_ms, t2_ms, pd = params.T
    volumes = {}
    for contrast, (tr, te) in SEQUENCES.items():
        signals = pd * (1.0 - np.exp(-tr / t1_ms)) * np.exp(-te / t2_ms)
        clean = sum(np.float32(s) * tissues[name] for s, name in zip(signals, names))
        clean *= 1.0 + BIAS_AMPLITUDE * _smooth_field(rng, shape, 3)
        sigma = np.float32(NOISE_FRACTION * clean.max())
        real = clean + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        volumes[contrast] = np.sqrt(real * real + imag * imag)
    return SyntheticPair(
        t1=volumes["t1"], t2=volumes["t2"], mask=tissues["mask"], affine=_prior(float(resolution))[1].copy(),
        lesions=tissues["lesion"] > 0.5 if lesions else None,
    )


def write_dataset(out_dir, n_subjects: int = 4, resolution: float = 2.0, seed: int = 0, deep_grey: bool = False,
                  lesions: bool = False, head: bool = False) -> dict:
    """Write a BIDS-like folder of synthetic subjects.

    Subject ``i`` (0-based) uses ``make_pair(seed + i, resolution, deep_grey, lesions, head)`` and is
    written as ``out_dir/sub-XX/anat/sub-XX_{T1w,T2w,mask}.nii.gz`` (XX = i + 1 as 01, 02, ...), with
    ``lesions`` also ``sub-XX_lesions.nii.gz``: float32 volumes and uint8 masks with the pair's affine;
    ``out_dir/dataset_description.json`` describes the generator. Every file is written atomically.

    Args:
        out_dir: output folder (created if needed; existing files are replaced).
        n_subjects: number of subjects, >= 1.
        resolution: isotropic voxel size in mm, >= 1.
        seed: seed of the first subject.
        deep_grey, lesions, head: the options of :func:`make_pair`.

    Returns:
        ``{"t1": [Path], "t2": [Path], "mask": [Path], "root": Path}`` (and ``"lesions": [Path]`` with
        ``lesions``), lists in subject order.

    Raises:
        ValueError: ``n_subjects`` < 1 or ``resolution`` < 1 mm.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects!r}")
    _check_resolution(resolution)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"t1": [], "t2": [], "mask": [], **({"lesions": []} if lesions else {}), "root": root}
    for i in range(n_subjects):
        pair = make_pair(seed + i, resolution, deep_grey, lesions, head)
        sub = f"sub-{i + 1:02d}"
        anat = root / sub / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        files = [("t1", "T1w", pair.t1), ("t2", "T2w", pair.t2), ("mask", "mask", pair.mask)]
        for key, suffix, data in files + ([("lesions", "lesions", pair.lesions)] if lesions else []):
            img = nib.Nifti1Image(data.astype(np.uint8 if data.dtype == bool else np.float32), pair.affine)
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
                    f"Rician noise; {resolution:g} mm isotropic, seeds {seed}..{seed + n_subjects - 1}; "
                    f"deep grey nuclei: {deep_grey}, white-matter lesions: {lesions}, whole head: {head}"
                ),
            }
        ],
    }
    text = json.dumps(description, indent=2) + "\n"
    with atomic_path(root / "dataset_description.json") as tmp:
        tmp.write_text(text)
    return paths
