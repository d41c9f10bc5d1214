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
    frames = vis.sweep_frames([a, b], axis=2, labels=["T1w", "T2w"], min_height=1)
    assert len(frames) == 12  # slices 3..14, empty ones at both ends skipped
    for frame in frames:
        assert frame.dtype == np.uint8
        assert frame.shape == (8, 6 + 2 + 6)  # (Y, 2 * X + separator)
    sagittal = vis.sweep_frames([a, b, a], axis=0, min_height=1)
    assert len(sagittal) == 4  # x = 1..4
    assert sagittal[0].shape == (20, 3 * 8 + 2 * 2)


def test_sweep_frames_show_each_panel_at_least_256_pixels_high_in_whole_voxel_blocks():
    a, b = _blob_volumes()  # axial panels 8 x 6 voxels: each voxel a 32 x 32 block
    frame = vis.sweep_frames([a, b])[5]
    assert frame.shape == (256, 2 * 6 * 32 + 2)
    np.testing.assert_array_equal(frame[::32, :192:32], vis.sweep_frames([a, b], min_height=1)[5][:, :6])
    assert vis.sweep_frames([a], axis=0)[0].shape == (260, 8 * 13)  # 20 rows: 13 x 13 blocks


def test_enlarge_by_a_whole_factor_never_shrinks_and_keeps_under_a_width():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = vis.enlarge(image, 7)  # ceil(7 / 2) = 4
    assert big.shape == (8, 12) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[::4, ::4], image)
    assert vis.enlarge(image, 1) is image and vis.enlarge(image, 2) is image
    assert vis.enlarge(image, 100, max_width=30).shape == (20, 30)
    assert vis.enlarge(image, 100, max_width=2).shape == (2, 3)  # never below the image itself


def test_sweep_frames_labels_are_drawn_on_each_panel():
    blank = np.zeros((40, 30, 3), dtype=np.float32)  # axial panels 30 x 40, shown 270 x 360
    plain = vis.sweep_frames([blank, blank])
    labelled = vis.sweep_frames([blank, blank], labels=["T1w", "T2w"])
    assert len(plain) == len(labelled) == 3 and not plain[0][:, :360].any()
    first, second = labelled[0][:, :360], labelled[0][:, 362:]
    for panel in (first, second):  # a label at the top-left, in a font about 1/18 of the panel high
        rows, cols = np.nonzero(panel > 128)
        assert rows.max() < 30 and cols.max() < 60 and rows.max() - rows.min() >= 9


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


def test_moving_average_is_bias_corrected_and_spans_about_span_values():
    average = vis.MovingAverage(span=3)  # weight 1/2 on the newest
    assert np.isnan(average.value)
    assert average.update(4.0) == 4.0  # the first average is the first value, not 2.0
    assert average.update(1.0) == pytest.approx((0.5 * 4 + 1.0) / 1.5)
    steady = vis.MovingAverage(span=50)
    for _ in range(500):
        steady.update(2.0)
    assert steady.value == pytest.approx(2.0) and steady.update(102.0) == pytest.approx(2.0 + 100 * 2 / 51)
    assert steady.update(float("nan")) == steady.update(float("inf")) == pytest.approx(2.0 + 100 * 2 / 51)
    with pytest.raises(ValueError):
        vis.MovingAverage(span=0.5)


