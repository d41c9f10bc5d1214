"""What a model file is: its two directions and contrasts, where the shipped one lies, how one direction's
state is read out of it, and its checksum. A leaf: it imports nothing of the package but its errors, so every
layer (bundle, inference, convert, dicom, bids) can depend on it without a cycle."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InputError

#: the MONAI bundle template the run directories are written from, holding the shipped model
TEMPLATE = Path(__file__).resolve().parents[1] / "bundles" / "mri_cyclegan"
#: the model shipped in the bundle template
DEFAULT_MODEL = TEMPLATE / "models" / "model.pt"
MODEL_FORMAT = "mri-translate-generators/1"
#: Which generator translates in which direction (A = T1w, B = T2w).
DIRECTIONS = {"t1-to-t2": "G_AB", "t2-to-t1": "G_BA"}
#: (source, target) BIDS suffixes of each direction
CONTRASTS = {"t1-to-t2": ("T1w", "T2w"), "t2-to-t1": ("T2w", "T1w")}
#: key of a model file's members: ``{direction: [state, ...]}``, each state one direction of another model (its
#: generator and what it translates with), whose translations are averaged in (bundle.average_models)
MEMBERS_KEY = "members"


def direction_state(state: dict, direction: str) -> dict:
    """What a model file holds for one direction: its top level, with ``directions[direction]`` (written by
    :func:`~mri_translate.bundle.compose_model`: that direction's configuration and intensity mapping) laid
    over it."""
    overlay = (state.get("directions") or {}).get(direction, {})
    return {**{k: v for k, v in state.items() if k != "directions"}, **overlay}


def resolve_model_path(model=None) -> Path:
    """A run directory (its ``models/model.pt``, else ``checkpoint.pt``), a ``.pt`` file, or ``None`` for the
    model shipped in the bundle template.

    Raises:
        InputError: a run directory with neither file.
    """
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
