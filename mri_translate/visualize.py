"""Pictures of volumes and training: radiological slices, windowing, GIF sweeps, montages, loss plots.

Volumes are RAS canonical arrays of shape (X, Y, Z): +X = patient right, +Y = anterior,
+Z = superior (as after MONAI ``Orientation(axcodes="RAS")``). Every file is written atomically:
to a hidden temporary file in the target folder, then renamed over the target.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_path

_SEP = 2  # separator width between panels, pixels
_SEP_VALUE = 128  # separator grey level
SWEEP_HEIGHT = 256  # rows of a sweep panel at least (pixels are enlarged by a whole factor to reach it)
_DPI = 100  # dots per inch of the figures (a 12-point font is about 17 pixels high)
_SWEEP_WIDTH = 2048  # columns a panel is not enlarged beyond (a flat coronal slab of a thick-slice scan)


def display_slice(volume: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
    """Extract one slice of a RAS volume, oriented as a radiologist reads it.

    Radiological convention (the viewer faces the patient / looks up from the feet): the patient's
    RIGHT is on the screen's LEFT, the patient's LEFT on the screen's RIGHT. Axial (``axis=2``):
    rows = Y reversed (anterior at the top), cols = X reversed. Coronal (``axis=1``): rows = Z
    reversed (superior at the top), cols = X reversed. Sagittal (``axis=0``): rows = Z reversed,
    cols = Y reversed (anterior on the screen's left).

    Args:
        volume: array (X, Y, Z) in RAS orientation.
        index: slice index along ``axis``.
        axis: 0 (sagittal), 1 (coronal) or 2 (axial).

    Returns:
        2D array (rows, cols) of ``volume``'s dtype: axial (Y, X), coronal (Z, X), sagittal (Z, Y).

    Raises:
        ValueError: ``volume`` not 3D or bad ``axis``. IndexError: ``index`` out of range.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z), got shape {vol.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if not -vol.shape[axis] <= index < vol.shape[axis]:
        raise IndexError(f"slice {index} out of range for axis {axis} of shape {vol.shape}")
    # The two remaining axes (a, b): a -> cols, b -> rows, both reversed (higher b up, higher a left).
    plane = np.take(vol, index, axis=axis)
    return np.ascontiguousarray(plane.T[::-1, ::-1])


def _window_limits(array: np.ndarray, lower: float, upper: float) -> tuple[float, float] | None:
    """Percentile limits of the non-background (> min, finite) values of ``array``; None when there are none."""
    values = np.asarray(array, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    foreground = values[values > values.min()]
    if foreground.size == 0:
        return None
    lo, hi = np.percentile(foreground, [lower, upper])
    return float(lo), float(hi)


def _apply_window(image: np.ndarray, limits: tuple[float, float] | None) -> np.ndarray:
    """Map ``image`` linearly from ``limits`` to 0..255 (clipped, non-finite -> 0); uint8, same shape."""
    img = np.asarray(image, dtype=np.float64)
    if limits is None:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = limits
    finite = np.isfinite(img)
    if hi <= lo:  # a single foreground level: foreground white, the rest black
        out = np.where(finite & (img >= hi), 255.0, 0.0)
    else:
        out = (np.where(finite, img, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def window(image: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Window intensities to 8 bits by percentiles of the non-background pixels.

    Background = pixels at the image minimum; the ``lower``/``upper`` percentiles of the other finite
    pixels map to 0/255, values outside are clipped. A constant image gives zeros, without warnings.

    Args:
        image: array of any shape, usually 2D (rows, cols).
        lower, upper: percentiles, 0..100, mapped to 0 and 255.

    Returns:
        uint8 array of the same shape.
    """
    return _apply_window(image, _window_limits(image, lower, upper))


def _as_uint8(panel: np.ndarray) -> np.ndarray:
    """A 2D panel as uint8: kept if already uint8, else windowed with :func:`window`."""
    arr = np.asarray(panel)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D panel, got shape {arr.shape}")
    return arr if arr.dtype == np.uint8 else window(arr)


def _pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre a 2D uint8 image on a black (height, width) canvas."""
    out = np.zeros((height, width), dtype=np.uint8)
    top, left = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
    out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


def montage(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Grid of 2D panels with 2-pixel grey separators (training progress: rows input | translated | cycled).

    Every cell has the largest panel's height and width; smaller panels are centred on black, short
    rows are completed with black cells. Non-uint8 panels are windowed with :func:`window`.

    Args:
        rows: list of rows, each a list of 2D arrays (h, w).

    Returns:
        uint8 array (n_rows * H + 2 * (n_rows - 1), n_cols * W + 2 * (n_cols - 1)), (H, W) the cell size.

    Raises:
        ValueError: no panels, or a panel that is not 2D.
    """
    grid = [[_as_uint8(p) for p in row] for row in rows]
    panels = [p for row in grid for p in row]
    if not panels:
        raise ValueError("montage needs at least one panel")
    cell_h, cell_w = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    out = np.full((n_rows * (cell_h + _SEP) - _SEP, n_cols * (cell_w + _SEP) - _SEP), _SEP_VALUE, np.uint8)
    for r, row in enumerate(grid):
        for c in range(n_cols):
            y, x = r * (cell_h + _SEP), c * (cell_w + _SEP)
            cell = _pad(row[c], cell_h, cell_w) if c < len(row) else np.zeros((cell_h, cell_w), np.uint8)
            out[y:y + cell_h, x:x + cell_w] = cell
    return out


def labelled_montage(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
                     row_labels: Sequence[str], min_size: int = 192):
    """A :func:`montage` with a title above each column and a label left of each row, white on black, as a
    matplotlib Figure that shows the grid's pixels unresampled (render it with :func:`figure_pixels`).

    Panels are first enlarged by a whole factor to at least ``min_size`` rows (:func:`enlarge`).

    Args:
        rows: list of rows, each a list of 2D arrays (h, w) (non-uint8 ones are windowed).
        column_titles: one per column, drawn above it.
        row_labels: one per row, drawn upwards on its left.
        min_size: rows of a panel at least, pixels.

    Returns:
        ``matplotlib.figure.Figure`` at 100 dpi, the grid plus a 30-pixel margin on the top and the left and 4
        pixels on the other sides; ``fig.texts`` holds the column titles, then the row labels.

    Raises:
        ValueError: no panels, a panel that is not 2D, or titles/labels not one per column/row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = max((len(row) for row in rows), default=0)
    if len(column_titles) != n_cols or len(row_labels) != len(rows):
        raise ValueError(f"expected {n_cols} column titles and {len(rows)} row labels, got "
                         f"{len(column_titles)} and {len(row_labels)}")
    grid = montage([[enlarge(_as_uint8(p), min_size) for p in row] for row in rows])
    cell_h, cell_w = (grid.shape[0] + _SEP) // len(rows) - _SEP, (grid.shape[1] + _SEP) // n_cols - _SEP
    margin, edge = 30, 4
    height, width = grid.shape[0] + margin + edge, grid.shape[1] + margin + edge
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    fig.figimage(grid, xo=margin, yo=edge, origin="upper", cmap="gray", vmin=0, vmax=255)
    text = dict(color="white", fontsize=12, ha="center", va="center")
    for c, title in enumerate(column_titles):
        fig.text((margin + c * (cell_w + _SEP) + cell_w / 2) / width, 1 - margin / 2 / height, title, **text)
    for r, label in enumerate(row_labels):
        fig.text(margin / 2 / width, 1 - (margin + r * (cell_h + _SEP) + cell_h / 2) / height, label,
                 rotation=90, **text)
    return fig


def figure_pixels(fig) -> np.ndarray:
    """Render a matplotlib Figure on its Agg canvas: uint8 grey levels (H, W), the figure's size in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("L"))


def enlarge(image: np.ndarray, min_height: int, max_width: int = 0) -> np.ndarray:
    """Repeat every pixel of a 2D image ``f`` times along both axes, ``f`` the smallest integer making it at
    least ``min_height`` rows high (1 if it already is: an image is never shrunk), but no wider than
    ``max_width`` columns when that is given (a very flat panel stays readable without getting huge).

    Args:
        image: array (h, w).
        min_height: rows wanted, >= 1.
        max_width: columns not to exceed by enlarging, or 0 for no limit.

    Returns:
        array (f * h, f * w) of ``image``'s dtype; each input pixel is an f x f block.
    """
    arr = np.asarray(image)
    factor = max(1, math.ceil(min_height / max(1, arr.shape[0])))
    if max_width:
        factor = max(1, min(factor, max_width // max(1, arr.shape[1])))
    return arr.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else arr


def _draw_label(panel: np.ndarray, label: str) -> np.ndarray:
    """Draw ``label`` white on a black box at the top-left of a uint8 panel, in a font about 1/18 of the panel's
    height (at least 11 px)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(panel))  # uint8 2D -> mode "L"
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(11, panel.shape[0] // 18))
    box = draw.textbbox((2, 1), label, font=font)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=0)
    draw.text((2, 1), label, fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


def sweep_frames(volumes: Sequence[np.ndarray], axis: int = 2, labels: Sequence[str] | None = None,
                 max_frames: int = 64, min_height: int = SWEEP_HEIGHT) -> list[np.ndarray]:
    """Frames sweeping through volumes shown side by side, one frame per (subsampled) slice.

    Panels are oriented by :func:`display_slice`, windowed with limits computed once over the
    whole volume (no flicker) and shown at the scan's own resolution or larger: each voxel becomes an
    f x f block of pixels, ``f`` the smallest whole factor making a panel ``min_height`` rows high (see
    :func:`enlarge`; panels are not enlarged beyond 2048 columns). Leading/trailing slices empty (all at the
    volume's minimum) in every volume are skipped (all kept if all are empty); the rest are subsampled evenly
    to ``max_frames``.

    Args:
        volumes: list of arrays (X, Y, Z), all the same shape.
        axis: slicing axis, 0 (sagittal), 1 (coronal) or 2 (axial).
        labels: optional text per volume, drawn at the top-left of its panel.
        max_frames: maximum number of frames, >= 1.
        min_height: rows of a panel at least (1: the voxel grid as it is).

    Returns:
        uint8 frames (H, W): (H, w) = f times the displayed slice shape, W = n_volumes * w + 2 * (n_volumes - 1).

    Raises:
        ValueError: no volumes, not 3D, shapes differ (message names them), wrong number of labels,
            bad ``axis`` or ``max_frames`` < 1.
    """
    vols = [np.asarray(v) for v in volumes]
    if not vols:
        raise ValueError("sweep_frames needs at least one volume")
    shapes = [v.shape for v in vols]
    if len(set(shapes)) > 1 or len(shapes[0]) != 3:
        raise ValueError(f"volumes must be 3D (X, Y, Z) of one shape, got {', '.join(str(s) for s in shapes)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if labels is not None and len(labels) != len(vols):
        raise ValueError(f"got {len(labels)} labels for {len(vols)} volumes")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    others = tuple(a for a in range(3) if a != axis)
    occupied = np.zeros(shapes[0][axis], dtype=bool)
    for v in vols:
        finite = np.isfinite(v)
        if finite.any():
            occupied |= (finite & (v > v[finite].min())).any(axis=others)
    nonempty = np.flatnonzero(occupied)
    first, last = (nonempty[0], nonempty[-1]) if nonempty.size else (0, shapes[0][axis] - 1)
    if last - first + 1 > max_frames:
        indices = np.unique(np.rint(np.linspace(first, last, max_frames)).astype(int))
    else:
        indices = np.arange(first, last + 1)

    limits = [_window_limits(v, 1.0, 99.0) for v in vols]
    frames = []
    for i in indices:
        panels = [enlarge(_apply_window(display_slice(v, int(i), axis), lim), min_height, _SWEEP_WIDTH)
                  for v, lim in zip(vols, limits)]
        if labels is not None:
            panels = [_draw_label(p, str(t)) if t else p for p, t in zip(panels, labels)]
        frames.append(montage([panels]))
    return frames


def write_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10) -> None:
    """Write an animated, looping GIF atomically (the encoder may merge identical consecutive frames).

    Args:
        frames: non-empty list of uint8 arrays, all (H, W) or all (H, W, 3).
        path: output file.
        fps: frames per second, > 0.

    Raises:
        ValueError: no frames, frames not uint8 or of different shapes, or ``fps`` <= 0.
    """
    import imageio.v3 as iio

    arrays = [np.asarray(f) for f in frames]
    if not arrays or fps <= 0:
        raise ValueError(f"write_gif needs frames and fps > 0, got {len(arrays)} frames at fps {fps}")
    kinds = {(str(a.dtype), a.shape) for a in arrays}
    if len(kinds) > 1 or arrays[0].dtype != np.uint8 or arrays[0].ndim not in (2, 3):
        raise ValueError(f"GIF frames must be uint8 of one (H, W) or (H, W, 3) shape, got {sorted(kinds)}")
    with atomic_path(path, ".gif") as tmp:
        # optimize=False: optimised greyscale GIFs mix L and P frames, which imageio cannot read back
        iio.imwrite(tmp, np.stack(arrays), extension=".gif", duration=1000.0 / fps, loop=0, optimize=False)


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a 2D uint8 or uint16 array (rows, cols) as a greyscale PNG, atomically.

    Raises:
        ValueError: not 2D or not uint8/uint16.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png needs a 2D uint8/uint16 array, got {arr.dtype} {arr.shape}")
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def write_progress_gif(montages: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 2) -> None:
    """GIF of training-progress montages, one frame each; smaller ones are centred on the largest size.

    Args:
        montages: list of 2D arrays (h, w) (non-uint8 ones are windowed).
        path: output file.
        fps: frames per second.
    """
    panels = [_as_uint8(m) for m in montages]
    if not panels:
        raise ValueError("write_progress_gif needs at least one montage")
    height, width = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    write_gif([_pad(p, height, width) for p in panels], path, fps=fps)


class MovingAverage:
    """Exponential moving average over about ``span`` values (weight ``2 / (span + 1)`` on the newest), bias-corrected
    as Adam's moments are, so the first values are not pulled towards 0: the first average is the first value.

    >>> average = MovingAverage(span=3)
    >>> [round(average.update(v), 3) for v in (1.0, 1.0, 4.0)]
    [1.0, 1.0, 2.714]
    """

    def __init__(self, span: float):
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        self.decay = 1 - 2 / (span + 1)
        self._sum = self._weight = 0.0

    def update(self, value: float) -> float:
        """Add ``value``; the new average. A non-finite value (a skipped fp16 step) is left out."""
        if not math.isfinite(value):
            return self.value
        self._sum = self.decay * self._sum + (1 - self.decay) * value
        self._weight = self.decay * self._weight + (1 - self.decay)
        return self.value

    @property
    def value(self) -> float:
        """The average so far (NaN before the first value)."""
        return self._sum / self._weight if self._weight else float("nan")


def plot_losses(history: dict[str, Sequence[tuple[int, float]]], path: str | os.PathLike,
                validation: Sequence[dict] | None = None):
    """Training curves in panels, saved atomically as a PNG 1200 pixels wide and 450 high per row of two panels.

    Panels: the generators' terms, the discriminators' (names starting ``D_``) and, when there are validation
    results, the validation PSNR and SSIM, one line per direction. Each loss term has a colour of its own and is
    drawn raw (faint) behind its moving average over about 5 % of its points (:class:`MovingAverage`); terms that
    are zero all run (e.g. ``idt_*`` without ``loss.identity``) and non-finite values are left out. A loss panel's
    y axis is logarithmic when all its values are > 0 and span more than a factor 10. Drawn on matplotlib's Agg
    canvas, so pyplot and the global backend are left alone.

    Args:
        history: loss name -> list of (iteration, value).
        path: output PNG file.
        validation: validation results ``{"iteration": int, "psnr_<direction>": dB, "ssim_<direction>": float,
            ...}`` (other keys ignored), or None.

    Returns:
        The ``matplotlib.figure.Figure``: axes titled ``generator losses``, ``discriminator losses`` and, with
        validation results, ``validation PSNR (dB)`` and ``validation SSIM``; each term's moving average is
        labelled with its name, its raw trace ``_<name> raw`` (left out of the legend).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {}
    for name, points in history.items():
        kept = sorted((int(i), float(v)) for i, v in points if np.isfinite(v))
        if any(v != 0 for _, v in kept):
            curves[name] = kept
    panels = {"generator losses": [n for n in curves if not n.startswith("D_")],
              "discriminator losses": [n for n in curves if n.startswith("D_")]}
    for result in validation or ():
        for key, value in result.items():
            if key.startswith(("psnr_", "ssim_")) and np.isfinite(value):
                curves.setdefault(f"val_{key}", []).append((int(result["iteration"]), float(value)))
    for metric, title in (("psnr_", "validation PSNR (dB)"), ("ssim_", "validation SSIM")):
        if any(n.startswith(f"val_{metric}") for n in curves):
            panels[title] = [n for n in curves if n.startswith(f"val_{metric}")]

    tab20 = colormaps["tab20"].colors
    palette = tab20[0::2] + tab20[1::2]  # the ten strong hues, then their light twins
    losses = [n for n in curves if not n.startswith("val_")]
    directions = list(dict.fromkeys(n.split("_", 2)[2] for n in curves if n.startswith("val_")))
    colours = {n: palette[i % len(palette)] for i, n in enumerate(losses)}
    colours.update({n: palette[directions.index(n.split("_", 2)[2]) % len(palette)]  # one per direction
                    for n in curves if n not in colours})
    n_rows = math.ceil(len(panels) / 2)
    fig = Figure(figsize=(12, 4.5 * n_rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    for index, (title, names) in enumerate(panels.items()):
        ax = fig.add_subplot(n_rows, 2, index + 1)
        for name in names:
            its, values = zip(*curves[name])
            colour = colours[name]
            if name.startswith("val_"):
                ax.plot(its, values, "o-", color=colour, label=name.split("_", 2)[2])
                continue
            average = MovingAverage(max(1.0, len(values) / 20))
            ax.plot(its, values, color=colour, alpha=0.25, linewidth=0.8, label=f"_{name} raw")
            ax.plot(its, [average.update(v) for v in values], color=colour, linewidth=1.6, label=name)
        plotted = [v for n in names for _, v in curves[n]]
        if plotted and not title.startswith("validation") and 0 < 10 * min(plotted) < max(plotted):
            ax.set_yscale("log")
        ax.set(title=title, xlabel="iteration")
        ax.grid(True, which="both", alpha=0.3)
        if names:
            ax.legend(loc="upper right", fontsize="small", ncol=2 if len(names) > 5 else 1)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    return fig


def write_volumes_gif(volumes, path, png=None, axis: int = 2, labels: Sequence[str] | None = None) -> None:
    """GIF sweep (and optional PNG montage of 5 slices per volume) through scans side by side, each panel at
    least 256 pixels high (see :func:`sweep_frames`).

    Args:
        volumes: paths or loaded ``MetaTensor`` ``(1, X, Y, Z)`` of the same shape after RAS reorientation.
        path: output GIF.
        png: optional output PNG: one row per volume, five evenly spaced slices.
        axis: RAS axis to sweep (2 = axial).
        labels: one per volume; default: file names.

    Raises:
        InputError: a volume cannot be loaded, shapes differ, or the number of labels is wrong.
    """
    from .errors import InputError
    from .io import load_volume
    from .transforms import to_canonical

    loaded = [v if hasattr(v, "meta") else load_volume(v) for v in volumes]
    names = [str(v.meta.get("filename_or_obj", "volume")) for v in loaded]
    if labels is None:
        labels = [Path(name).name for name in names]
    if len(labels) != len(loaded):
        raise InputError(path, f"got {len(labels)} labels for {len(loaded)} volumes")
    arrays = [to_canonical(v)[0].numpy() for v in loaded]
    for name, array in zip(names[1:], arrays[1:]):
        if array.shape != arrays[0].shape:
            raise InputError(name, f"shape {array.shape} (RAS) differs from {names[0]}'s {arrays[0].shape}; "
                                   "volumes side by side need one grid")
    write_gif(sweep_frames(arrays, axis=axis, labels=labels), path)
    if png:
        rows = []
        for array in arrays:
            positions = np.linspace(0, array.shape[axis] - 1, 7).round().astype(int)[1:-1]
            rows.append([enlarge(window(display_slice(array, int(i), axis)), SWEEP_HEIGHT, _SWEEP_WIDTH)
                         for i in positions])
        write_png(montage(rows), png)
