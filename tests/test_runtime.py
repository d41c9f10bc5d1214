"""Tests of mri_translate.runtime (device, mixed-precision policy) and of the layering it makes possible:
the maths and inference import no training infrastructure."""

import re
import subprocess
import sys

import pytest
import torch

from mri_translate.config import RunConfig
from mri_translate.errors import InputError, ModelError
from mri_translate.runtime import inference_batch_size, precision_for


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_the_cpu_is_bf16_where_the_cpu_computes_it_else_off_unless_a_dtype_is_forced(native, monkeypatch):
    monkeypatch.setattr("mri_translate.runtime.cpu_has_bf16", lambda: native)
    assert precision_for(torch.device("cpu"), True).dtype == (torch.bfloat16 if native else None)
    assert precision_for(torch.device("cpu"), True).grad_scaler() is None
    assert not precision_for(torch.device("cpu"), False).enabled
    forced = precision_for(torch.device("cpu"), "fp16")
    assert forced.dtype == torch.float16 and isinstance(forced.grad_scaler(), torch.amp.GradScaler)
    assert precision_for(torch.device("cpu"), "bf16").grad_scaler() is None


@pytest.mark.parametrize("bf16, dtype, scaled", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_a_gpu_without_bf16_gets_fp16_and_a_grad_scaler(bf16, dtype, scaled, monkeypatch):
    """T4 / V100: ``amp: true`` falls back to fp16, which needs a GradScaler (bf16 does not)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    precision = precision_for(torch.device("cuda", 0), True)
    assert precision.dtype == dtype and precision.device_type == "cuda"
    assert (precision.grad_scaler() is not None) == scaled


def test_autocast_runs_in_the_chosen_dtype():
    with precision_for(torch.device("cpu"), "bf16").autocast():
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    with precision_for(torch.device("cpu"), False).autocast():
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32


@pytest.mark.parametrize("value", ["fp32", 1, "yes"])
def test_unknown_amp_values_are_refused(value):
    with pytest.raises(ModelError, match="amp must be"):
        precision_for(torch.device("cpu"), value)
    with pytest.raises(InputError, match="train.amp"):
        RunConfig.from_dict({"train": {"amp": value}})


def loaded_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_inference_imports_no_training_code():
    modules = loaded_modules("import mri_translate.inference")
    # (``import monai`` itself loads ignite and matplotlib when installed: no sign of our layering)
    for training in ("mri_translate.engine", "mri_translate.train", "mri_translate.data",
                     "mri_translate.visualize", "mri_translate.distributed"):
        assert training not in modules, f"import mri_translate.inference loads {training}"


def test_the_cyclegan_maths_imports_no_infrastructure():
    modules = loaded_modules("import mri_translate.cyclegan")
    for infrastructure in ("mri_translate.distributed", "mri_translate.engine", "mri_translate.io",
                           "mri_translate.runtime", "mri_translate.data"):
        assert infrastructure not in modules, f"import mri_translate.cyclegan loads {infrastructure}"


@pytest.mark.parametrize("values, message", [
    ({"data": {"crop": "big"}}, "data.crop must be an integer, got 'big'"),
    ({"data": {"spacing": "fine"}}, "data.spacing must be a number or null, got 'fine'"),
    ({"model": {"channels": [8, "16"]}}, "model.channels must be a list of integers"),
    ({"data": {"flip": 1}}, "data.flip must be true or false, got 1"),
    ({"train": {"iterations": 2.5}}, "train.iterations must be an integer, got 2.5"),
])
def test_configuration_values_of_the_wrong_type_are_named(values, message):
    """A preset's typo fails at once with the key, the expected type and the value, not deep in training."""
    with pytest.raises(InputError, match=re.escape(message)):
        RunConfig.from_dict(values, "preset.yaml")


@pytest.mark.parametrize("values, message", [
    ({"model": {"inverted_weight": 1.0}}, "model.inverted_weight must be in [0, 1) (0: the generator alone), got 1.0"),
    ({"model": {"inverted_weight": -0.1}}, "model.inverted_weight must be in [0, 1)"),
    ({"model": {"inverted_weight": 0.3}, "data": {"standardize": False}},
     "model.inverted_weight needs data.standardize: true"),
    ({"model": {"guided_radius_mm": -1.0}}, "model.guided_radius_mm must be >= 0 (0: off), got -1.0"),
    ({"model": {"guided_radius_mm": 4.0}, "data": {"standardize": False}},
     "model.guided_radius_mm needs data.standardize: true"),
])
def test_configuration_values_that_cannot_work_are_named(values, message):
    with pytest.raises(InputError, match=re.escape(message)):
        RunConfig.from_dict(values, "preset.yaml")


def test_numbers_written_as_text_are_read_as_numbers():
    """YAML reads ``1e-4`` (no dot) as a string; a float field takes it as the number; lists become tuples."""
    config = RunConfig.from_dict({"optim": {"lr": "1e-4"}, "model": {"channels": [8, 16]},
                                  "data": {"spacing": None}, "loss": {"prior_fraction": float("inf")}})
    assert config.optim.lr == 1e-4 and config.model.channels == (8, 16) and config.data.spacing is None


def test_inference_batch_size_is_the_device_s_unless_given():
    assert inference_batch_size(torch.device("cpu")) == 8
    assert inference_batch_size(torch.device("cuda", 1)) == 64  # a device object needs no GPU
    assert inference_batch_size(torch.device("cuda"), 5) == 5
    with pytest.raises(ModelError, match="at least 1, got 0"):
        inference_batch_size(torch.device("cpu"), 0)
