"""scripts/bench_lesion_response.py: lesions painted into a pair's white matter, clear of its own lesions, darker
on the T1w and brighter on the T2w, nowhere else."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_lesion_response import paint_pair  # noqa: E402


def test_painted_lesions_change_only_their_white_matter_both_ways(tmp_path):
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", n_subjects=1, resolution=2.0, lesions=True)
    folder = tmp_path / "pair"
    folder.mkdir()
    for name, path in (("t1", data["t1"][0]), ("t2", data["t2"][0]), ("lesions", data["lesions"][0])):
        (folder / f"{name}.nii.gz").symlink_to(Path(path).resolve())
    out = tmp_path / "painted"
    out.mkdir()
    paths = paint_pair(folder, out, count=6, t1_factor=0.7, t2_factor=2.0, seed=0)
    load = {name: nib.load(path).get_fdata() for name, path in paths.items()}
    t1, t2 = nib.load(folder / "t1.nii.gz").get_fdata(), nib.load(folder / "t2.nii.gz").get_fdata()
    mask, real = load["mask"] > 0, nib.load(folder / "lesions.nii.gz").get_fdata() > 0
    assert load["t1"].shape == t1.shape
    assert np.allclose(nib.load(paths["t1"]).affine, nib.load(folder / "t1.nii.gz").affine)
    assert mask.sum() > 6 and not (mask & ndimage.binary_dilation(real, iterations=2)).any()
    assert (load["t1"] <= t1 + 1e-4).all() and (load["t2"] >= t2 - 1e-4).all()
    changed = (np.abs(load["t1"] - t1) > 1e-3 * t1.max())
    assert not (changed & ~ndimage.binary_dilation(mask, iterations=3)).any()   # only around the painted lesions
    assert np.median(load["t1"][mask] / t1[mask]) < 0.8 and np.median(load["t2"][mask] / t2[mask]) > 1.5
