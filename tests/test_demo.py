"""mri-translate demo: the README's main job, end to end (with a short training)."""

import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]


def test_demo_writes_every_output_and_reports_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    status, stdout, _ = run_cli(capsys, "demo", "--out", out, "--iterations", 20)
    assert status == 0
    for name in ("run/models/model.pt", "run/progress.gif", "run/losses.png", "run/configs/metadata.json"):
        assert (out / name).is_file(), name
    truth = nib.load(str(out / "data/sub-05/anat/sub-05_T2w.nii.gz"))
    for which in ("demo", "default"):
        image = nib.load(str(out / f"sub-05_desc-synthetic_T2w_{which}.nii.gz"))
        assert image.shape == truth.shape and np.allclose(image.affine, truth.affine, atol=1e-4)
        assert json.loads((out / f"sub-05_desc-synthetic_T2w_{which}.json").read_text())["Direction"] == "t1-to-t2"
        assert iio.imread(out / f"sub-05_sweep_{which}.gif", index=None).shape[0] > 10
    scores = [line for line in stdout.splitlines() if line.startswith("inside the brain")]
    assert len(scores) == 3 and all("dB" in line for line in scores)


def test_demo_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    status, _, stderr = run_cli(capsys, "demo", "--out", tmp_path / "demo")
    assert status == 2 and "--overwrite" in stderr
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"
