"""What training and inference share at run time: the device, the mixed-precision policy and reading
checkpoints. Imports nothing of the package but its configuration and errors, so the engine and inference
can both depend on it without a cycle.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import is_amp_choice
from .errors import InputError, ModelError


#: slabs per forward pass in translation when none is given, by device type: a GPU's slab loop is launch-bound at
#: small batches (bench_speed converts at 64 there); on 2 CPU cores 8 was as fast as 4, 16 or 32 (docs/benchmarks.md)
INFERENCE_BATCH = {"cuda": 64, "cpu": 8}


def inference_batch_size(device: torch.device, batch_size: int | None = None) -> int:
    """``batch_size`` when given, else :data:`INFERENCE_BATCH` for ``device``'s type (the CPU's for any other type).

    Raises:
        ModelError: ``batch_size`` below 1.
    """
    if batch_size is None:
        return INFERENCE_BATCH.get(device.type, INFERENCE_BATCH["cpu"])
    if batch_size < 1:
        raise ModelError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present (this torchrun process's ``LOCAL_RANK`` GPU), else ``cpu``;
    anything else as given.

    Raises:
        ModelError: a CUDA device was asked for and there is none.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: no CUDA GPU is available here")
    return device


@dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: autocast to ``dtype`` on ``device_type`` (``dtype`` None = full precision).

    fp16 needs a gradient scaler in training (:meth:`grad_scaler`); bf16 and full precision do not.
    """

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        """A fresh context manager: ``torch.autocast`` for this policy, or a no-op."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A new ``GradScaler`` for fp16, ``None`` otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    def describe(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def for_inference(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` (owned by the caller, for inference only) as this policy runs it fastest: on the CPU under
        bf16 its parameters are cast to bf16 once, to be fed bf16 inputs under :meth:`autocast` (what
        :class:`~mri_translate.inference.SlabInferer` does): for the plain generator bit for bit what bf16
        autocast of the fp32 weights gives, about 25 % faster on 2 cores, since no pass casts every weight again.
        Buffers (e.g. a prior-residual generator's quantile tables) stay float32. Otherwise unchanged."""
        if self.device_type == "cpu" and self.dtype == torch.bfloat16:
            for parameter in network.parameters():
                parameter.data = parameter.data.to(torch.bfloat16)
        return network


def precision_for(device: torch.device, amp: bool | str = True) -> Precision:
    """The mixed-precision policy for ``device`` and a ``train.amp`` value (see
    :data:`~mri_translate.config.AMP_CHOICES`): ``True`` means bf16 on a GPU that supports it (fp16 on one that
    does not) and on a CPU that computes bf16 natively (:func:`cpu_has_bf16`), full precision on other CPUs.
    Training and translation share it.

    Raises:
        ModelError: an unknown ``amp`` value.
    """
    if not is_amp_choice(amp):
        raise ModelError(f"amp must be one of true, false, bf16, fp16; got {amp!r}")
    if amp is True and device.type == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif amp is True:
        amp = "bf16" if device.type == "cpu" and cpu_has_bf16() else False
    if amp is False:
        return Precision(device.type)
    return Precision(device.type, torch.bfloat16 if amp == "bf16" else torch.float16)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, from ``/proc/cpuinfo``; ``False`` where
    that file is missing): there oneDNN runs a bf16-autocast convolution about 2.5x faster than fp32, and a batch
    of 8 training steps about 1.8x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def read_checkpoint(path, device="cpu") -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or foreign files.

    Raises:
        InputError: no such file. ModelError: not a loadable mri-translate checkpoint or model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: not a loadable mri-translate checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict) or "G_AB" not in state or "config" not in state:
        raise ModelError(f"{path}: not an mri-translate checkpoint (no G_AB weights or config inside)")
    return state
