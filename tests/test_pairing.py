"""Pairs: subject matching, the one-grid check, rigid registration, and paired (mixed) training."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from mri_translate import cli
from mri_translate.cyclegan import CycleGANLoss
from mri_translate.errors import InputError
from mri_translate.pairing import match_regions, match_subjects, register, subject_key
from mri_translate.train import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_subjects_are_matched_by_name_without_the_contrast(tmp_path):
    t1 = [tmp_path / "sub-01_T1w.nii.gz", tmp_path / "a" / "t1.nii.gz", tmp_path / "lonely_T1w.nii.gz"]
    t2 = [tmp_path / "a" / "t2.nii.gz", tmp_path / "sub-01_T2w.nii.gz", tmp_path / "other_T2w.nii.gz"]
    pairs, rest_a, rest_b = match_subjects(t1, t2)
    assert pairs == [(t1[0], t2[1]), (t1[1], t2[0])]
    assert rest_a == [t1[2]] and rest_b == [t2[2]]
    assert subject_key(tmp_path / "brats_gli_00000_t1.nii.gz") == str(tmp_path / "brats_gli_00000")
    with pytest.raises(InputError, match="same subject"):
        match_subjects([tmp_path / "x_T1w.nii.gz", tmp_path / "x_t1.nii"], t2)


def test_region_masks_go_to_the_pair_whose_subject_they_are_named_after(tmp_path):
    pairs = [(tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_T2w.nii.gz"),
             (tmp_path / "sub-011_T1w.nii.gz", tmp_path / "sub-011_T2w.nii.gz"),
             (tmp_path / "a" / "t1.nii.gz", tmp_path / "a" / "t2.nii.gz")]
    masks = [tmp_path / "sub-011_lesions.nii.gz", tmp_path / "sub-01_label-lesion_mask.nii.gz"]
    assert match_regions(pairs, masks) == {str(pairs[1][0]): masks[0], str(pairs[0][0]): masks[1]}
    with pytest.raises(InputError, match=r"sub-02_lesions\.nii\.gz: matches no T1w/T2w pair"):
        match_regions(pairs, [tmp_path / "sub-02_lesions.nii.gz"])
    with pytest.raises(InputError, match=r"sub-01\.nii\.gz: matches no T1w/T2w pair"):  # a separator after the name
        match_regions(pairs, [tmp_path / "b" / "sub-01.nii.gz"])
    with pytest.raises(InputError, match="second region mask"):
        match_regions(pairs, [masks[1], tmp_path / "sub-01_edema.nii.gz"])


def test_supervised_term_counts_only_paired_items():
    loss = CycleGANLoss(paired=4.0)
    fake, real = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    real[2] = 0.0  # the unpaired item would add nothing anyway; item 1 differs by 1
    assert float(loss.supervised(fake, real, torch.tensor([0.0, 1.0, 0.0]))) == pytest.approx(4.0)
    assert float(loss.supervised(fake, real, torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(4.0 * 2 / 3)
    assert float(loss.supervised(fake, real, torch.zeros(3))) == 0.0


@pytest.fixture(scope="module")
def shifted_pair(tmp_path_factory):
    """One synthetic subject's T1w and its T2w moved by a rigid shift of (4, -3, 2) mm (on its own grid)."""
    from mri_translate.synthetic import write_dataset

    root = tmp_path_factory.mktemp("pairing")
    data = write_dataset(root / "data", n_subjects=3, resolution=2.0)
    t2 = nib.load(data["t2"][0])
    moved = ndimage.shift(np.asarray(t2.dataobj, dtype=np.float32), (2.0, -1.5, 1.0), order=1)
    path = root / "moved" / "subject_T2w.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(moved, t2.affine), path)
    t1 = root / "moved" / "subject_T1w.nii.gz"
    nib.save(nib.load(data["t1"][0]), t1)
    return data, t1, path


