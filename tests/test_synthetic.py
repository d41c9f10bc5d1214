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


def spin_echo(name: str, contrast: str) -> float:
    """The noise-free signal of a tissue of ``syn.TISSUES`` in ``syn.SEQUENCES[contrast]``."""
    t1_ms, t2_ms, pd = syn.TISSUES[name]
    tr, te = syn.SEQUENCES[contrast]
    return pd * (1 - np.exp(-tr / t1_ms)) * np.exp(-te / t2_ms)


def test_every_tissue_signal_is_the_spin_echo_equation_of_its_relaxation_parameters(monkeypatch):
    """Without bias field, noise and jitter a subject with every option is the tissue fractions times one signal
    per tissue: recovered by least squares, each is the equation's for its (T1, T2, PD), and they break the mirror: lesions darker than white matter on the T1w and brighter than grey matter on the
    T2w, fat brighter than both in both, deep grey nuclei like cortex on the T1w and like white matter on the T2w
    (no monotone inversion maps one contrast onto the other)."""
    monkeypatch.setattr(syn, "BIAS_AMPLITUDE", 0.0)
    monkeypatch.setattr(syn, "NOISE_FRACTION", 0.0)
    monkeypatch.setattr(syn, "TISSUE_JITTER", 0.0)
    pair = syn.make_pair(0, 2.0, deep_grey=True, lesions=True, head=True)
    tissues = syn.tissue_maps(2.0, 0, deep_grey=True, lesions=True, head=True)
    names = ["gm", "wm", "csf", "deep_gm", "lesion", "fat", "skin"]
    fractions = np.stack([tissues[name].ravel() for name in names], axis=1)
    signal = {}
    for contrast, volume in (("t1", pair.t1), ("t2", pair.t2)):
        solved = np.linalg.lstsq(fractions, volume.ravel(), rcond=None)[0]
        signal[contrast] = dict(zip(names, solved))
        for name in names:
            assert signal[contrast][name] == pytest.approx(spin_echo(name, contrast), rel=1e-3), (name, contrast)
    t1, t2 = signal["t1"], signal["t2"]
    assert t1["lesion"] < t1["wm"] and t2["lesion"] > t2["gm"]
    assert t1["fat"] > t1["wm"] and t2["fat"] > t2["gm"]
    assert abs(t1["deep_gm"] - t1["gm"]) < abs(t1["deep_gm"] - t1["wm"])
    assert abs(t2["deep_gm"] - t2["wm"]) < abs(t2["deep_gm"] - t2["gm"])


def test_lesions_show_in_the_noisy_volumes_and_keep_the_subject(pair2):
    """With bias field and noise the lesions are still darker than white matter on the T1w and brighter than grey
    matter on the T2w; the options keep the subject's brain mask; ``lesions`` is the lesion fraction > 0.5."""
    pair = syn.make_pair(0, 2.0, deep_grey=True, lesions=True)
    tissues = syn.tissue_maps(2.0, 0, deep_grey=True, lesions=True)
    lesion, wm, gm = tissues["lesion"] > 0.6, tissues["wm"] > 0.9, tissues["gm"] > 0.9
    assert lesion.sum() > 20
    assert pair.t1[lesion].mean() < pair.t1[wm].mean() and pair.t2[lesion].mean() > pair.t2[gm].mean()
    np.testing.assert_array_equal(pair.mask, pair2.mask)
    np.testing.assert_array_equal(pair.lesions, tissues["lesion"] > 0.5)


def test_lesions_differ_in_number_and_size_per_subject(tmp_path):
    """Each subject draws its own lesions (within LESION_COUNT ovoids, in white matter); write_dataset writes
    their mask beside the subject."""
    out = syn.write_dataset(tmp_path, n_subjects=3, resolution=2.0, seed=0, lesions=True)
    counts, volumes = [], []
    for i, path in enumerate(out["lesions"]):
        assert path.name == f"sub-0{i + 1}_lesions.nii.gz"
        lesions = np.asarray(nib.load(path).dataobj) > 0
        np.testing.assert_array_equal(lesions, syn.make_pair(i, 2.0, lesions=True).lesions)
        counts.append(ndi.label(lesions)[1])
        volumes.append(int(lesions.sum()))
        assert 1 <= counts[-1] <= syn.LESION_COUNT[1]
        assert not (lesions & ~np.asarray(nib.load(out["mask"][i]).dataobj, bool)).any()
    assert len(set(counts)) > 1 and len(set(volumes)) == 3
    assert "white-matter lesions: True" in (tmp_path / "dataset_description.json").read_text()


def test_whole_head_has_skull_and_scalp_fat_bright_in_both_contrasts():
    """A whole head: fat (scalp and marrow) brighter than white matter on the T1w and than grey matter on the T2w
    (its fast-spin-echo T2); the skull's tables (cortical bone) give no signal; the brain mask is the brain's."""
    pair, tissues = syn.make_pair(1, 2.0, head=True), syn.tissue_maps(2.0, 1, head=True)
    fat, wm, gm = tissues["fat"] > 0.7, tissues["wm"] > 0.9, tissues["gm"] > 0.9
    assert pair.t1[fat].mean() > 1.3 * pair.t1[wm].mean() and pair.t2[fat].mean() > 1.3 * pair.t2[gm].mean()
    np.testing.assert_array_equal(pair.mask, syn.make_pair(1, 2.0).mask)
    total = sum(tissues[name] for name in ("gm", "wm", "csf", "fat", "skin"))
    table = ndi.binary_dilation(pair.mask) & ~pair.mask  # the first voxel outside the brain: the inner table
    marrow = ndi.binary_dilation(pair.mask, iterations=2) & ~ndi.binary_dilation(pair.mask)
    assert total[table].mean() < 0.55 and total[marrow].mean() > 0.65  # bone: no tissue (partial volume at 2 mm)
    scalp = ndi.binary_dilation(pair.mask, iterations=7) & ~ndi.binary_dilation(pair.mask, iterations=5)
    assert tissues["fat"][scalp].mean() > 0.6  # the scalp's fat, outside the skull
