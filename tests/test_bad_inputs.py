"""Bad inputs x every command: each unusable input is refused by every command (CLI and Python API) with
exit status 2, exactly one line on stderr naming the file and the problem, no traceback and no output
(docs/convert.md "Errors and exit codes"); a valid volume behind an awkward path works everywhere. Also: a full
disk while writing, a foreign checkpoint, and a checkpoint that tries to run code."""

from __future__ import annotations

import errno
import gzip
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import SYNTHETIC_AFFINE, SYNTHETIC_SHAPE, ordinary_permissions, synthetic_volume, write_zero_sized_nifti
from mri_translate.cli import main
from mri_translate.errors import MriTranslateError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SERIES_DIR = "dicom/mr_t1_mprage_series"
PROJECT = Path(__file__).resolve().parents[1]


# --- bad inputs -----------------------------------------------------------------------------------------------


def write_nifti(path, data, cls=nib.Nifti1Image) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(cls(data, SYNTHETIC_AFFINE), str(path))
    return path


def make_empty(tmp):
    path = tmp / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def make_truncated(tmp):
    path = write_nifti(tmp / "truncated.nii.gz", synthetic_volume((20, 20, 20)) + 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EOFError):  # really a cut gzip stream
        gzip.decompress(path.read_bytes())
    return path


def make_gzip_garbage(tmp):
    path = tmp / "garbage.nii.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4096)))
    return path


def make_huge_header(tmp):
    path = write_nifti(tmp / "huge.nii", synthetic_volume((2, 2, 2)), cls=nib.Nifti2Image)
    with open(path, "r+b") as handle:  # NIfTI-2 stores dims as int64: 65535^3 is a valid claim (as test_io)
        header = nib.Nifti2Header.from_fileobj(handle)
        header.set_data_shape((65535, 65535, 65535))
        handle.seek(0)
        header.write_to(handle)
    assert nib.load(str(path)).shape == (65535, 65535, 65535)
    return path


def make_zero_sized(tmp):
    return write_zero_sized_nifti(tmp)


def make_4d(tmp):
    return write_nifti(tmp / "fmri.nii.gz", np.stack([synthetic_volume()] * 5, axis=-1))


def make_5d(tmp):
    return write_nifti(tmp / "vectors.nii.gz", np.stack([synthetic_volume()] * 3, axis=-1)[:, :, :, None, :])


def make_complex(tmp):
    return write_nifti(tmp / "complex.nii.gz", synthetic_volume().astype(np.complex64) * (1 + 2j))


def make_rgb(tmp):
    rgb = np.zeros(SYNTHETIC_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    grey = synthetic_volume().astype(np.uint8)
    for channel in "RGB":
        rgb[channel] = grey
    return write_nifti(tmp / "rgb.nii.gz", rgb)


def make_nan(tmp):
    data = synthetic_volume()
    data[3, 4, 2] = np.nan
    return write_nifti(tmp / "nan.nii.gz", data)


def make_inf(tmp):
    data = synthetic_volume()
    data[6, 5, 3] = np.inf
    return write_nifti(tmp / "inf.nii.gz", data)


def make_all_zero(tmp):
    return write_nifti(tmp / "all_zero.nii.gz", np.zeros(SYNTHETIC_SHAPE, dtype=np.float32))


def make_constant(tmp):
    return write_nifti(tmp / "constant.nii.gz", np.full(SYNTHETIC_SHAPE, 37.0, dtype=np.float32))


def _shared_series_files(count):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / SERIES_DIR).is_dir():
        pytest.skip("../shared/data not present: DICOM inputs skipped")
    return sorted((SHARED_DATA / SERIES_DIR).glob("*.dcm"))[:count]


def make_two_series(tmp):
    """Two files of the shared series; the second rewritten into a series of its own (as test_io)."""
    import pydicom
    from pydicom.uid import generate_uid

    first, second = _shared_series_files(2)
    folder = tmp / "two series"
    folder.mkdir()
    shutil.copy(first, folder / first.name)
    dataset = pydicom.dcmread(str(second))
    dataset.SeriesInstanceUID = generate_uid()
    dataset.save_as(str(folder / second.name))
    return folder


