"""Tests of mri_translate.visualize: orientation, windowing, sweeps, atomic GIF/PNG writes, loss plots."""

import os
import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from mri_translate.errors import InputError
from PIL import Image

from mri_translate import visualize as vis


def _marker_volume(shape=(8, 10, 12), at=(7, 9, 11)):
    vol = np.zeros(shape, dtype=np.float32)
    vol[at] = 1.0
    return vol


def _where(image):
    rows, cols = np.nonzero(image)
    assert len(rows) == 1
    return rows[0], cols[0]


def test_display_slice_axial_anterior_up_patient_right_on_screen_left():
    vol = _marker_volume(at=(7, 9, 5))  # high X = patient right, high Y = anterior
    img = vis.display_slice(vol, 5, axis=2)
    assert img.shape == (10, 8)  # (Y, X)
    assert _where(img) == (0, 0)  # top (anterior up), left (patient right on the screen's left)
    # patient left, posterior -> bottom right
    vol = _marker_volume(at=(0, 0, 5))
    assert _where(vis.display_slice(vol, 5, axis=2)) == (9, 7)


def test_display_slice_coronal_superior_up_patient_right_on_screen_left():
    vol = _marker_volume(at=(7, 4, 11))  # patient right, superior
    img = vis.display_slice(vol, 4, axis=1)
    assert img.shape == (12, 8)  # (Z, X)
    assert _where(img) == (0, 0)
    vol = _marker_volume(at=(0, 4, 0))  # patient left, inferior
    assert _where(vis.display_slice(vol, 4, axis=1)) == (11, 7)


def test_display_slice_sagittal_superior_up_anterior_on_screen_left():
    vol = _marker_volume(at=(3, 9, 11))  # anterior, superior
    img = vis.display_slice(vol, 3, axis=0)
    assert img.shape == (12, 10)  # (Z, Y)
    assert _where(img) == (0, 0)
    vol = _marker_volume(at=(3, 0, 0))  # posterior, inferior
    assert _where(vis.display_slice(vol, 3, axis=0)) == (11, 9)


def test_display_slice_rejects_bad_input():
    with pytest.raises(ValueError):
        vis.display_slice(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError):
        vis.display_slice(np.zeros((4, 4, 4)), 0, axis=3)
    with pytest.raises(IndexError):
        vis.display_slice(np.zeros((4, 4, 4)), 4)


def test_window_ramp_spans_full_range():
    ramp = np.arange(200, dtype=np.float32).reshape(10, 20)
    out = vis.window(ramp)
    assert out.dtype == np.uint8 and out.shape == ramp.shape
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic


def test_window_constant_is_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (0.0, 5.0, np.nan):
            out = vis.window(np.full((6, 7), value, dtype=np.float32))
            assert out.dtype == np.uint8 and out.shape == (6, 7) and not out.any()
        binary = np.zeros((4, 4), dtype=np.float32)
        binary[1, 1] = 3.0
        assert vis.window(binary)[1, 1] == 255 and vis.window(binary).sum() == 255


def _blob_volumes(shape=(6, 8, 20), z_range=(3, 15)):
    a = np.zeros(shape, dtype=np.float32)
    b = np.zeros(shape, dtype=np.float32)
    rng = np.random.default_rng(0)
    a[1:5, 1:7, z_range[0]:z_range[1]] = rng.random((4, 6, z_range[1] - z_range[0])) + 1
    b[2:4, 2:6, z_range[0] + 2:z_range[1]] = 7.0
    return a, b


def test_sweep_frames_shapes_and_empty_slices_skipped():
    a, b = _blob_volumes()
    frames = vis.sweep_frames([a, b], axis=2, labels=["T1w", "T2w"])
    assert len(frames) == 12  # slices 3..14, empty ones at both ends skipped
    for frame in frames:
        assert frame.dtype == np.uint8
        assert frame.shape == (8, 6 + 2 + 6)  # (Y, 2 * X + separator)
    sagittal = vis.sweep_frames([a, b, a], axis=0)
    assert len(sagittal) == 4  # x = 1..4
    assert sagittal[0].shape == (20, 3 * 8 + 2 * 2)


def test_sweep_frames_labels_are_drawn_on_each_panel():
    blank = np.zeros((40, 30, 3), dtype=np.float32)
    plain = vis.sweep_frames([blank, blank])
    labelled = vis.sweep_frames([blank, blank], labels=["T1w", "T2w"])
    assert len(plain) == len(labelled) == 3 and not plain[0][:, :30].any()
    assert labelled[0][:15, :30].any() and labelled[0][:15, 32:].any()


