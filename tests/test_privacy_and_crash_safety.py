"""Patient identifiers never leave a DICOM input (console, sidecar, NIfTI, GIF, run bundle, checkpoints), and
runs killed with SIGKILL leave nothing that a rerun cannot finish: a batch conversion skips what was done and
redoes the rest, a training run resumes from its last complete checkpoint."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import torch

from conftest import SYNTHETIC_AFFINE, synthetic_volume
from mri_translate.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SERIES_DIR = "dicom/mr_t1_mprage_series"
PROJECT = Path(__file__).resolve().parents[1]
PHI = {"PatientName": "Doe^Jane_PHI", "PatientID": "PHI-ID-12345", "PatientBirthDate": "19010101",
       "AccessionNumber": "ACC-PHI-777"}
#: Searched everywhere, binary files included (4+ characters: a chance match in a few MB of voxels or
#: weights is ~1e-3 or less, and every output here is deterministic).
PHI_TOKENS = ("Doe^Jane_PHI", "PHI-ID-12345", "ACC-PHI-777", "19010101", "1901-01-01", "ACC-PHI", "12345",
              "Jane")
#: Short pieces, searched as words in text only (3 bytes turn up by chance in binary data).
PHI_WORDS = re.compile(r"\b(Doe|Jane)\b")


def write_nifti(path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, SYNTHETIC_AFFINE), str(path))
    return path


def tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".tmp-" in p.name)


# --- patient identifiers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phi_series(shared_data, tmp_path_factory) -> Path:
    """Five consecutive files of the shared series with made-up identifiers written into them."""
    import pydicom

    folder = tmp_path_factory.mktemp("identified") / "dicom_series"
    folder.mkdir()
    for source in sorted((shared_data / SERIES_DIR).glob("*.dcm"))[:5]:
        dataset = pydicom.dcmread(str(source))
        for tag, value in PHI.items():
            setattr(dataset, tag, value)
        dataset.save_as(str(folder / source.name))
    check = pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True)
    assert str(check.PatientName) == PHI["PatientName"] and check.AccessionNumber == PHI["AccessionNumber"]
    return folder


def assert_no_phi(where: str, content, text: bool) -> None:
    """``content`` (str or bytes) holds none of the identifiers; ``text`` also checks the short words."""
    if isinstance(content, bytes):
        raw = content
        decoded = content.decode("utf-8", "replace") if text else None
    else:
        raw, decoded = content.encode("utf-8", "replace"), content
    for token in PHI_TOKENS:
        assert token.encode() not in raw, f"patient identifier {token!r} found in {where}"
    if decoded is not None:
        match = PHI_WORDS.search(decoded)
        assert match is None, f"patient identifier piece {match.group(0)!r} found in {where}"


def assert_file_has_no_phi(path: Path) -> None:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    text = path.suffix in (".json", ".md", ".txt", ".conf", ".log", ".yaml", ".csv")
    assert_no_phi(str(path), data, text)
    if path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert_no_phi(f"{path} (loaded)", repr(state) + repr(list(_strings(state))), text=True)
    if path.name.endswith((".nii", ".nii.gz")):
        header = nib.load(str(path)).header
        assert_no_phi(f"{path} (header)", bytes(header.binaryblock), text=True)


def _strings(value):
    """Every key and non-tensor leaf of a nested checkpoint, as text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif not isinstance(value, torch.Tensor):
        yield str(value)


def test_the_identifier_search_finds_them_in_the_input(phi_series):
    """Sanity check of the search itself: it fires on the DICOM files that carry the identifiers."""
    with pytest.raises(AssertionError, match="patient identifier"):
        assert_file_has_no_phi(next(phi_series.iterdir()))


def test_info_json_shows_no_identifiers(phi_series, capsys):
    assert main(["info", str(phi_series), "--json"]) == 0
    captured = capsys.readouterr()
    facts = json.loads(captured.out)
    assert facts["format"] == "dicom" and facts["shape"][2] == 5
    assert_no_phi("info --json stdout", captured.out, text=True)
    assert_no_phi("info --json stderr", captured.err, text=True)


def test_convert_outputs_hold_no_identifiers(phi_series, tiny_run, tmp_path, capsys, caplog):
    out, gif = tmp_path / "out.nii.gz", tmp_path / "g.gif"
    status = main([str(a) for a in ["convert", phi_series, out, "--model", tiny_run, "--gif", gif,
                                    "--no-progress", "--force"]])  # a phantom: no brain to check
    captured = capsys.readouterr()
    assert status == 0, captured.err
    sidecar = tmp_path / "out.json"
    assert out.is_file() and sidecar.is_file() and gif.is_file()
    assert nib.load(str(out)).shape == (512, 512, 5)
    assert_no_phi("convert stdout", captured.out, text=True)
    assert_no_phi("convert stderr", captured.err, text=True)
    assert_no_phi("convert log", caplog.text, text=True)
    for path in (out, sidecar, gif):
        assert_file_has_no_phi(path)
    json.loads(sidecar.read_text())  # valid JSON, searched as text above


def test_training_run_holds_no_identifiers(phi_series, tiny_config, tmp_path, capsys, caplog):
    good = write_nifti(tmp_path / "t2" / "subject_T2w.nii.gz", synthetic_volume() * 2)
    run = tmp_path / "run"
    status = main([str(a) for a in ["train", "--t1", phi_series, "--t2", good, "--out", run, "--config",
                                    tiny_config(), "--iterations", "2", "--no-progress"]])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert_no_phi("train stdout", captured.out, text=True)
    assert_no_phi("train stderr", captured.err, text=True)
    assert_no_phi("train log", caplog.text, text=True)
    files = sorted(p for p in run.rglob("*") if p.is_file())
    names = {str(p.relative_to(run)) for p in files}
    for required in ("checkpoint.pt", "models/model.pt", "docs/README.md", "configs/train.json",
                     "configs/inference.json", "configs/metadata.json"):
        assert required in names, required
    for path in files:  # configs, docs, checkpoints, pictures, tensorboard events: everything in the run
        assert_file_has_no_phi(path)