def make_dicom_without_pixels(tmp):
    import pydicom

    (source,) = _shared_series_files(1)
    dataset = pydicom.dcmread(str(source))
    del dataset.PixelData
    path = tmp / "no_pixels.dcm"
    dataset.save_as(str(path))
    assert "PixelData" not in pydicom.dcmread(str(path))
    return path


def make_text(tmp):
    path = tmp / "notes.nii.gz"
    path.write_text("this is a text file, not an image\n" * 20)
    return path


def make_symlink_loop(tmp):
    a, b = tmp / "x.nii.gz", tmp / "y.nii.gz"
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    return a


def make_unreadable(tmp):
    """chmod 000: unreadable for the matrix, which runs under conftest.ordinary_permissions (also as root)."""
    path = write_nifti(tmp / "locked.nii.gz", synthetic_volume())
    path.chmod(0)
    return path


def make_missing(tmp):
    return tmp / "not there.nii.gz"


def make_odd_path(tmp):
    """A VALID volume behind spaces, '#' and non-ASCII characters: must work everywhere."""
    return write_nifti(tmp / "dir with space #1" / "ünï.nii.gz", synthetic_volume())


#: kind -> (factory, words of which the error line must contain at least one; None = a valid input)
KINDS = {
    "empty": (make_empty, {"empty"}),
    "truncated": (make_truncated, {"cannot read", "truncated", "not a readable"}),
    "gzip_garbage": (make_gzip_garbage, {"not a readable", "cannot read"}),
    "huge_header": (make_huge_header, {"GiB"}),
    "zero_sized": (make_zero_sized, {"zero-sized"}),
    "4d": (make_4d, {"4D"}),
    "5d": (make_5d, {"5D"}),
    "complex": (make_complex, {"complex"}),
    "rgb": (make_rgb, {"RGB"}),
    "nan": (make_nan, {"NaN"}),
    "inf": (make_inf, {"Inf"}),
    "all_zero": (make_all_zero, {"constant", "no usable slices"}),
    "constant": (make_constant, {"constant", "no usable slices"}),
    "two_series": (make_two_series, {"series"}),
    "dicom_no_pixels": (make_dicom_without_pixels, {"pixel", "cannot read"}),
    "text": (make_text, {"not a readable", "cannot read"}),
    "symlink_loop": (make_symlink_loop, {"no such", "loop", "symbolic link"}),
    "unreadable": (make_unreadable, {"permission", "not readable"}),
    "missing": (make_missing, {"no such", "not found"}),
    "odd_path": (make_odd_path, None),
}

COMMANDS = ["info", "convert", "evaluate_pred", "evaluate_ref", "gif", "train", "api_load_volume",
            "api_translator"]

OK, EITHER = "ok", "either"
#: (kind, command) -> expectation, where it is not "refused with the kind's words". A constant image is a
#: fine thing to describe or look at; it cannot be normalised (convert, train) nor serve as a reference.
EXPECTED = {
    **{(kind, command): OK for kind in ("all_zero", "constant")
       for command in ("info", "gif", "api_load_volume")},
    # a blank prediction is a (very bad) prediction: scoring it or refusing it cleanly are both fine
    ("all_zero", "evaluate_pred"): EITHER,
    ("constant", "evaluate_pred"): EITHER,
    ("all_zero", "evaluate_ref"): {"constant", "empty"},
    ("constant", "evaluate_ref"): {"constant", "empty"},
}

#: Real bugs found by this matrix (strict: the case fails loudly once fixed, so the mark can go).
BUGS: dict = {}  # (input kind, command) -> reason, for known bugs marked xfail(strict=True)


@dataclass
class Setup:
    """What every command needs besides the bad input: a valid volume of the same grid, the tiny model, the
    tiny preset and an output folder that must stay empty when a command fails."""

    good: Path
    model: Path
    config: Path
    out: Path


