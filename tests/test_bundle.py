"""A run directory is a MONAI bundle: metadata complete per MONAI's bundle specification, and MONAI's own
``python -m monai.bundle`` commands (verify_net_in_out, ckpt_export, run) work on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mri_translate.model_file import TEMPLATE
from mri_translate.networks import ModifiedUNet
from mri_translate.train import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: The fields MONAI's bundle specification (docs "MONAI Bundle Specification", metadata.json) requires.
REQUIRED_METADATA = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                     "required_packages_version", "task", "description", "authors", "copyright",
                     "network_data_format")
REQUIRED_TENSOR_FIELDS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                          "is_patch_data", "channel_def")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def tiny_run(out, synthetic_4mm, tiny_config, **sections):
    sections.setdefault("train", {}).update(iterations=4)
    result = train([synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]], out, config=tiny_config(**sections),
                   progress_bar=False)
    return Path(getattr(result, "run_dir", result))  # train returns the trainer (or, before, the run dir)


@pytest.fixture
def run_dir(tmp_path, synthetic_4mm, tiny_config):
    return tiny_run(tmp_path / "run", synthetic_4mm, tiny_config)


def monai_bundle(*args, cwd):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_metadata_has_every_field_of_the_bundle_spec(run_dir):
    import monai
    import numpy

    metadata = json.loads((run_dir / "configs" / "metadata.json").read_text())
    for key in REQUIRED_METADATA:
        assert key in metadata and metadata[key] not in (None, "", {}), key
    assert metadata["version"] in metadata["changelog"]
    assert isinstance(metadata["required_packages_version"], dict) and "nibabel" in metadata["required_packages_version"]
    # the versions stated are the ones the run was made with
    assert metadata["monai_version"] == monai.__version__
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == numpy.__version__
    for part, name in (("inputs", "image"), ("outputs", "pred")):
        entry = metadata["network_data_format"][part][name]
        for key in REQUIRED_TENSOR_FIELDS:
            assert key in entry, f"{part}.{name}.{key}"
        assert entry["num_channels"] == 3
        assert entry["spatial_shape"] == [32, 32]  # the crop
        assert entry["value_range"] == [-1, 1] and entry["dtype"] == "float32" and entry["modality"] == "MR"
        assert len(entry["channel_def"]) == 3
    # one home for the model's settings: the bundle rebuilds the generator from models/model.pt
    inference = json.loads((run_dir / "configs" / "inference.json").read_text())
    assert "load_generator(@model_state" in inference["network_def"]
    assert not any(key in json.dumps(inference) for key in ('"channels"', '"res_units"', '"k": 3'))


def test_metadata_follows_k(tmp_path, synthetic_4mm, tiny_config):
    out = tiny_run(tmp_path / "k5", synthetic_4mm, tiny_config, model={"k": 5}, data={"crop": 48})
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    for part, name in (("inputs", "image"), ("outputs", "pred")):
        entry = metadata["network_data_format"][part][name]
        assert entry["num_channels"] == 5 and entry["spatial_shape"] == [48, 48]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(out / "configs" / "inference.json")
    parser["bundle_root"] = str(out)
    assert parser.get_parsed_content("network_def").k == 5 and parser.get_parsed_content("translator").k == 5


def test_metadata_channel_def_follows_k(tmp_path, synthetic_4mm, tiny_config):
    out = tiny_run(tmp_path / "k5", synthetic_4mm, tiny_config, model={"k": 5})
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    for part, name in (("inputs", "image"), ("outputs", "pred")):
        channel_def = metadata["network_data_format"][part][name]["channel_def"]
        assert list(channel_def) == ["0", "1", "2", "3", "4"] and channel_def["2"].endswith("slice i")


def test_verify_net_in_out_with_the_metadata_as_written(run_dir, monkeypatch):
    from monai.bundle import verify_net_in_out

    monkeypatch.chdir(run_dir)
    verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json",
                      config_file="configs/inference.json")


def test_verify_net_in_out_once_the_output_is_named_pred(run_dir):
    """``python -m monai.bundle verify_net_in_out`` passes when ``outputs.pred`` exists (here given as an
    override on the command line; the fix belongs in the template's metadata.json)."""
    pred = json.dumps({"num_channels": 3, "dtype": "float32"})
    result = monai_bundle("verify_net_in_out", "network_def", "--meta_file", run_dir / "configs" / "metadata.json",
                          "--config_file", run_dir / "configs" / "inference.json",
                          "--_meta_#network_data_format#outputs#pred", pred, cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified with no error" in result.stdout + result.stderr


def test_ckpt_export_gives_the_same_generator_as_torchscript(run_dir, tmp_path):
    exported = tmp_path / "g.ts"
    result = monai_bundle("ckpt_export", "network_def", "--filepath", exported,
                          "--meta_file", run_dir / "configs" / "metadata.json",
                          "--config_file", run_dir / "configs" / "inference.json",
                          "--ckpt_file", run_dir / "models" / "model.pt", "--key_in_ckpt", "G_AB", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert exported.is_file()

    scripted = torch.jit.load(str(exported), map_location="cpu").eval()
    model = torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    reference = ModifiedUNet(3, (8, 16), 1)
    reference.load_state_dict(model["G_AB"])
    reference.eval()
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), scripted(x)
    assert got.shape == (1, 3, 48, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # and it is G_AB, not G_BA
    other = ModifiedUNet(3, (8, 16), 1)
    other.load_state_dict(model["G_BA"])
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), got, atol=1e-5)


def test_run_bundle_train_json_trains_on_the_recorded_sources(run_dir, tmp_path, monkeypatch):
    from monai.bundle import run as bundle_run

    import mri_translate.train as train_module

    seen = {}

    def fake_train(t1, t2, out, **kwargs):
        seen.update(t1=[str(p) for p in t1], t2=[str(p) for p in t2])
        return Path(out)

    def no_synthetic(*args, **kwargs):
        raise AssertionError("re-running the run bundle generated synthetic data")

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr("mri_translate.synthetic.write_dataset", no_synthetic)
    recorded = json.loads((run_dir / "configs" / "train.json").read_text())["sources"]
    bundle_run(config_file=str(run_dir / "configs" / "train.json"), bundle_root=str(tmp_path / "again"),
               meta_file=str(run_dir / "configs" / "metadata.json"))
    assert seen == recorded


def test_train_json_is_strict_json_and_keeps_a_constant_prior(tmp_path, synthetic_4mm, tiny_config):
    """``prior_fraction: .inf`` (the prior at full weight all run) is written as "inf", not as the ``Infinity``
    that strict JSON readers refuse, and reads back as infinity."""
    from mri_translate.config import RunConfig

    run = tiny_run(tmp_path / "run", synthetic_4mm, tiny_config, loss={"prior_fraction": float("inf")})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    recorded = json.loads((run / "configs" / "train.json").read_text(), parse_constant=refuse)
    assert recorded["config"]["loss"]["prior_fraction"] == "inf"
    assert RunConfig.from_dict(recorded["config"]).loss.prior_fraction == float("inf")
    json.loads((run / "configs" / "metadata.json").read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_monai_bundle_run_trains_into_a_run_bundle(tmp_path):
    """``python -m monai.bundle run`` on the template's train.json, a tiny configuration given with
    ``--config`` (fire parses the JSON text into a dict), synthetic data generated since dataset_dir is null."""
    root = tmp_path / "bundle root"
    root.mkdir()
    config = {"model": {"channels": [8, 16], "res_units": 1, "disc_channels": 8, "disc_layers": 2},
              "data": {"crop": 32},
              "train": {"epoch_length": 3, "checkpoint_every": 3, "progress_every": 3}}
    result = monai_bundle("run", "--config_file", TEMPLATE / "configs" / "train.json",
                          "--meta_file", TEMPLATE / "configs" / "metadata.json", "--bundle_root", root,
                          "--max_epochs", "1", "--device", "cpu", "--config", json.dumps(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "runs" / "train"
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "models/model.pt",
                 "docs/README.md", "checkpoint.pt", "progress.gif", "progress.png", "losses.png"):
        assert (out / name).is_file(), name
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3
    assert state["config"]["model"]["channels"] == [8, 16] and state["config"]["train"]["epoch_length"] == 3
    written = json.loads((out / "configs" / "train.json").read_text())
    assert written["config"]["data"]["crop"] == 32
    assert all("synthetic" in p for p in written["sources"]["t1"] + written["sources"]["t2"])