# --- a batch conversion killed mid-way ---------------------------------------------------------------------------


BATCH = 6


def batch_inputs(folder: Path) -> list[Path]:
    # big enough (~0.2 s each) that a kill right after the first finished file lands mid-batch
    return [write_nifti(folder / f"scan{i}.nii", synthetic_volume((128, 128, 64)) * (1 + 0.1 * i))
            for i in range(BATCH)]


def finished(out: Path, sources: list[Path]) -> list[str]:
    """Stems whose image and sidecar both exist."""
    return [s.stem for s in sources
            if (out / f"{s.stem}_T2w.nii.gz").is_file() and (out / f"{s.stem}_T2w.json").is_file()]


def test_killed_batch_conversion_is_finished_by_a_rerun(tmp_path, tiny_run, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    sources = batch_inputs(source)
    command = [sys.executable, "-m", "mri_translate.cli", "convert", str(source), str(out), "--model", str(tiny_run),
               "--no-progress", "--batch-size", "2", "--force"]  # phantoms: no brain to check
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "convert.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=PROJECT)
        try:
            deadline = time.monotonic() + 60
            # a finished file = image AND sidecar under their final names (a glob on "*.json" would also match
            # the hidden temporary ".x.json.tmp-PID.json" and kill the batch before anything was finished)
            while not (out.is_dir() and finished(out, sources)):
                assert proc.poll() is None, f"convert exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no finished file after 60 s:\n{log.read_text()}"
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    done_before = finished(out, sources)
    assert 1 <= len(done_before) < BATCH, done_before
    stale = tmp_files(out)
    assert not stale, f"the kill landed mid-write and the rerun must clean {stale} (see the test below)"

    status = main([str(a) for a in ["convert", source, out, "--model", tiny_run, "--no-progress", "--force"]])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.strip() == (f"{BATCH - len(done_before)} converted, {len(done_before)} skipped "
                                    f"(already done), 0 failed")
    expected = sorted([f"{s.stem}_T2w.nii.gz" for s in sources] + [f"{s.stem}_T2w.json" for s in sources])
    assert sorted(p.name for p in out.iterdir()) == expected  # one image + one sidecar each, nothing else
    for s in sources:
        assert nib.load(str(out / f"{s.stem}_T2w.nii.gz")).shape == (128, 128, 64)
        assert json.loads((out / f"{s.stem}_T2w.json").read_text())["Sources"] == [str(s)]
    assert not tmp_files(out)


def test_rerun_removes_temporaries_of_a_batch_killed_mid_write(tmp_path, tiny_run, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    write_nifti(source / "scan0.nii", synthetic_volume())
    out.mkdir()
    stale = out / ".scan0_T2w.nii.gz.tmp-4194303.nii.gz"  # what SIGKILL during the write leaves behind
    stale.write_bytes(b"\x1f\x8b half a file")
    status = main([str(a) for a in ["convert", source, out, "--model", tiny_run, "--no-progress"]])
    capsys.readouterr()
    assert status == 0
    assert (out / "scan0_T2w.nii.gz").is_file() and (out / "scan0_T2w.json").is_file()
    assert not tmp_files(out)


# --- training killed at a random moment --------------------------------------------------------------------------


def test_training_killed_at_a_random_moment_resumes(tiny_config, tmp_path, capsys):
    t1 = write_nifti(tmp_path / "data" / "a_T1w.nii.gz", synthetic_volume((24, 24, 9)))
    t2 = write_nifti(tmp_path / "data" / "b_T2w.nii.gz", synthetic_volume((24, 24, 9))[::-1].copy() * 2)
    config = tiny_config(train={"checkpoint_every": 1, "iterations": 400})
    out = tmp_path / "run"
    args = ["train", "--t1", str(t1), "--t2", str(t2), "--out", str(out), "--config", str(config), "--no-progress"]
    delay = random.uniform(0.0, 1.5)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "train.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "mri_translate.cli", *args], stdout=handle,
                                stderr=subprocess.STDOUT, env=env, cwd=PROJECT)
        try:
            deadline = time.monotonic() + 60
            while not (out / "checkpoint.pt").exists():
                assert proc.poll() is None, f"training exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no checkpoint after 60 s:\n{log.read_text()}"
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill (delay {delay:.3f} s)"

    # the last complete checkpoint loads safely before anything else touches the run
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    n = state["trainer"]["iteration"]
    assert 1 <= n < 400, f"iteration {n} (delay {delay:.3f} s)"
    assert {"G_AB", "G_BA", "D_A", "D_B", "opt_G", "opt_D", "config"} <= set(state)
    assert len(state["history"]["G"]) == n

    status = main(args + ["--resume", "--iterations", str(n + 3)])
    err = capsys.readouterr().err
    assert status == 0, f"{err}\n(killed {delay:.3f} s after the first checkpoint, at iteration {n})"
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == n + 3
    assert len(final["history"]["G"]) == n + 3
    assert torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["iteration"] == n + 3
    assert not tmp_files(out), f"stale temporaries after resume: {tmp_files(out)} (delay {delay:.3f} s)"