def test_registration_recovers_a_rigid_shift(shifted_pair, tmp_path):
    data, t1, t2 = shifted_pair
    done = register(t1, t2, tmp_path, onto="t1")
    assert done.moved == "t2" and done.t1 == t1 and done.metric_final < done.metric_initial
    # the fixed->moving translation in ITK's LPS millimetres: the T2w moved by (+4 R, -3 A, +2 S) mm
    np.testing.assert_allclose(done.parameters[3:], [-4.0, 3.0, 2.0], atol=0.6)
    aligned = nib.load(done.t2)
    np.testing.assert_allclose(aligned.affine, nib.load(t1).affine, atol=1e-3)
    truth = np.asarray(nib.load(data["t2"][0]).dataobj, dtype=np.float32)
    brain = truth > 0.1 * truth.max()
    before = np.abs(np.asarray(nib.load(t2).dataobj) - truth)[brain].mean()
    after = np.abs(np.asarray(aligned.dataobj) - truth)[brain].mean()
    assert after < 0.5 * before, (before, after)
    assert done.checkerboard.is_file() and json.loads((tmp_path / "subject_registration.json").read_text())["moved"] == "t2"


def test_paired_training_refuses_a_pair_off_one_grid_in_one_line(shifted_pair, tiny_config, tmp_path, capsys):
    _, t1, t2 = shifted_pair
    nib.save(nib.Nifti1Image(np.asarray(nib.load(t2).dataobj)[:-2], nib.load(t2).affine), tmp_path / "subject_T2w.nii.gz")
    cropped = tmp_path / "subject_T2w.nii.gz"
    t1_copy = tmp_path / "subject_T1w.nii.gz"
    t1_copy.write_bytes(t1.read_bytes())
    code = cli.main(["train", "--t1", str(t1_copy), "--t2", str(cropped), "--out", str(tmp_path / "run"),
                     "--config", str(tiny_config()), "--paired", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(cropped) in err[0] and "not on the grid of" in err[0] and "--register" in err[0]


@pytest.mark.slow
def test_mixed_training_with_registration_adds_the_supervised_term(shifted_pair, tiny_config, tmp_path):
    """--paired --register: the shifted pair is aligned into run/pairs and trained as a pair, a pair already on
    one grid is trained as it is (no registration), the other subject unpaired; the paired loss terms appear in
    about data.paired_fraction of the iterations."""
    data, t1, shifted = shifted_pair
    t2 = tmp_path / "native" / "subject_T2w.nii.gz"  # a grid of its own (one slice fewer), as acquired
    t2.parent.mkdir()
    nib.save(nib.load(shifted).slicer[:, :, 1:], t2)
    nib.save(nib.load(t1), t2.parent / "subject_T1w.nii.gz")
    t1 = t2.parent / "subject_T1w.nii.gz"
    config = tiny_config(train={"iterations": 12, "epoch_length": 4})
    trainer = train([t1, data["t1"][1]], [t2, data["t2"][1], data["t2"][2]], tmp_path / "run", config=config,
                    progress_bar=False, paired=True, register=True)
    assert (tmp_path / "run" / "pairs" / "subject_T2w_space-T1w.nii.gz").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "pairs").glob("*.nii.gz")) == ["subject_T2w_space-T1w.nii.gz"]
    assert len(trainer.state.dataloader.dataset.pairs) == 2
    history = trainer.state.history
    paired = [value for _, value in history["paired_B"]]
    assert len(paired) == 12 and 2 <= sum(v > 0 for v in paired) <= 10


