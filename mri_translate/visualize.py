"""Pictures of volumes and training: radiological slices, windowing, GIF sweeps, montages, loss plots.

Volumes are RAS canonical arrays of shape (X, Y, Z): +X = patient right, +Y = anterior,
+Z = superior (as after MONAI ``Orientation(axcodes="RAS")``). Every file is written atomically:
to a hidden temporary file in the target folder, then renamed over the target.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_path

_SEP = 2  # separator width between panels, pixels
_SEP_VALUE = 128  # separator grey level


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


def _draw_label(panel: np.ndarray, label: str) -> np.ndarray:
    """Draw ``label`` white on a black box at the top-left of a uint8 panel (PIL default font)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(panel))  # uint8 2D -> mode "L"
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    box = draw.textbbox((2, 1), label, font=font)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=0)
    draw.text((2, 1), label, fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


def sweep_frames(volumes: Sequence[np.ndarray], axis: int = 2, labels: Sequence[str] | None = None,
                 max_frames: int = 64) -> list[np.ndarray]:
    """Frames sweeping through volumes shown side by side, one frame per (subsampled) slice.

    Panels are oriented by :func:`display_slice` and windowed with limits computed once over the
    whole volume (no flicker). Leading/trailing slices empty (all at the volume's minimum) in every
    volume are skipped (all kept if all are empty); the rest are subsampled evenly to ``max_frames``.

    Args:
        volumes: list of arrays (X, Y, Z), all the same shape.
        axis: slicing axis, 0 (sagittal), 1 (coronal) or 2 (axial).
        labels: optional text per volume, drawn at the top-left of its panel.
        max_frames: maximum number of frames, >= 1.

    Returns:
        uint8 frames (H, W): (H, w) the displayed slice shape, W = n_volumes * w + 2 * (n_volumes - 1).

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
        panels = [_apply_window(display_slice(v, int(i), axis), lim) for v, lim in zip(vols, limits)]
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


def plot_losses(history: dict[str, Sequence[tuple[int, float]]], path: str | os.PathLike) -> None:
    """Line plot of every loss term against the iteration, saved atomically as a 100 dpi PNG.

    One line per key, legend, grid; log y when every finite value is > 0; non-finite values dropped.
    Drawn on matplotlib's Agg canvas directly, so pyplot and the global backend are left alone.

    Args:
        history: loss name -> list of (iteration, value).
        path: output PNG file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_values = []
    for name, points in history.items():
        pts = sorted((int(i), float(v)) for i, v in points if np.isfinite(v))
        if not pts:
            continue
        its, vals = zip(*pts)
        all_values.extend(vals)
        ax.plot(its, vals, label=name, linewidth=1.0)
    if all_values:
        ax.set_yscale("log" if min(all_values) > 0 else "linear")
        ax.legend(loc="best", fontsize="small")
    ax.set(xlabel="iteration", ylabel="loss")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def write_volumes_gif(volumes, path, png=None, axis: int = 2, labels: Sequence[str] | None = None) -> None:
    """GIF sweep (and optional PNG montage of 5 slices per volume) through scans side by side.

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
            rows.append([window(display_slice(array, int(i), axis)) for i in positions])
        write_png(montage(rows), png)
