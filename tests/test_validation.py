"""train --val: validation pairs scored in both directions during training, and the best checkpoint exported."""

import copy

import nibabel as nib
import numpy as np
import pytest
import torch

from mri_translate import cli
from mri_translate.errors import InputError
from mri_translate.train import train
from mri_translate.validation import ValidationPair, Validator

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def synthetic_4mm(tmp_path_factory) -> dict:
    """Three synthetic subjects at 4 mm: train on T1w 0 and T2w 1, validate on subject 2 (never trained on)."""
    from mri_translate.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("validation"), n_subjects=3, resolution=4.0)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_best_validation_score_chooses_the_exported_model(synthetic_4mm, tiny_config, tmp_path, monkeypatch):
    """Constructed scores 10, 14, 12, 11 dB at iterations 2, 4, 6, 8: models/model.pt holds the weights of
    iteration 4, the checkpoint remembers that choice, and validation.csv lists all four."""
    scores, snapshots = iter([10.0, 14.0, 12.0, 11.0]), {}

    def scripted(self, nets, export_state, device):
        score = next(scores)
        snapshots[score] = copy.deepcopy(nets["G_AB"].state_dict())
        return {"score": score, "psnr_t1-to-t2": score, "ssim_t1-to-t2": 0.5, "psnr_t2-to-t1": score,
                "ssim_t2-to-t1": 0.5, "pairs": [{"pair": "p", "direction": "t1-to-t2", "psnr": score, "ssim": 0.5}]}

    monkeypatch.setattr(Validator, "__call__", scripted)
    pair = (synthetic_4mm["t1"][2], synthetic_4mm["t2"][2])
    config = tiny_config(train={"val_every": 2, "checkpoint_every": 2})
    out = train([synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]], tmp_path / "run", config=config,
                progress_bar=False, val=[pair]).run_dir
    model = load(out / "models" / "model.pt")
    assert model["iteration"] == 4
    assert all(torch.equal(model["G_AB"][k], v) for k, v in snapshots[14.0].items())
    assert not all(torch.equal(model["G_AB"][k], v) for k, v in snapshots[11.0].items())
    assert load(out / "checkpoint.pt")["best"] == {"iteration": 4, "score": 14.0}
    rows = (out / "validation.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,pair,direction") and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6", "8"]


@pytest.mark.slow
def test_validation_scores_real_translations_in_both_directions(synthetic_4mm, tiny_config, tmp_path, caplog):
    """Through the CLI on a synthetic co-registered pair: a log line per validation, in-brain PSNR/SSIM for
    both directions in validation.csv, and the exported model is the best-scoring checkpoint."""
    pair = [str(synthetic_4mm["t1"][2]), str(synthetic_4mm["t2"][2])]
    config = tiny_config(train={"val_every": 4})
    out = tmp_path / "run"
    code = cli.main(["train", "--t1", str(synthetic_4mm["t1"][0]), "--t2", str(synthetic_4mm["t2"][1]), "--out",
                     str(out), "--config", str(config), "--val", *pair, "--no-progress"])
    assert code == 0
    rows = [line.split(",") for line in (out / "validation.csv").read_text().splitlines()[1:]]
    assert {(r[0], r[2]) for r in rows} == {("4", "t1-to-t2"), ("4", "t2-to-t1"), ("8", "t1-to-t2"), ("8", "t2-to-t1")}
    assert all(5 < float(r[3]) < 60 and -1 <= float(r[4]) <= 1 for r in rows)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation at iteration")]
    assert len(lines) == 2 and all("psnr_t1-to-t2=" in line and "ssim_t2-to-t1=" in line for line in lines)
    best = load(out / "checkpoint.pt")["best"]
    assert load(out / "models" / "model.pt")["iteration"] == best["iteration"]


def test_a_validation_pair_on_two_grids_is_refused_before_training(synthetic_4mm, tiny_config, tmp_path):
    other = tmp_path / "shifted_T2w.nii.gz"
    image = nib.load(synthetic_4mm["t2"][2])
    affine = image.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), other)
    with pytest.raises(InputError, match="shifted_T2w.nii.gz: is not on the grid of .*affines differ.*--register"):
        train([synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]], tmp_path / "run", config=tiny_config(),
              progress_bar=False, val=[(synthetic_4mm["t1"][2], other)])
    assert not (tmp_path / "run").exists()


def test_validation_pair_masks_come_from_each_reference(synthetic_4mm):
    pair = ValidationPair.load(synthetic_4mm["t1"][2], synthetic_4mm["t2"][2])
    assert pair.masks["t1"].shape == pair.volumes["t1"].shape[1:] and pair.masks["t2"].any()
