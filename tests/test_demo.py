"""mri-translate demo: the README's main job, end to end (with a short training)."""

import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]


def test_demo_writes_every_output_and_reports_scores(tmp_path, capsys):
    """The demo's subjects carry deep grey nuclei and lesions (with their masks); it ends with one table (baseline,
    demo model, shipped model: in the brain and in the lesions) and one picture (input | demo model | shipped model
    | truth, each panel at least 256 px), and warns about nothing."""
    out = tmp_path / "demo"
    status, stdout, stderr = run_cli(capsys, "demo", "--out", out, "--iterations", 20)
    assert status == 0
    assert "warning" not in stderr.lower(), stderr
    assert (out / "data/sub-05/anat/sub-05_lesions.nii.gz").is_file()
    for name in ("run/models/model.pt", "run/progress.gif", "run/losses.png", "run/configs/metadata.json"):
        assert (out / name).is_file(), name
    truth = nib.load(str(out / "data/sub-05/anat/sub-05_T2w.nii.gz"))
    for which in ("demo", "default"):
        image = nib.load(str(out / f"sub-05_desc-synthetic_T2w_{which}.nii.gz"))
        assert image.shape == truth.shape and np.allclose(image.affine, truth.affine, atol=1e-4)
        assert json.loads((out / f"sub-05_desc-synthetic_T2w_{which}.json").read_text())["Direction"] == "t1-to-t2"
        assert iio.imread(out / f"sub-05_sweep_{which}.gif", index=None).shape[0] > 10
    table = (out / "scores.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| sub-05")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| no-learning baseline (inverted T1w, histogram-matched)", "| this demo's model (20 iterations)",
        "| the shipped model"]
    for row in rows:  # brain PSNR, SSIM, lesion PSNR, SSIM, contrast ratio: all numbers
        values = [float(cell) for cell in row.strip(" |").split(" | ")[1:]]
        assert len(values) == 5 and 5 < values[0] < 60 and 0 < values[4] < 3
    assert all(row in stdout for row in rows)
    picture = iio.imread(out / "sub-05_comparison.png")
    assert picture.shape[1] >= 4 * 256 and picture.shape[0] >= 256


def test_demo_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    status, _, stderr = run_cli(capsys, "demo", "--out", tmp_path / "demo")
    assert status == 2 and "--overwrite" in stderr
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"