@pytest.fixture
def setup(tmp_path, tiny_run, tiny_config) -> Setup:
    good = write_nifti(tmp_path / "good" / "good_T1w.nii.gz", synthetic_volume())
    out = tmp_path / "outputs"
    out.mkdir()
    return Setup(good, tiny_run, tiny_config(), out)


@pytest.fixture(scope="module")
def translator(tiny_run):
    from mri_translate.inference import Translator

    return Translator.from_run(tiny_run, device="cpu")


def argv_for(command: str, path: Path, s: Setup) -> list[str]:
    out = s.out
    return {
        "info": ["info", path],
        "convert": ["convert", path, out / "OUT.nii.gz", "--model", s.model, "--no-progress"],
        "evaluate_pred": ["evaluate", "--pred", path, "--ref", s.good, "--json", out / "report.json"],
        "evaluate_ref": ["evaluate", "--pred", s.good, "--ref", path, "--json", out / "report.json"],
        "gif": ["gif", path, s.good, "--out", out / "x.gif"],
        "train": ["train", "--t1", path, "--t2", s.good, "--out", out / "RUN", "--config", s.config,
                  "--iterations", "2", "--no-progress"],
    }[command]


#: What a successful command leaves in the output folder.
WRITTEN = {"convert": ["OUT.nii.gz", "OUT.json"], "evaluate_pred": ["report.json"],
           "evaluate_ref": ["report.json"], "gif": ["x.gif"], "train": ["RUN/checkpoint.pt", "RUN/models/model.pt"],
           "info": []}


