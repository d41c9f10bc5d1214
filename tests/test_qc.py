"""convert --qc: reference-free checks in the sidecar and a cycle-error map in the input's geometry."""

import json

import nibabel as nib
import numpy as np
import pytest

from mri_translate.cli import main
from mri_translate.train import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_4mm, torch_single_thread):
    """A tiny trained run: its model.pt carries the domains' intensity histograms."""
    import yaml

    from conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("qc")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_CONFIG))
    return train([synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]], root / "run", config=preset,
                 progress_bar=False).run_dir


def test_model_stores_domain_histograms(trained_run):
    import torch

    state = torch.load(trained_run / "models" / "model.pt", weights_only=True)
    for domain in ("A", "B"):
        histogram = np.asarray(state["normalization"][f"histogram_{domain}"])
        assert histogram.shape == (64,) and histogram.min() >= 0 and histogram.sum() == pytest.approx(1.0)


def test_qc_sidecar_and_cycle_error_map(trained_run, synthetic_4mm, tmp_path, capsys):
    source = synthetic_4mm["t1"][1]
    output = tmp_path / "out.nii.gz"
    assert main(["convert", str(source), str(output), "--model", str(trained_run), "--qc", "--device", "cpu"]) == 0
    qc = json.loads((tmp_path / "out.json").read_text())["QC"]
    assert 0 < qc["CycleErrorMAE"] < 2          # mean |x - F(G(x))| on the [-1, 1] scale
    assert qc["InterSliceConsistency"] > 0
    assert 0 <= qc["HistogramDistance"] <= 1
    error = nib.load(str(tmp_path / "out_cycle-error.nii.gz"))
    reference = nib.load(str(source))
    assert error.shape == reference.shape
    np.testing.assert_allclose(error.affine, reference.affine, atol=1e-4)
    values = error.get_fdata()
    assert values.min() >= 0 and values.max() <= 2 and values.max() > 0


def test_without_qc_no_map_and_no_qc_entry(trained_run, synthetic_4mm, tmp_path):
    output = tmp_path / "plain.nii.gz"
    assert main(["convert", str(synthetic_4mm["t1"][1]), str(output), "--model", str(trained_run),
                 "--device", "cpu"]) == 0
    assert "QC" not in json.loads((tmp_path / "plain.json").read_text())
    assert not (tmp_path / "plain_cycle-error.nii.gz").exists()


def test_gpu_out_of_memory_is_one_line_naming_the_flag(monkeypatch, synthetic_4mm, trained_run, tmp_path, capsys):
    import torch

    from mri_translate import convert

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(convert, "convert_file", out_of_memory)
    status = main(["convert", str(synthetic_4mm["t1"][1]), str(tmp_path / "x.nii.gz"), "--model", str(trained_run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--batch-size" in err[0] and "out of memory" in err[0]
