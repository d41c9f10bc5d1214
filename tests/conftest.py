"""Shared fixtures: the real-MRI folder beside the project (skipped when absent) and a small synthetic NIfTI."""

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

#: ``../shared/data`` relative to the project root: real MRI used by tests, never copied into the repository.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Geometry of :func:`synthetic_nifti`: LPS (x toward Left, y toward Posterior, z toward Superior), no rotation.
SYNTHETIC_SHAPE = (13, 11, 7)
SYNTHETIC_SPACING = (1.0, 1.2, 2.5)
SYNTHETIC_AFFINE = np.array([
    [-1.0, 0.0, 0.0, 30.0],
    [0.0, -1.2, 0.0, 20.0],
    [0.0, 0.0, 2.5, -10.0],
    [0.0, 0.0, 0.0, 1.0],
])


def synthetic_volume(shape=SYNTHETIC_SHAPE) -> np.ndarray:
    """A float32 volume with structure: zero background, an ellipsoid 'head' whose brightness varies smoothly
    along every axis (so any flip or axis swap changes the voxel order detectably)."""
    grid = np.indices(shape).astype(np.float64)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    radii = np.asarray(shape, dtype=np.float64) * 0.42
    inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1
    ramp = 100.0 + 7.0 * grid[0] + 3.0 * grid[1] + 11.0 * grid[2] + 0.5 * grid[0] * grid[2]
    return np.where(inside, ramp, 0.0).astype(np.float32)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` or a skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real-MRI tests skipped")
    return SHARED_DATA


@pytest.fixture
def synthetic_nifti(tmp_path) -> Path:
    """A 13 x 11 x 7 float32 NIfTI, LPS, spacing (1.0, 1.2, 2.5) mm, written under tmp_path."""
    import nibabel as nib

    path = tmp_path / "synthetic_lps.nii.gz"
    image = nib.Nifti1Image(synthetic_volume(), SYNTHETIC_AFFINE)
    image.set_qform(SYNTHETIC_AFFINE, code=1)
    image.set_sform(SYNTHETIC_AFFINE, code=1)
    nib.save(image, str(path))
    return path


def pytest_configure(config):
    # MONAI announces on every DICOM read that its optional GPU codec is missing (io.py silences it, but pytest
    # resets warning filters per test), and ITKReader warns when it picks one of several series we asked for.
    config.addinivalue_line("filterwarnings", "ignore:NvImgCodecPydicomReader:UserWarning")
    config.addinivalue_line("filterwarnings", "ignore:the directory.*contains more than one DICOM series")


# ---------------------------------------------------------------------------------------------------------
# Fixtures of the training tests (test_networks, test_cyclegan, test_data, test_train, test_bundle).

#: The smallest model/run that exercises every part of training in about a second on one CPU core.
TINY_CONFIG = {
    "model": {"k": 3, "channels": [8, 16], "res_units": 1, "disc_channels": 8, "disc_layers": 2},
    "data": {"crop": 32, "spacing": None},  # the 4 mm test volumes stay at 4 mm (1 mm would be 16x the pixels)
    "train": {"iterations": 8, "epoch_length": 4, "checkpoint_every": 4, "progress_every": 4, "device": "cpu",
              "seed": 0},
}


@pytest.fixture(scope="session")
def torch_single_thread():
    """One intra-op thread for the session: tiny networks run faster, and on a busy 2-core machine two
    OpenMP threads competing with another process slow every step down by 10-100x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_4mm(tmp_path_factory) -> dict:
    """Two synthetic subjects (seeds 0 and 1) at 4 mm (50 x 59 x 48 voxels): ``write_dataset``'s dict."""
    from mri_translate.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthetic_4mm"), n_subjects=2, resolution=4.0)


@pytest.fixture
def tiny_config(tmp_path):
    """Factory: ``tiny_config(name="tiny.yaml", **{"section": {key: value}})`` writes :data:`TINY_CONFIG`
    updated section by section into ``tmp_path`` and returns the YAML path."""
    import copy

    import yaml

    def make(name: str = "tiny.yaml", **sections) -> Path:
        values = copy.deepcopy(TINY_CONFIG)
        for section, entries in sections.items():
            values.setdefault(section, {}).update(entries)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(values))
        return path

    return make


# ---------------------------------------------------------------------------------------------------------
# Fixtures of the inference tests (test_inference, test_convert).

#: Intensity ranges stored in the tiny model: outputs of t2-to-t1 land in A, of t1-to-t2 in B.
TINY_NORMALIZATION = {"lower": 0.5, "upper": 99.5, "A": [0.0, 100.0], "B": [0.0, 200.0]}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory (a MONAI bundle) with an untrained, seeded tiny model: ``models/model.pt`` (k 3,
    channels (8, 16), one residual unit; G_AB and G_BA differ) and ``configs/inference.json`` +
    ``metadata.json`` from the bundle template (inference rebuilds the network from model.pt). Treat it as
    read-only."""
    import shutil

    import torch

    from mri_translate.model_file import TEMPLATE
    from mri_translate.config import RunConfig
    from mri_translate.networks import ModifiedUNet

    run = tmp_path_factory.mktemp("tiny_run")
    config = RunConfig.from_dict({"model": {"k": 3, "channels": [8, 16], "res_units": 1}})
    torch.manual_seed(0)
    model = config.model
    g_ab, g_ba = (ModifiedUNet(model.k, model.channels, model.res_units) for _ in range(2))
    (run / "models").mkdir()
    torch.save({"format": "mri-translate-generators/1", "G_AB": g_ab.state_dict(), "G_BA": g_ba.state_dict(),
                "config": config.to_dict(), "normalization": TINY_NORMALIZATION, "iteration": 0,
                "version": "0.1.0"}, run / "models" / "model.pt")
    (run / "configs").mkdir()
    for name in ("inference.json", "metadata.json"):
        shutil.copyfile(TEMPLATE / "configs" / name, run / "configs" / name)
    return run


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by several test files.

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def sitk_ras_affine(image) -> np.ndarray:
    """The voxel -> RAS affine of a SimpleITK image (SimpleITK geometry is LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def run_cli(capsys, *args):
    """Run ``mri-translate ARGS`` in-process: (exit status, stdout, stderr)."""
    from mri_translate.cli import main

    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_zero_sized_nifti(folder) -> Path:
    """``folder/zero.nii.gz`` with shape (4, 0, 3); skips the test where nibabel refuses to write it."""
    import nibabel as nib

    path = Path(folder) / "zero.nii.gz"
    try:
        nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), dtype=np.float32), SYNTHETIC_AFFINE), str(path))
    except Exception as err:  # pragma: no cover - depends on the nibabel version
        pytest.skip(f"nibabel refuses to write a zero-sized dimension: {err}")
    return path


@contextlib.contextmanager
def ordinary_permissions():
    """File permissions as an ordinary user meets them, also when the tests run as root (as CI does): the
    calling thread's effective CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped for the duration (Linux
    capset; they stay permitted, so they are restored after), so a chmod 000 file is unreadable and a 0o500
    folder unwritable. Files the process owns with ordinary modes stay usable."""
    if os.geteuid() != 0:
        yield
        return
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, saved = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    if libc.capget(ctypes.byref(header), saved) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    reduced = (Data * 2)()
    ctypes.memmove(reduced, saved, ctypes.sizeof(saved))
    reduced[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), reduced) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    try:
        yield
    finally:
        libc.capset(ctypes.byref(Header(0x20080522, 0)), saved)


@pytest.fixture(scope="session")
def tiny_standardized_run(tiny_run, tmp_path_factory) -> Path:
    """:func:`tiny_run` as if trained at 2 mm in-plane pixels with landmark standardisation (fitted on the
    synthetic volume at x1, x2, x3): inference resamples and standardises. Read-only."""
    import shutil

    import torch

    from mri_translate.standardize import LandmarkStandardizer

    run = tmp_path_factory.mktemp("tiny_standardized_run")
    shutil.copytree(tiny_run, run, dirs_exist_ok=True)
    state = torch.load(run / "models" / "model.pt", weights_only=True)
    volume = torch.from_numpy(synthetic_volume())[None]
    fitted = LandmarkStandardizer.fit([volume * f for f in (1.0, 2.0, 3.0)]).to_dict()
    state.update(spacing=2.0, standardize={"A": fitted, "B": fitted})
    torch.save(state, run / "models" / "model.pt")
    return run
