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
    error = nib.load(str(tmp_path / "out_cycle-error.nii.gz"))
    reference = nib.load(str(source))
    assert error.shape == reference.shape
    np.testing.assert_allclose(error.affine, reference.affine, atol=1e-4)

    # recomputed independently: x normalised, F(G(x)) with the two generators alone, |x - F(G(x))| voxel by voxel
    from mri_translate.inference import Translator
    from mri_translate.io import load_volume
    from mri_translate.metrics import auto_mask
    from mri_translate.transforms import from_canonical

    volume = load_volume(source)
    forward = Translator.from_run(trained_run, "t1-to-t2", device="cpu")
    backward = Translator.from_run(trained_run, "t2-to-t1", device="cpu")
    x, y = forward.translate_normalized(volume)
    cycled = backward.run_network(forward.run_network(x))
    expected = (x - cycled).abs()
    np.testing.assert_allclose(error.get_fdata(), from_canonical(expected, volume.meta["original_axcodes"])[0].numpy(),
                               atol=1e-5)
    mask = auto_mask(((x[0] + 1) / 2).numpy())
    assert qc["CycleErrorMAE"] == pytest.approx(float(expected[0].numpy()[mask].mean()), rel=1e-5)
    assert qc["CycleErrorMAE"] > 1e-3           # an 8-iteration model is far from a perfect cycle
    # the distance of the output's histogram to the target domain's stored one recomputes exactly
    from mri_translate.metrics import histogram_distance_to

    target = forward.target_histogram
    output = ((y[0] + 1) / 2).numpy()
    assert qc["HistogramDistance"] == pytest.approx(histogram_distance_to(output, mask, target), rel=1e-5)
    assert qc["HistogramDistance"] > 0
    assert qc["InterSliceConsistency"] > 0


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
