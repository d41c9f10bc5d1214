"""Shared fixtures: the real-MRI folder beside the project (skipped when absent) and a small synthetic NIfTI."""

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
