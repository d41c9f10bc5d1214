"""scripts/train_default_model.py --compose: composes two run folders into one, and refuses anything else before
writing."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_default_model import compose  # noqa: E402


def _run(tiny_run: Path, folder: Path, t1: str) -> Path:
    """A copy of ``tiny_run`` with the ``configs/train.json`` that training writes (sources ``t1``, no T2w)."""
    shutil.copytree(tiny_run, folder)
    (folder / "configs" / "train.json").write_text(json.dumps({"config": {"model": {"k": 3}},
                                                               "sources": {"t1": [t1], "t2": []}}))
    return folder


def test_compose_writes_a_model_and_both_runs_sources(tiny_run, tmp_path):
    first, second = _run(tiny_run, tmp_path / "first", "a.nii.gz"), _run(tiny_run, tmp_path / "second", "b.nii.gz")
    compose(first, second, tmp_path / "composed", settings={})
    recorded = json.loads((tmp_path / "composed" / "configs" / "train.json").read_text())
    assert (tmp_path / "composed" / "models" / "model.pt").is_file()
    assert recorded["sources"] == {"t1": ["a.nii.gz", "b.nii.gz"], "t2": []}
    assert recorded["composed_from"] == {"t1-to-t2": str(first), "t2-to-t1": str(second)}


def test_compose_refuses_a_model_file_and_writes_nothing(tiny_run, tmp_path):
    run, out = _run(tiny_run, tmp_path / "run", "a.nii.gz"), tmp_path / "composed"
    with pytest.raises(SystemExit, match="checkpoint.pt: not a run folder"):
        compose(run, run / "checkpoint.pt", out, settings={})
    assert not out.exists()
