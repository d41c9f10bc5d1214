"""Skull-stripped evaluation pairs made from the whole-head clinical pairs in ../shared/data, so that quality is
also measured on real scans unlike the BraTS-style ones (other scanners, 2D FSE/TSE T2w, 2.55-6 mm slices).

    python scripts/strip_pairs.py --out runs/stripped-pairs     # writes <subject>_T1w/_T2w.nii.gz and a PNG each

Each subject's T1w is rigidly registered onto its T2w grid (:func:`mri_translate.pairing.register`), then an
intracranial mask is cut out of the two contrasts together by morphology (:func:`intracranial_mask`) and both
scans are set to 0 outside it. No learning and no atlas: a rough brain extraction, good where the skull is a
dark ring between brain and scalp (the vault) and rough at the skull base (orbits and sinus walls may stay in
a few slices); the montage PNG shows what was kept. Use such pairs to measure, not to train (training on them
cost 1.4-2.9 dB on the BraTS-style leave-one-out pairs, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a 1D sample (256 bins between its minimum and 99.9th percentile: a few outliers,
    e.g. from resampling, would otherwise squeeze the histogram into a few bins and move the threshold)."""
    counts, edges = np.histogram(values, 256, range=(float(values.min()), float(np.percentile(values, 99.9))))
    centres = (edges[:-1] + edges[1:]) / 2
    mass, total = np.cumsum(counts * centres), counts.sum()
    below = np.cumsum(counts)[:-1]  # a split after each bin but the last
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * below / total - mass[:-1]) ** 2 / (below * above)
    between[(below == 0) | (above == 0)] = np.nan  # one class empty: no split
    return float(centres[np.nanargmax(between)])


def intracranial_mask(t1: np.ndarray, t2: np.ndarray, spacing, radius_mm: float = 6.0,
                      keep: float = 0.15, fat: float = 1.8) -> np.ndarray:
    """Brain and CSF inside the skull of a whole-head T1w/T2w pair on one grid.

    Args:
        t1, t2: ``(Z, Y, X)`` arrays (SimpleITK order) of one subject, co-registered; slices along Z.
        spacing: voxel size ``(x, y, z)`` in mm.
        radius_mm: the erosion that cuts the bridges between brain and scalp (the skull is a dark ring in both
            contrasts; fatty marrow and partial volume bridge it here and there).
        keep: per slice, components smaller than this fraction of the largest are dropped (eyes, sinus walls).
        fat: voxels brighter than ``fat`` times the median of the kept tissue in the T1w and above its median
            in the T2w are left out: fat (orbits, marrow, scalp) is bright in both, brain tissue is not (in
            spin-echo and MPRAGE T1w the brain lies within 1.5 times its median; fat at 2 to 3.3 times).

    Returns:
        ``(Z, Y, X)`` bool: tissue (bright in the T1w: brain) or fluid (bright in the T2w: CSF) above Otsu's
        threshold inside the head and not fat, opened by ``radius_mm`` around its largest 3D component, holes
        filled.
    """
    import SimpleITK as sitk

    head = (t1 > 0) & (t2 > 0)
    scaled = [a / np.percentile(a[head & (a > np.percentile(a[head], 50))], 99) for a in (t1, t2)]
    bright = (scaled[0] > 0.8 * _otsu(scaled[0][head])) | (scaled[1] > _otsu(scaled[1][head]))
    bright &= ~((scaled[0] > fat * np.median(scaled[0][bright])) & (scaled[1] > np.median(scaled[1][bright])))
    radius = [max(0, int(round(radius_mm / s))) for s in spacing]
    image = sitk.GetImageFromArray(bright.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.BinaryErode(image, radius)),
                                       sortByObjectSize=True)
    core = sitk.BinaryDilate(sitk.Cast(sitk.Equal(components, 1), sitk.sitkUInt8), radius)
    opened = sitk.GetArrayFromImage(core).astype(bool) & bright
    mask = np.zeros_like(opened)
    for z, plane in enumerate(opened):
        labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(
            sitk.BinaryFillhole(sitk.GetImageFromArray(plane.astype(np.uint8)))), sortByObjectSize=True))
        if labels.max():
            sizes = np.bincount(labels.ravel())[1:]
            mask[z] = np.isin(labels, 1 + np.flatnonzero(sizes >= keep * sizes[0]))
    return mask