def files_under(folder: Path) -> list[str]:
    """Every file (hidden temporaries included) below ``folder``, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def assert_error_line(line: str, command: str, label: str, words) -> None:
    assert line.startswith(f"mri-translate {command}: error:"), line
    assert label in line, f"{label!r} not named in {line!r}"
    assert any(w.lower() in line.lower() for w in words), f"none of {sorted(words)} in {line!r}"


def run_api(command, path, translator):
    from mri_translate.io import load_volume

    with ordinary_permissions():
        return load_volume(path) if command == "api_load_volume" else translator(path)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_matrix(kind, command, setup, tmp_path, capsys, request):
    if (kind, command) in BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=BUGS[(kind, command)]))
    make, words = KINDS[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    label = path.name  # a file's name, or the folder's name for a folder input
    expected = OK if words is None else EXPECTED.get((kind, command), words)
    words = expected if isinstance(expected, set) else words

    if command.startswith("api_"):
        translator = request.getfixturevalue("translator")
        if expected == OK:
            result = run_api(command, path, translator)
            assert tuple(result.shape) == (1, *SYNTHETIC_SHAPE)
            return
        try:
            run_api(command, path, translator)
        except MriTranslateError as err:
            message = str(err)
            assert err.exit_code == 2
            assert "\n" not in message and label in message, message
            assert any(w.lower() in message.lower() for w in words), f"none of {sorted(words)} in {message!r}"
        else:
            assert expected == EITHER, f"{command} accepted the {kind} input"
        return

    argv = argv_for(command, path, setup)
    with ordinary_permissions():
        status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    name = argv[0]
    if expected == OK or (expected == EITHER and status == 0):
        assert status == 0, captured.err
        for relative in WRITTEN[command]:
            assert (setup.out / relative).is_file(), relative
        assert not [f for f in files_under(setup.out) if ".tmp-" in f]
        return
    assert status == 2, f"exit {status}; stderr: {captured.err!r}"
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert_error_line(lines[0], name, label, words)
    assert files_under(setup.out) == [], "a refused command wrote output"


# --- through a real process: no traceback reaches the terminal -----------------------------------------------


def cli_process(*args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mri_translate.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=PROJECT)


@pytest.mark.parametrize("kind, command", [("empty", "info"), ("4d", "convert"), ("nan", "evaluate_pred"),
                                           ("missing", "train")])
def test_bad_input_in_a_real_process(kind, command, setup, tmp_path):
    make, words = KINDS[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    argv = argv_for(command, path, setup)
    result = cli_process(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert_error_line(lines[0], argv[0], path.name, words)
    assert files_under(setup.out) == []


def test_debug_shows_the_traceback(tmp_path):
    path = make_empty(tmp_path)
    result = cli_process("--debug", "info", path)
    assert result.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in result.stderr
    assert "InputError" in result.stderr and "empty" in result.stderr


# --- a full disk while writing ----------------------------------------------------------------------------------


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target, gif", [
    pytest.param(".nii.gz", False, id="image"),
    pytest.param(".gif", True, id="gif"),
    pytest.param(".json", False, id="sidecar"),
    pytest.param(".nii.gz", True, id="image_after_gif"),
])
def test_full_disk_during_convert(target, gif, setup, monkeypatch, capsys):
    real_replace = os.replace
    attempts = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(target):
            attempts.append(dst)
            raise ENOSPC
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    argv = ["convert", setup.good, setup.out / "OUT.nii.gz", "--model", setup.model, "--no-progress"]
    if gif:
        argv += ["--gif", setup.out / "x.gif"]
    status = main([str(a) for a in argv])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert attempts, "the patched write was never reached"
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mri-translate convert: error:"), err
    assert "No space left" in lines[0]
    assert files_under(setup.out) == []  # no output, no sidecar, no GIF, no hidden temporary


def test_full_disk_in_the_nifti_writer(setup, monkeypatch, capsys):
    """The writer itself fails half-way (a partial temporary exists): nothing is left."""
    def failing_save(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", failing_save)
    status = main([str(a) for a in ["convert", setup.good, setup.out / "OUT.nii.gz", "--model", setup.model,
                                    "--no-progress"]])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and "No space left" in err, err
    assert files_under(setup.out) == []


# --- checkpoints that are not ours ---------------------------------------------------------------------------


def test_checkpoint_of_another_project_as_model(setup, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(4, 4), "encoder.bias": torch.zeros(4)}}, other)
    status = main([str(a) for a in ["convert", setup.good, setup.out / "OUT.nii.gz", "--model", other,
                                    "--no-progress"]])
    err = capsys.readouterr().err
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mri-translate convert: error:"), err
    assert "other.pt" in lines[0] and "Traceback" not in err
    assert files_under(setup.out) == []


class CodeRunner:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_code_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"G_AB": CodeRunner(marker), "G_BA": {}, "config": {"model": {"k": 3}}}, path)
    return path


def test_code_running_checkpoint_payload_is_live(tmp_path):
    """The payload below really runs code when loaded unsafely, so its absence later means something."""
    marker = tmp_path / "ran"
    torch.load(write_code_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_code_running_checkpoint_as_model(setup, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = write_code_checkpoint(tmp_path / "evil.pt", marker)
    status = main([str(a) for a in ["convert", setup.good, setup.out / "OUT.nii.gz", "--model", evil,
                                    "--no-progress"]])
    err = capsys.readouterr().err
    assert not marker.exists(), "loading --model executed code"
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mri-translate convert: error:") and "evil.pt" in lines[0], err
    assert files_under(setup.out) == []


@pytest.mark.parametrize("with_config", [True, False], ids=["with_config", "config_from_checkpoint"])
def test_code_running_checkpoint_on_resume(with_config, setup, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    run = setup.out / "RUN"
    write_code_checkpoint(run / "checkpoint.pt", marker)
    argv = ["train", "--t1", setup.good, "--t2", setup.good, "--out", run, "--resume", "--iterations", "2",
            "--no-progress"] + (["--config", setup.config] if with_config else [])
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert not marker.exists(), "loading the --resume checkpoint executed code"
    assert status == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("mri-translate train: error:"), err
    assert "checkpoint.pt" in lines[0] and "Traceback" not in err
    assert files_under(setup.out) == ["RUN/checkpoint.pt"]  # nothing written beside it
