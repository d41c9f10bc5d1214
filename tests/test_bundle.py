"""A run directory is a MONAI bundle: metadata complete per MONAI's bundle specification, and MONAI's own
``python -m monai.bundle`` commands (verify_net_in_out, ckpt_export, run) work on it."""

import json
import os
import re
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


#: The sections of a model zoo bundle's docs/README.md (e.g. its spleen_ct_segmentation bundle), in order.
ZOO_SECTIONS = ("Model Overview", "Data", "Training configuration", "Input/Output", "Performance",
                "MONAI Bundle Commands", "References", "License")
SCHEMA_20240725 = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                   "meta_schema_20240725.json")


def readme_headings(path: Path) -> list[str]:
    return re.findall(r"^#{1,4} +(.+?) *$", path.read_text(), flags=re.M)


def zoo_sections_in_order(headings: list[str]) -> bool:
    positions = [headings.index(name) for name in ZOO_SECTIONS if name in headings]
    return len(positions) == len(ZOO_SECTIONS) and positions == sorted(positions)


def links_leaving(bundle: Path) -> list[str]:
    """Markdown links of the bundle's docs that break once the bundle is zipped on its own: a relative target
    outside the bundle folder, or one that is not there."""
    bad = []
    for page in sorted((bundle / "docs").glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue  # a URL or an anchor
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(bundle.resolve()) or not resolved.exists():
                bad.append(f"{page.name}: {target}")
    return bad


def test_license_is_the_apache_text_at_the_root_and_in_the_bundle():
    """The zoo's CI stops without a LICENSE at the bundle root; the repository's is the one setup.cfg declares."""
    root = TEMPLATE.parents[1]
    assert re.search(r"^license\s*=\s*Apache-2\.0$", (root / "setup.cfg").read_text(), flags=re.M)
    text = (root / "LICENSE").read_text()
    assert (TEMPLATE / "LICENSE").read_text() == text
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    for phrase in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "2. Grant of Copyright License.",
                   "3. Grant of Patent License.", "9. Accepting Warranty or Additional Liability.",
                   "END OF TERMS AND CONDITIONS", "http://www.apache.org/licenses/LICENSE-2.0"):
        assert phrase in text, phrase


def test_template_metadata_is_on_the_schema_with_required_packages_version():
    """meta_schema_20240725 (the one with ``required_packages_version``): its required fields, a symbolic
    spatial shape (the generators take any multiple of 16 from 32 on), and the data type and scores filled. The schema
    itself is a download (and jsonschema not a dependency), so the fields are checked here."""
    metadata = json.loads((TEMPLATE / "configs" / "metadata.json").read_text())
    assert metadata["schema"] == SCHEMA_20240725
    for key in REQUIRED_METADATA:
        assert metadata.get(key) not in (None, "", {}), key
    assert metadata["version"] in metadata["changelog"]
    assert "optional_packages_version" not in metadata  # the older schemas' name
    assert all(isinstance(v, str) and v for v in metadata["required_packages_version"].values())
    assert isinstance(metadata["data_type"], str) and metadata["data_type"]
    metrics = metadata["eval_metrics"]
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    for part, name in (("inputs", "image"), ("outputs", "pred")):
        entry = metadata["network_data_format"][part][name]
        assert set(REQUIRED_TENSOR_FIELDS) <= set(entry), f"{part}.{name}"
        assert entry["spatial_shape"] == ["16*(n+1)", "16*(n+1)"]
    # the scores are the ones the model card and the README state (scripts/bench_quality.py, leave-one-out)
    card = (TEMPLATE / "docs" / "default_model.md").read_text()
    readme = (TEMPLATE / "docs" / "README.md").read_text()
    for key, value in metrics.items():
        assert str(value) in card and f"| {value} |" in readme.replace(" / ", " | "), key


@pytest.mark.parametrize("direction", ["t1-to-t2", "t2-to-t1"])
def test_shipped_generators_take_the_symbolic_spatial_shape(direction, monkeypatch):
    """The zoo's CI checks the template's metadata against the shipped network with MONAI's
    ``verify_net_in_out`` (n = 1 by default: 32 x 32; 16 x 16 leaves the bottom level 1 x 1, which instance norm
    refuses), and n = 2 is 48 x 48, a multiple of 16 that is not one of 32."""
    from monai.bundle import verify_net_in_out

    monkeypatch.chdir(TEMPLATE)
    for n in (1, 2):
        verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json",
                          config_file="configs/inference.json", direction=direction, n=n)


def test_bundle_readme_has_the_zoo_sections_and_no_link_leaves_the_bundle():
    headings = readme_headings(TEMPLATE / "docs" / "README.md")
    assert zoo_sections_in_order(headings), headings
    assert links_leaving(TEMPLATE) == []


def test_shipped_model_states_the_bundle_version():
    import mri_translate

    metadata = json.loads((TEMPLATE / "configs" / "metadata.json").read_text())
    state = torch.load(TEMPLATE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["version"] == metadata["version"] == mri_translate.__version__


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
        assert entry["spatial_shape"] == ["16*(n+1)", "16*(n+1)"]  # multiples of 16 from 32 on, not the crop
        assert entry["value_range"] == [-1, 1] and entry["dtype"] == "float32" and entry["modality"] == "MR"
        assert len(entry["channel_def"]) == 3
    # one home for the model's settings: the bundle rebuilds the generator from models/model.pt
    inference = json.loads((run_dir / "configs" / "inference.json").read_text())
    assert "load_generator(@model_state" in inference["network_def"]
    assert not any(key in json.dumps(inference) for key in ('"channels"', '"res_units"', '"k": 3'))
    assert metadata["eval_metrics"] == {}  # the shipped model's scores are not claimed for this run
    # the zoo's necessary LICENSE at the bundle root; the README's sections, this run's last, no broken link
    assert (run_dir / "LICENSE").read_text() == (TEMPLATE / "LICENSE").read_text()
    headings = readme_headings(run_dir / "docs" / "README.md")
    assert headings[-1] == "This run" and zoo_sections_in_order(headings)
    assert links_leaving(run_dir) == []


def test_metadata_follows_k(tmp_path, synthetic_4mm, tiny_config):
    out = tiny_run(tmp_path / "k5", synthetic_4mm, tiny_config, model={"k": 5}, data={"crop": 48})
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    for part, name in (("inputs", "image"), ("outputs", "pred")):
        entry = metadata["network_data_format"][part][name]
        assert entry["num_channels"] == 5 and entry["spatial_shape"] == ["16*(n+1)", "16*(n+1)"]
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