def test_a_registered_clinical_pair_trains_in_paired_mode(shared_data, tiny_config, tmp_path):
    """A real clinical visit (MSLUB p04: 2D T1w with 3 mm slices, 2D T2w with 4 mm slices, two grids): --register
    moves the T1w onto the thicker T2w grid with a better mutual information, and every item drawn with
    data.paired_fraction 1 is the same slab of both scans (paired L1 terms in every iteration), aligned: the edges
    of the T1w slab and of the T2w slab lie on each other, far more than when one is shifted by 6 pixels (12 mm)."""
    real = shared_data / "volumes" / "train_real"
    t1, t2 = real / "mslub_p04s1_T1w.nii.gz", real / "mslub_p04s1_T2w.nii.gz"
    config = tiny_config(data={"crop": 64, "spacing": 2.0, "batch_size": 2, "paired_fraction": 1.0},
                         train={"iterations": 2, "epoch_length": 2})
    trainer = train([t1], [t2], tmp_path / "run", config=config, progress_bar=False, paired=True, register=True)
    record = json.loads(next((tmp_path / "run" / "pairs").glob("*_registration.json")).read_text())
    assert record["moved"] == "t1" and record["metric_final"] < record["metric_initial"]
    moved = nib.load(tmp_path / "run" / "pairs" / "mslub_p04s1_T1w_space-T2w.nii.gz")
    np.testing.assert_allclose(moved.affine, nib.load(t2).affine, atol=1e-4)
    assert all(value > 0 for _, value in trainer.state.history["paired_B"])
    dataset = trainer.state.dataloader.dataset
    def edges(slab):
        return np.hypot(*np.gradient(slab.numpy().astype(np.float64)))

    for index in range(4):
        item = dataset[index]
        assert float(item["paired"]) == 1.0
        a, b = edges(item["A"][1]), edges(item["B"][1])
        aligned = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        shifted = np.corrcoef(a.ravel(), np.roll(b, 6, axis=0).ravel())[0, 1]
        assert aligned > shifted + 0.15, (index, aligned, shifted)


