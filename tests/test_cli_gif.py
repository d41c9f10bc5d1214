"""Tests of ``mri-translate gif``: a GIF sweep of same-shape volumes side by side (panels oriented by
visualize.display_slice, each voxel enlarged to a block so a panel is at least 256 pixels high, 2-pixel
separators), an optional PNG montage, and one-line errors for bad inputs."""

import math
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import SYNTHETIC_AFFINE, SYNTHETIC_SHAPE, run_cli, synthetic_volume
from mri_translate.errors import InputError
from mri_translate.visualize import write_volumes_gif

X, Y, Z = SYNTHETIC_SHAPE  # 13, 11, 7; LPS, so RAS reorientation only flips x and y
SEP = 2


cli = run_cli


def shown(rows: int, cols: int) -> tuple[int, int]:
    """The size of a (rows, cols) slice on screen: each voxel an f x f block, f the least making it >= 256 high."""
    factor = math.ceil(256 / rows)
    return rows * factor, cols * factor


def write_nifti(path, shape=SYNTHETIC_SHAPE, scale=1.0) -> Path:
    nib.save(nib.Nifti1Image(synthetic_volume(shape) * np.float32(scale), SYNTHETIC_AFFINE), str(path))
    return Path(path)


@pytest.fixture
def two_volumes(tmp_path):
    return write_nifti(tmp_path / "t1.nii.gz"), write_nifti(tmp_path / "t2.nii.gz", scale=2.0)


def frames_of(path) -> np.ndarray:
    frames = iio.imread(path, index=None)
    assert frames.ndim in (3, 4)
    return frames


def nonempty_slices(axis: int) -> int:
    volume = synthetic_volume()
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero((volume > volume.min()).any(axis=others))
    return occupied[-1] - occupied[0] + 1


def test_axial_gif_and_png_montage(capsys, tmp_path, two_volumes):
    gif, png = tmp_path / "sweep.gif", tmp_path / "montage.png"
    status, stdout, stderr = cli(capsys, "gif", *two_volumes, "--out", gif, "--png", png)
    assert status == 0, stderr
    assert f"wrote {gif} and {png}" in stdout
    frames = frames_of(gif)
    # axial panels are (Y rows, X columns) enlarged 24 times (11 rows -> 264 >= 256); two panels, one separator
    height, width = shown(Y, X)
    assert height >= 256 and frames.shape[1:3] == (height, 2 * width + SEP)
    assert frames.shape[0] == nonempty_slices(2)
    # the separator column between the panels is the separator grey
    separator = frames[0][:, width:width + SEP]
    assert np.all(np.abs(separator.astype(int) - 128) <= 2)
    with Image.open(png) as montage:
        # one row per volume, five slices each, enlarged as in the GIF
        assert montage.size == (5 * width + 4 * SEP, 2 * height + SEP)


@pytest.mark.parametrize("axis, panel", [("coronal", (Z, X)), ("sagittal", (Z, Y)), ("0", (Z, Y))])
def test_other_axes(capsys, tmp_path, two_volumes, axis, panel):
    gif = tmp_path / "sweep.gif"
    status, _, stderr = cli(capsys, "gif", *two_volumes, "--out", gif, "--axis", axis)
    assert status == 0, stderr
    rows, cols = shown(*panel)
    assert rows >= 256 and frames_of(gif).shape[1:3] == (rows, 2 * cols + SEP)


def test_three_volumes_with_labels(capsys, tmp_path, two_volumes):
    gif = tmp_path / "three.gif"
    status, _, stderr = cli(capsys, "gif", *two_volumes, two_volumes[0], "--out", gif, "--labels", "a", "b", "c")
    assert status == 0, stderr
    height, width = shown(Y, X)
    assert frames_of(gif).shape[1:3] == (height, 3 * width + 2 * SEP)


def test_write_volumes_gif_names_both_shapes(tmp_path):
    """The function itself raises InputError naming the odd file and both shapes (the CLI prints one line)."""
    a, b = write_nifti(tmp_path / "a.nii.gz"), write_nifti(tmp_path / "b.nii.gz", shape=(13, 11, 8))
    with pytest.raises(InputError, match=r"b.nii.gz: shape \(13, 11, 8\).*\(13, 11, 7\)"):
        write_volumes_gif([a, b], tmp_path / "x.gif")
    with pytest.raises(InputError, match="1 labels for 2 volumes"):
        write_volumes_gif([a, a], tmp_path / "x.gif", labels=["only one"])
    assert not (tmp_path / "x.gif").exists()


def test_different_shapes_exit_2_naming_both(capsys, tmp_path):
    a, b = write_nifti(tmp_path / "a.nii.gz"), write_nifti(tmp_path / "b.nii.gz", shape=(13, 11, 8))
    status, _, stderr = cli(capsys, "gif", a, b, "--out", tmp_path / "x.gif")
    assert status == 2
    assert "(13, 11, 7)" in stderr and "(13, 11, 8)" in stderr and len(stderr.strip().splitlines()) == 1


def test_label_count_mismatch_is_one_line(capsys, tmp_path, two_volumes):
    status, _, stderr = cli(capsys, "gif", *two_volumes, "--out", tmp_path / "x.gif", "--labels", "only-one")
    assert status == 2
    assert "label" in stderr and len(stderr.strip().splitlines()) == 1


def test_missing_input_is_one_line(capsys, tmp_path, two_volumes):
    missing = tmp_path / "missing.nii.gz"
    status, _, stderr = cli(capsys, "gif", two_volumes[0], missing, "--out", tmp_path / "x.gif")
    assert status == 2
    assert str(missing) in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gif").exists()
