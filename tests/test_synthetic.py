"""Tests of mri_translate.synthetic: geometry, tissue contrast, pairing, determinism, BIDS-like output."""

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from mri_translate import synthetic as syn


@pytest.fixture(scope="module")
def pair2():
    return syn.make_pair(0, 2.0)


def test_pair_geometry_dtype_and_values(pair2):
    assert pair2.t1.shape == pair2.t2.shape == pair2.mask.shape == (99, 117, 95)  # nilearn's 2 mm grid
    assert pair2.t1.dtype == pair2.t2.dtype == np.float32
    assert pair2.mask.dtype == bool and 0.1 < pair2.mask.mean() < 0.4
    assert pair2.affine.shape == (4, 4)
    np.testing.assert_allclose(nib.affines.voxel_sizes(pair2.affine), [2.0, 2.0, 2.0])
    for vol in (pair2.t1, pair2.t2):
        assert np.isfinite(vol).all() and vol.min() >= 0 and vol.max() > 0


def test_affine_spacing_follows_resolution_and_keeps_the_field_of_view():
    pair = syn.make_pair(0, 3.0)
    np.testing.assert_allclose(nib.affines.voxel_sizes(pair.affine), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(pair.affine[:3, 3], [-98.0, -134.0, -72.0])  # template origin, RAS mm
    assert pair.t1.shape == (66, 78, 63)


def test_tissue_contrast_t1w_wm_gm_csf_and_t2w_inverted(pair2):
    tissues = syn.tissue_maps(2.0, seed=0)  # the deformed anatomy of make_pair(0, 2.0)
    np.testing.assert_array_equal(tissues["mask"], pair2.mask)
    pure = {name: tissues[name] > 0.9 for name in ("wm", "gm", "csf")}
    assert all(m.sum() > 100 for m in pure.values())
    t1 = {name: pair2.t1[m].mean() for name, m in pure.items()}
    t2 = {name: pair2.t2[m].mean() for name, m in pure.items()}
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]


def test_tissue_maps_are_probabilities_that_fill_the_mask():
    tissues = syn.tissue_maps(3.0)
    total = tissues["gm"] + tissues["wm"] + tissues["csf"]
    assert min(tissues[k].min() for k in ("gm", "wm", "csf")) >= 0 and total.max() <= 1.0 + 1e-3
    assert total[tissues["mask"]].mean() > 0.9
    assert total[~ndi.binary_dilation(tissues["mask"], iterations=2)].max() < 0.05


def test_t1_and_t2_are_paired_but_contrast_inverted(pair2):
    m = pair2.mask
    assert np.corrcoef(pair2.t1[m], pair2.t2[m])[0, 1] < -0.3


def test_same_seed_same_volumes_other_seed_differs():
    a, b, c = syn.make_pair(5, 3.0), syn.make_pair(5, 3.0), syn.make_pair(6, 3.0)
    for field in ("t1", "t2", "mask", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.t1, c.t1) and not np.array_equal(a.t2, c.t2)
    assert not np.array_equal(a.mask, c.mask)  # the anatomy is deformed per subject
    np.testing.assert_array_equal(a.affine, c.affine)


def test_background_is_only_noise(pair2):
    outside = ~ndi.binary_dilation(pair2.mask, iterations=3)
    for vol in (pair2.t1, pair2.t2):
        brain = np.percentile(vol[pair2.mask], 99)
        assert vol[outside].mean() < 0.06 * brain  # Rayleigh mean ~ 1.25 sigma, sigma = 2 % of the max
        assert vol[outside].max() < 0.2 * brain


def test_write_dataset_bids_like_files(tmp_path):
    root = tmp_path / "synth"
    out = syn.write_dataset(root, n_subjects=2, resolution=3.0, seed=7)
    assert out["root"] == root
    assert [p.name for p in out["t1"]] == ["sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"]
    assert [p.name for p in out["t2"]] == ["sub-01_T2w.nii.gz", "sub-02_T2w.nii.gz"]
    assert [p.name for p in out["mask"]] == ["sub-01_mask.nii.gz", "sub-02_mask.nii.gz"]
    assert all(p.parent == root / p.name[:6] / "anat" for key in ("t1", "t2", "mask") for p in out[key])
    expected = syn.make_pair(8, 3.0)  # subject 2 uses seed + 1
    for key in ("t1", "t2", "mask"):
        img = nib.load(out[key][1])
        assert img.shape == expected.t1.shape
        np.testing.assert_allclose(img.affine, expected.affine)
        assert img.get_data_dtype() == (np.uint8 if key == "mask" else np.float32)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), getattr(expected, key))
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0" and description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "mri-translate"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == sorted(
        ["dataset_description.json"]
        + [f"sub-0{i}/anat/sub-0{i}_{s}.nii.gz" for i in (1, 2) for s in ("T1w", "T2w", "mask")]
    )  # no leftover temporary files


def test_write_dataset_replaces_existing_files(tmp_path):
    first = syn.write_dataset(tmp_path, n_subjects=1, resolution=4.0, seed=0)
    second = syn.write_dataset(tmp_path, n_subjects=1, resolution=4.0, seed=1)
    assert first["t1"] == second["t1"]
    np.testing.assert_array_equal(nib.load(second["t1"][0]).get_fdata(), syn.make_pair(1, 4.0).t1)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("resolution", [0.5, 0.99, 0.0, -2.0, float("nan")])
def test_invalid_resolution_raises(resolution, tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        syn.make_pair(0, resolution)
    with pytest.raises(ValueError, match="resolution"):
        syn.write_dataset(tmp_path, n_subjects=1, resolution=resolution)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("n_subjects", [0, -1])
def test_invalid_subject_count_raises(n_subjects, tmp_path):
    with pytest.raises(ValueError, match="n_subjects"):
        syn.write_dataset(tmp_path / "out", n_subjects=n_subjects)
    assert not (tmp_path / "out").exists()


def test_missing_nilearn_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real_find_spec(name, *a)
    )
    with pytest.raises(RuntimeError, match="pip install nilearn"):
        syn._template_dir()