def test_region_masks_weigh_the_supervised_term_inside_them(tiny_config, tmp_path, capsys):
    """train --region-masks (a pair's mask named after its subject, on its T1w's grid) with loss.paired_region:
    paired batches carry the mask and the supervised L1 weighs its pixels more, so the paired term differs from
    the same seeded run without the masks; a mask of no pair is refused in one line before anything is written."""
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", n_subjects=2, resolution=4.0)
    region = data["t1"][0].parent / "sub-01_lesions.nii.gz"  # the brain mask stands in for a lesion mask
    region.write_bytes(data["mask"][0].read_bytes())
    config = tiny_config(loss={"paired_region": 20.0}, data={"paired_fraction": 1.0},
                         train={"iterations": 2, "epoch_length": 2})
    paired = {}
    for name, masks in (("with", ["--region-masks", str(region)]), ("without", [])):
        code = cli.main(["train", "--t1", *map(str, data["t1"]), "--t2", *map(str, data["t2"]), "--out",
                         str(tmp_path / name), "--config", str(config), "--paired", "--no-progress", *masks])
        assert code == 0
        history = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["history"]
        paired[name] = [value for _, value in history["paired_B"]]
    assert len(paired["with"]) == 2 and all(value > 0 for value in paired["with"])
    assert paired["with"] != pytest.approx(paired["without"], rel=1e-3)
    stray = tmp_path / "data" / "sub-03_lesions.nii.gz"
    stray.write_bytes(region.read_bytes())
    capsys.readouterr()
    code = cli.main(["train", "--t1", *map(str, data["t1"]), "--t2", *map(str, data["t2"]), "--out",
                     str(tmp_path / "stray"), "--config", str(config), "--paired", "--no-progress",
                     "--region-masks", str(stray)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(stray) in err[0] and "matches no T1w/T2w pair" in err[0]
    assert not (tmp_path / "stray").exists()


def test_paired_focus_trains_with_the_prior_map_even_when_its_pull_is_off(shifted_pair, tiny_config, tmp_path):
    """loss.paired_focus weights the supervised L1 by where the contrast prior's map misses the truth, so a run
    builds the priors for it even with loss.prior 0 (whose pull then stays 0) and steps on the focused term."""
    data, _, _ = shifted_pair
    config = tiny_config(loss={"prior": 0.0, "paired_focus": 5.0}, data={"paired_fraction": 1.0},
                         train={"iterations": 3, "epoch_length": 3})
    trainer = train(data["t1"][:2], data["t2"][:2], tmp_path / "run", config=config, progress_bar=False, paired=True)
    assert set(trainer.priors) == {"AB", "BA"} and trainer.loss.paired_focus == 5.0
    history = trainer.state.history
    assert all(value == 0 for _, value in history["prior_B"])
    assert len(history["paired_B"]) == 3 and all(value > 0 for _, value in history["paired_B"])


def test_a_region_mask_moves_with_its_registered_t1w_and_one_off_its_grid_is_refused_first(
        shifted_pair, tiny_config, tmp_path, capsys):
    """register(t1_region=...) resamples a T1w's mask with the T1w when the T1w is the scan that moves (the T2w
    has the thicker slices): the moved mask lands on the T2w's grid over the unshifted truth. train --register
    --region-masks trains that pair with the moved mask; a mask off its T1w's grid is refused in one line naming
    it before the run folder is written."""
    data = shifted_pair[0]
    t1, brain, t2 = (nib.load(data[key][0]) for key in ("t1", "mask", "t2"))
    folder = tmp_path / "data"
    folder.mkdir()
    shift = (2.0, -1.5, 1.0)  # voxels of 2 mm
    nib.save(nib.Nifti1Image(ndimage.shift(np.asarray(t1.dataobj, np.float32), shift, order=1), t1.affine),
             folder / "subject_T1w.nii.gz")
    truth = np.asarray(brain.dataobj) > 0
    nib.save(nib.Nifti1Image(ndimage.shift(truth.astype(np.uint8), shift, order=0), t1.affine),
             folder / "subject_lesions.nii.gz")
    thick = t2.affine.copy()
    thick[:3, 2] *= 2  # every other slice: 4 mm
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj, np.float32)[:, :, ::2], thick), folder / "subject_T2w.nii.gz")
    t1_file, mask_file, t2_file = (folder / f"subject_{name}.nii.gz" for name in ("T1w", "lesions", "T2w"))

    done = register(t1_file, t2_file, tmp_path / "pairs", t1_region=mask_file)
    assert done.moved == "t1" and done.t1_region == tmp_path / "pairs" / "subject_lesions_space-T2w.nii.gz"
    moved = nib.load(done.t1_region)
    np.testing.assert_allclose(moved.affine, thick, atol=1e-3)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    on_thick = truth[:, :, ::2]
    before = dice(np.asarray(nib.load(mask_file).dataobj)[:, :, ::2] > 0, on_thick)
    after = dice(np.asarray(moved.dataobj) > 0.5, on_thick)
    assert after > 0.95 and 1 - after < 0.5 * (1 - before), (before, after)  # the mismatch more than halved
    assert json.loads((tmp_path / "pairs" / "subject_registration.json").read_text())["t1_region"] == str(moved.get_filename())

    config = tiny_config(loss={"paired_region": 5.0}, data={"paired_fraction": 1.0},
                         train={"iterations": 1, "epoch_length": 1})
    trainer = train([t1_file], [t2_file], tmp_path / "run", config=config, progress_bar=False, paired=True,
                    register=True, regions=[mask_file])
    pair, = trainer.state.dataloader.dataset.pairs
    assert pair.region is not None and pair.region.any()
    assert (tmp_path / "run" / "pairs" / "subject_lesions_space-T2w.nii.gz").is_file()

    off_grid = folder / "other" / "subject_lesions.nii.gz"
    off_grid.parent.mkdir()
    nib.save(nib.Nifti1Image(truth[:-2].astype(np.uint8), t1.affine), off_grid)
    for name in ("T1w", "T2w"):
        (off_grid.parent / f"subject_{name}.nii.gz").symlink_to(folder / f"subject_{name}.nii.gz")
    capsys.readouterr()
    code = cli.main(["train", "--t1", str(off_grid.parent / "subject_T1w.nii.gz"), "--t2",
                     str(off_grid.parent / "subject_T2w.nii.gz"), "--out", str(tmp_path / "refused"), "--config",
                     str(config), "--register", "--no-progress", "--region-masks", str(off_grid)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(off_grid) in err[0] and "is not on the grid of" in err[0]
    assert not (tmp_path / "refused").exists()