def stripped_pair(subject: str, t1, t2, out: Path) -> dict:
    """Register ``t1`` onto ``t2``'s grid, mask both (:func:`intracranial_mask`) and write
    ``out/<subject>_T1w.nii.gz`` and ``_T2w.nii.gz`` (float32, 0 outside) and ``<subject>_mask.png``; kept when
    already there. Returns ``{"name", "t1", "t2", "from"}`` (``from``: the original scans)."""
    import SimpleITK as sitk

    from mri_translate.pairing import register

    (out / "registration").mkdir(parents=True, exist_ok=True)
    paths = {contrast: out / f"{subject}_{contrast}.nii.gz" for contrast in ("T1w", "T2w")}
    if not all(path.exists() for path in paths.values()):
        registered = register(t1, t2, out / "registration")
        images = {c: sitk.ReadImage(str(p), sitk.sitkFloat32)
                  for c, p in (("T1w", registered.t1), ("T2w", registered.t2))}
        arrays = {c: sitk.GetArrayFromImage(image) for c, image in images.items()}
        mask = intracranial_mask(arrays["T1w"], arrays["T2w"], images["T2w"].GetSpacing())
        for contrast, image in images.items():
            stripped = sitk.GetImageFromArray((arrays[contrast] * mask).astype(np.float32))
            stripped.CopyInformation(image)
            sitk.WriteImage(stripped, str(paths[contrast]))
        _montage(arrays, mask, out / f"{subject}_mask.png")
    return {"name": subject, "t1": paths["T1w"], "t2": paths["T2w"], "from": [Path(t1), Path(t2)]}


def kept_ml(path) -> float:
    """The volume (ml) a skull-stripped scan written by :func:`stripped_pair` kept (its voxels above 0): about
    1,400-1,750 ml where the mask worked, a few hundred or less where it failed."""
    import nibabel as nib

    image = nib.load(str(path))
    return float((np.asarray(image.dataobj) > 0).sum() * np.prod(image.header.get_zooms()[:3])) / 1000


def _montage(arrays: dict, mask: np.ndarray, path: Path, columns: int = 8) -> None:
    """Kept (top rows) and removed (bottom rows) parts of both contrasts, ``columns`` slices from 10 to 90 %."""
    from PIL import Image

    picks = np.linspace(0.1 * len(mask), 0.9 * len(mask) - 1, columns).astype(int)
    rows = []
    for array in arrays.values():
        scaled = np.clip(array / np.percentile(array[array > 0], 99), 0, 1)
        rows += [np.concatenate([scaled[z] * kept[z] for z in picks], 1) for kept in (mask, ~mask)]
    Image.fromarray((np.concatenate(rows, 0) * 255).astype(np.uint8)).save(path)


def clinical_pairs(out: Path, only=None) -> list[dict]:
    """The skull-stripped versions of the whole-head pairs of scripts/train_default_model.py and of brainix
    (a spin-echo T1w / TSE T2w pair whose licence allows development use only: measured, never trained on);
    those present in ../shared/data whose names start with one of ``only`` (default: all)."""
    from train_default_model import REAL, WHOLE_HEAD_PAIRS

    pairs = {**WHOLE_HEAD_PAIRS, "brainix": (REAL / "brainix_T1w.nii.gz", REAL / "brainix_T2w.nii.gz")}
    return [stripped_pair(subject, t1, t2, out) for subject, (t1, t2) in pairs.items()
            if Path(t1).exists() and Path(t2).exists() and (not only or subject.startswith(tuple(only)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "stripped-pairs"))
    for pair in clinical_pairs(Path(parser.parse_args().out)):
        print(f"{pair['name']}: {pair['t1']} {pair['t2']}")


if __name__ == "__main__":
    main()