def test_sweep_frames_max_frames_and_constant_window():
    a = np.random.default_rng(1).random((4, 4, 40)).astype(np.float32) + 1
    frames = vis.sweep_frames([a], max_frames=7)
    assert len(frames) == 7
    assert len(vis.sweep_frames([a], max_frames=100)) == 40
    # the window comes from the whole volume: slice k has brightness k + 1, so frames get brighter
    c = np.ones((4, 4, 5), dtype=np.float32) * np.arange(1, 6, dtype=np.float32)
    c[0, 0, :] = 0.0
    means = [frame.mean() for frame in vis.sweep_frames([c])]
    assert means == sorted(means) and means[0] < means[-1]
    assert vis.sweep_frames([c])[-1].max() == 255


def test_sweep_frames_shape_mismatch_names_shapes():
    with pytest.raises(ValueError) as err:
        vis.sweep_frames([np.zeros((4, 5, 6)), np.zeros((4, 5, 7))])
    assert "(4, 5, 6)" in str(err.value) and "(4, 5, 7)" in str(err.value)
    with pytest.raises(ValueError):
        vis.sweep_frames([np.zeros((4, 5, 6))], labels=["a", "b"])


def _frames(n=5, shape=(12, 16)):
    return [np.full(shape, 40 * i, dtype=np.uint8) for i in range(n)]


def test_write_gif_roundtrip_and_no_temp(tmp_path):
    path = tmp_path / "sweep.gif"
    vis.write_gif(_frames(), path, fps=5)
    back = iio.imread(path, index=None)
    assert back.shape[0] == 5 and back.shape[1:3] == (12, 16)
    assert os.listdir(tmp_path) == ["sweep.gif"]


def test_write_gif_error_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "sweep.gif"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):  # bad dtype, refused before writing
        vis.write_gif([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)], path)

    def failing_imwrite(uri, *args, **kwargs):
        with open(uri, "wb") as fh:
            fh.write(b"GIF89a partial")
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", failing_imwrite)
    with pytest.raises(InputError, match="sweep.gif: cannot write \\(disk full\\)"):
        vis.write_gif(_frames(), path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["sweep.gif"]
    with pytest.raises(InputError, match="new.gif: cannot write"):
        vis.write_gif(_frames(), tmp_path / "new.gif")
    assert not (tmp_path / "new.gif").exists()
    assert os.listdir(tmp_path) == ["sweep.gif"]


def test_write_png_uint8_and_uint16(tmp_path):
    img8 = np.arange(60, dtype=np.uint8).reshape(6, 10)
    vis.write_png(img8, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), img8)
    img16 = (np.arange(60, dtype=np.uint16) * 1000).reshape(6, 10)
    vis.write_png(img16, tmp_path / "b.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")).astype(np.uint16), img16)
    with pytest.raises(ValueError):
        vis.write_png(np.zeros((3, 3), np.float32), tmp_path / "c.png")
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]


def test_montage_pads_to_grid_cells():
    rows = [
        [np.ones((10, 12), np.uint8), np.ones((8, 6), np.uint8) * 2, np.ones((10, 12), np.uint8) * 3],
        [np.ones((6, 6), np.float32), np.ones((10, 12), np.uint8)],
    ]
    out = vis.montage(rows)
    assert out.dtype == np.uint8
    assert out.shape == (2 * 10 + 2, 3 * 12 + 2 * 2)
    assert out[0, 0] == 1 and out[0, 12] == vis._SEP_VALUE
    assert out[5, 14 + 6] == 2 and out[0, 14] == 0  # smaller panel centred on black
    assert not out[12:, 28:].any()  # missing cell in the short row is black
    with pytest.raises(ValueError):
        vis.montage([[]])


def test_write_progress_gif_pads_frames(tmp_path):
    montages = [np.full((10, 20), 50, np.uint8), np.full((14, 18), 200, np.uint8), np.full((12, 22), 120, np.uint8)]
    path = tmp_path / "progress.gif"
    vis.write_progress_gif(montages, path)
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (3, 14, 22)


def test_plot_losses_writes_png(tmp_path):
    history = {
        "generator": [(i, 1.0 / (i + 1)) for i in range(0, 50, 5)],
        "cycle": [(i, 0.5 + 0.01 * i) for i in range(0, 50, 5)],
        "identity": [(0, float("nan")), (10, 0.2)],
    }
    path = tmp_path / "losses.png"
    vis.plot_losses(history, path)
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    vis.plot_losses({"d": [(0, -1.0), (1, 0.5)]}, tmp_path / "neg.png")  # linear y
    assert sorted(os.listdir(tmp_path)) == ["losses.png", "neg.png"]