def _lines(ax):
    """{label: line} of the lines in the legend, and of the raw traces behind them ("_<name> raw")."""
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_losses_panels_smoothed_terms_without_zero_ones_and_validation_per_direction(tmp_path):
    rng = np.random.default_rng(0)
    its = range(1, 401)
    history = {name: [(i, scale * (1 + 0.5 * rng.random())) for i in its]
               for name, scale in (("G", 5.0), ("G_adv_AB", 0.5), ("cycle_A", 0.3), ("D_A", 0.25), ("D_B", 0.2))}
    history["idt_A"] = [(i, 0.0) for i in its]  # zero all run: left out
    history["prior_A"] = [(1, float("nan"))] + [(i, 0.1) for i in its[1:]]  # the NaN is dropped
    validation = [{"iteration": i, "score": 20.0, "psnr_t1-to-t2": 20.0 + i / 100, "psnr_t2-to-t1": 19.0,
                   "ssim_t1-to-t2": 0.6, "ssim_t2-to-t1": 0.5 + i / 1000, "pairs": []} for i in (200, 400)]
    fig = vis.plot_losses(history, tmp_path / "losses.png", validation)
    assert [ax.get_title() for ax in fig.axes] == ["generator losses", "discriminator losses",
                                                   "validation PSNR (dB)", "validation SSIM"]
    generator, discriminators, psnr, ssim = (_lines(ax) for ax in fig.axes)
    assert [label for label in generator if not label.startswith("_")] == ["G", "G_adv_AB", "cycle_A", "prior_A"]
    assert [label for label in discriminators if not label.startswith("_")] == ["D_A", "D_B"]
    colours = [line.get_color() for lines in (generator, discriminators) for label, line in lines.items()
               if not label.startswith("_")]
    assert len(set(colours)) == len(colours) == 6  # one colour per term
    for name in ("G", "D_B"):
        lines = generator if name == "G" else discriminators
        smoothed, raw = lines[name], lines[f"_{name} raw"]
        assert raw.get_color() == smoothed.get_color() and raw.get_alpha() < 0.5  # faint, behind
        np.testing.assert_allclose(raw.get_ydata(), [v for _, v in history[name]])
        average = vis.MovingAverage(400 / 20)
        np.testing.assert_allclose(smoothed.get_ydata(), [average.update(v) for _, v in history[name]])
        assert np.std(smoothed.get_ydata()[50:]) < 0.5 * np.std(raw.get_ydata()[50:])
    assert len(generator["prior_A"].get_xdata()) == 399
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"  # > 10x / < 10x apart
    for panel in (psnr, ssim):
        assert set(panel) == {"t1-to-t2", "t2-to-t1"} and list(panel["t1-to-t2"].get_xdata()) == [200, 400]
    assert psnr["t2-to-t1"].get_color() == ssim["t2-to-t1"].get_color() != psnr["t1-to-t2"].get_color()
    with Image.open(tmp_path / "losses.png") as img:
        assert img.format == "PNG" and img.size == (1200, 900)
    without = vis.plot_losses({"d": [(0, -1.0), (1, 0.5)]}, tmp_path / "neg.png")  # no validation: one row
    assert [ax.get_title() for ax in without.axes] == ["generator losses", "discriminator losses"]
    with Image.open(tmp_path / "neg.png") as img:
        assert img.size == (1200, 450)
    assert sorted(os.listdir(tmp_path)) == ["losses.png", "neg.png"]


def test_labelled_montage_titles_columns_labels_rows_and_enlarges_small_tiles():
    rows = [[np.full((16, 16), 10 * (r + c), np.uint8) for c in range(3)] for r in range(2)]
    fig = vis.labelled_montage(rows, ["input", "G(input)", "cycle"], ["T1w -> T2w", "T2w -> T1w"])
    grid = fig.images[0].get_array()
    assert grid.shape == (2 * 192 + 2, 3 * 192 + 2 * 2)  # 16-pixel tiles shown 12 times larger
    pixels = vis.figure_pixels(fig)
    assert pixels.dtype == np.uint8 and pixels.shape == (grid.shape[0] + 34, grid.shape[1] + 34)
    np.testing.assert_array_equal(pixels[30:30 + grid.shape[0], 30:30 + grid.shape[1]], grid)  # not resampled
    assert [t.get_text() for t in fig.texts] == ["input", "G(input)", "cycle", "T1w -> T2w", "T2w -> T1w"]
    with pytest.raises(ValueError, match="3 column titles and 2 row labels"):
        vis.labelled_montage(rows, ["input", "G(input)"], ["a", "b"])


def _capture(monkeypatch, module, name):
    """Wrap ``module.name`` so that what it returns is also appended to the returned list."""
    returned, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: returned.append(original(*args, **kwargs))
                        or returned[-1])
    return returned


