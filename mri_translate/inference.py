"""Translate volumes with a trained generator: :class:`Translator` takes a volume and returns the
translated volume in the input's exact geometry.

``volume (1, X, Y, Z)`` -> RAS -> normalise to [-1, 1] -> 2.5D slabs along the through-plane axis ->
generator (batched, ``inference_mode``, AMP on GPU) -> average each slice's k predictions -> map
intensities to the target domain's training range -> original orientation and affine.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch
from monai.data import MetaTensor

from .bundle import DIRECTIONS, TEMPLATE
from .data import prepare_volume
from .engine import read_checkpoint, resolve_device
from .errors import InputError, ModelError
from .io import load_volume
from .networks import ModifiedUNet
from .slabs import slabs_to_volume
from .transforms import RobustNormalize, denormalize, from_canonical

DEFAULT_MODEL = TEMPLATE / "models" / "model.pt"


def resolve_model_path(model=None) -> Path:
    """A run directory (its ``models/model.pt``, else ``checkpoint.pt``), a ``.pt`` file, or ``None`` for the
    model shipped in the bundle template."""
    if model is None:
        return DEFAULT_MODEL
    path = Path(model)
    if path.is_dir():
        for candidate in (path / "models" / "model.pt", path / "checkpoint.pt"):
            if candidate.is_file():
                return candidate
        raise InputError(path, "run directory has neither models/model.pt nor checkpoint.pt")
    return path


def sha256(path) -> str:
    """Hex SHA-256 of a file, or of the sorted files of a folder (DICOM series)."""
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class Translator:
    """Volume in, translated volume out.

    >>> translator = Translator.from_run("runs/my_run", direction="t1-to-t2")   # doctest: +SKIP
    >>> t2w = translator(load_volume("sub-01_T1w.nii.gz"))                        # doctest: +SKIP

    Args:
        generator: a ``(B, k, H, W) -> (B, k, H, W)`` network in [-1, 1].
        k: slices per slab.
        target_range: ``(low, high)`` intensities that -1 and +1 map back to.
        device: torch device.
        batch_size: slabs per forward pass.
        amp: autocast on GPU (bf16 where supported, else fp16).
        direction: ``t1-to-t2`` or ``t2-to-t1`` (recorded in sidecars).
        model_path: the file the weights came from (its checksum goes into sidecars).
        axis: RAS axis to slice along (0 sagittal, 1 coronal, 2 axial); ``None`` = through-plane axis.
    """

    def __init__(self, generator: torch.nn.Module, k: int, target_range, device="cpu", batch_size: int = 8,
                 amp: bool = True, direction: str = "t1-to-t2", model_path: Path | None = None,
                 axis: int | None = None):
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.k, self.target_range, self.batch_size = k, tuple(target_range), batch_size
        self.amp = amp and self.device.type == "cuda"
        self.direction, self.model_path, self.axis = direction, model_path, axis
        self.normalize = RobustNormalize()

    @classmethod
    def from_run(cls, model=None, direction: str = "t1-to-t2", device: str = "auto", batch_size: int = 8,
                 amp: bool = True, axis: int | None = None) -> Translator:
        """Load a generator from a run directory, ``model.pt``/``checkpoint.pt`` (``weights_only=True``), or
        the shipped default model when ``model`` is ``None``.

        Raises:
            InputError: no such file. ModelError: not an mri-translate model, or unknown direction.
        """
        if direction not in DIRECTIONS:
            raise ModelError(f"unknown direction '{direction}' (expected {' or '.join(DIRECTIONS)})")
        path = resolve_model_path(model)
        state = read_checkpoint(path)
        config = state["config"].get("model", {})
        k = int(config.get("k", 3))
        generator = ModifiedUNet(k, tuple(config.get("channels", (32, 64, 128, 256))), int(config.get("res_units", 2)))
        try:
            generator.load_state_dict(state[DIRECTIONS[direction]])
        except RuntimeError as err:
            raise ModelError(f"{path}: generator weights do not fit its configuration "
                             f"({str(err).splitlines()[0]})") from err
        target = "B" if direction == "t1-to-t2" else "A"
        target_range = state.get("normalization", {}).get(target, (0.0, 1.0))
        return cls(generator, k, target_range, resolve_device(device), batch_size, amp, direction, path, axis)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @torch.inference_mode()
    def predict_slabs(self, slabs: torch.Tensor) -> torch.Tensor:
        """Args: slabs ``(N, k, H, W)`` in [-1, 1], H and W multiples of 16. Returns: ``(N, k, H, W)`` float32
        on the CPU."""
        if slabs.shape[1] != self.k:
            raise ModelError(f"model expects k={self.k} slices per slab, got {slabs.shape[1]}")
        out = torch.empty(slabs.shape, dtype=torch.float32)
        for start in range(0, len(slabs), self.batch_size):
            batch = slabs[start: start + self.batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                out[start: start + len(batch)] = self.generator(batch).float().cpu()
        return out

    def translate_normalized(self, volume: MetaTensor) -> tuple[MetaTensor, MetaTensor]:
        """Canonical normalised input and translated output, both ``(1, X, Y, Z)`` in RAS and in [-1, 1]."""
        slabs, layout, canonical = prepare_volume(volume, self.k, self.normalize, self.axis)
        out = slabs_to_volume(self.predict_slabs(slabs), layout)
        return canonical, MetaTensor(out[None], meta=dict(canonical.meta))

    def __call__(self, volume) -> MetaTensor:
        """Translate one volume.

        Args:
            volume: a ``MetaTensor`` ``(1, X, Y, Z)`` from :func:`~mri_translate.io.load_volume`, or a path.

        Returns:
            ``MetaTensor`` ``(1, X, Y, Z)`` float32 in the input's voxel order with its ``affine``; intensities
            in the target domain's training range; ``meta["intensity_range"]`` is the input's normalisation.
        """
        if not isinstance(volume, MetaTensor):
            volume = load_volume(volume)
        _, out = self.translate_normalized(volume)
        out = MetaTensor(denormalize(out.as_tensor(), self.target_range), meta=out.meta)
        return from_canonical(out, volume.meta["original_axcodes"], volume.meta["original_affine"])

    def model_sha256(self) -> str | None:
        """Checksum of the model file this translator was loaded from."""
        return sha256(self.model_path) if self.model_path else None