def _in_pixels(fig, text):
    """(x from the left, y from the top) of a figure text's anchor, in pixels."""
    x, y = text.get_position()
    return x * fig.bbox.width, (1 - y) * fig.bbox.height


@pytest.mark.usefixtures("torch_single_thread")
def test_a_short_run_shows_a_progress_bar_and_writes_readable_labelled_pictures(synthetic_4mm, tiny_config, tmp_path,
                                                                              capsys, caplog, monkeypatch):
    from mri_translate import cli, engine

    figures = _capture(monkeypatch, engine, "progress_montage")
    plots = _capture(monkeypatch, vis, "plot_losses")
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="mri_translate")
    assert cli.main(["train", "--t1", str(synthetic_4mm["t1"][0]), "--t2", str(synthetic_4mm["t2"][1]), "--out",
                     str(out), "--config", str(tiny_config()), "--log-every", "4"]) == 0

    bar = capsys.readouterr().err  # one bar over the whole run: iterations, speed, ETA, smoothed G and D
    assert "8/8 [" in bar and "it/s" in bar and all(f"{k}=" in bar for k in ("G", "D_A", "D_B"))
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in messages if m.startswith("iteration ")] == ["4/8", "8/8"]  # --log-every 4
    assert sum(m.startswith("finished iteration 8/8") for m in messages) == 1

    assert len(figures) == 2  # iterations 4 and 8
    fig = figures[-1]
    titles, labels = fig.texts[:3], fig.texts[3:]
    assert [t.get_text() for t in titles] == ["input", "G(input)", "cycle"]
    assert [t.get_text() for t in labels] == ["T1w -> T2w"] * 2 + ["T2w -> T1w"] * 2  # two fixed slabs each
    grid = fig.images[0]
    tile = (grid.get_array().shape[0] - 3 * 2) // 4
    assert tile >= 192 and grid.get_array().shape[1] == 3 * tile + 2 * 2  # 32-pixel crops shown 6 times larger
    top = fig.bbox.height - grid.oy - grid.get_array().shape[0]
    for c, title in enumerate(titles):  # each title centred above its column, each label beside its row
        x, y = _in_pixels(fig, title)
        assert grid.ox + c * (tile + 2) < x < grid.ox + (c + 1) * tile + c * 2 and y < top
    for r, label in enumerate(labels):
        x, y = _in_pixels(fig, label)
        assert top + r * (tile + 2) < y < top + (r + 1) * tile + r * 2 and x < grid.ox
    size = (int(fig.bbox.width), int(fig.bbox.height))
    with Image.open(out / "progress.png") as png:
        assert png.size == size
    assert iio.imread(out / "progress.gif", index=None).shape[1:3] == size[::-1]

    history = torch_load_history(out)
    zero = {name for name, points in history.items() if not any(v for _, v in points)}
    assert {"idt_A", "idt_B", "paired_A", "paired_B"} <= zero  # no identity term, no pairs in this run
    (losses,) = plots
    assert [ax.get_title() for ax in losses.axes] == ["generator losses", "discriminator losses"]
    shown = [line.get_label() for ax in losses.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert sorted(shown) == sorted(set(history) - zero)
    with Image.open(out / "losses.png") as png:
        assert png.size == (1200, 450)


def torch_load_history(run):
    import torch

    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["history"]


@pytest.mark.usefixtures("torch_single_thread")
def test_a_run_without_log_every_logs_no_raw_terms_and_ends_with_a_summary(synthetic_4mm, tiny_config, tmp_path,
                                                                           capsys, caplog):
    from mri_translate.train import train

    caplog.set_level("INFO", logger="mri_translate")
    train([synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]], tmp_path / "run",
          config=tiny_config(train={"iterations": 4}), progress_bar=False)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("iteration ")]
    (summary,) = [m for m in messages if m.startswith("finished iteration 4/4")]
    assert all(f"{k}=" in summary for k in ("G", "D_A", "D_B")) and "losses.png" in summary
    assert "it/s" not in capsys.readouterr().err  # no bar
