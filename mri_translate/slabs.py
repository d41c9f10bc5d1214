"""2.5D slabs: a volume cut into stacks of k neighbouring slices, and per-slice predictions put back.

A slab centred on slice ``i`` holds slices ``i - k//2 .. i + k//2`` (edges replicated) as channels; the
generator predicts all k of them, so every slice receives up to k predictions, which are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def through_plane_axis(spacing) -> int:
    """The axis with the largest voxel spacing (thick slices); ties go to the last axis (axial in RAS)."""
    spacing = np.asarray(spacing, dtype=float)
    return int(np.flatnonzero(spacing >= spacing.max() * (1 - 1e-3))[-1])


#: the plane a slab lies in, by the RAS axis it is cut along
PLANES = ("sagittal", "coronal", "axial")
#: a scan is near-isotropic when its largest voxel spacing is at most this many times its smallest
ISOTROPIC_RATIO = 1.5
#: fewest voxels along every axis for slicing along all three (a thin slab of slices is translated along one)
MIN_FUSE_VOXELS = 32


def slicing_axes(spacing, shape, fuse: bool = True) -> list[int]:
    """The RAS axes to slice a scan along, the through-plane axis first: with ``fuse`` on a near-isotropic scan
    (:data:`ISOTROPIC_RATIO`) of at least :data:`MIN_FUSE_VOXELS` voxels along every axis, all three (axial,
    coronal and sagittal slabs, whose translations are averaged); otherwise the through-plane axis only, since
    a slice cut across thick slices is no image the model knows.

    Args:
        spacing: voxel size (mm) of the three axes.
        shape: ``(X, Y, Z)`` voxels.
        fuse: allow the three planes.
    """
    first = through_plane_axis(spacing)
    spacing = np.asarray(spacing, dtype=float)
    isotropic = spacing.max() <= ISOTROPIC_RATIO * spacing.min()
    if not (fuse and isotropic and min(int(s) for s in shape) >= MIN_FUSE_VOXELS):
        return [first]
    return [first] + [axis for axis in (2, 1, 0) if axis != first]


def _check_k(k: int) -> None:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k (slices per slab) must be a positive odd number, got {k}")


@dataclass(frozen=True)
class SlabLayout:
    """How a volume was cut: original ``shape`` (X, Y, Z), slicing ``axis``, ``k`` and in-plane ``pad``
    ``((before_h, after_h), (before_w, after_w))``."""

    shape: tuple[int, int, int]
    axis: int
    k: int
    pad: tuple[tuple[int, int], tuple[int, int]]


def volume_to_slabs(volume: torch.Tensor, k: int = 3, axis: int = 2, multiple: int = 16,
                    pad_value: float = -1.0) -> tuple[torch.Tensor, SlabLayout]:
    """Cut a volume into 2.5D slabs.

    Args:
        volume: ``(X, Y, Z)`` or ``(1, X, Y, Z)``, normalised (background -1).
        k: slices per slab (odd).
        axis: spatial axis (0, 1 or 2) to slice along.
        multiple: pad the two in-plane sizes up to a multiple of this (centred, ``pad_value``).

    Returns:
        ``(N, k, H', W')`` slabs, N = number of slices, and the :class:`SlabLayout` to undo it.
    """
    _check_k(k)
    volume = torch.as_tensor(volume)
    volume = volume[0] if volume.ndim == 4 else volume
    if volume.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"expected a (X, Y, Z) volume and axis 0-2, got shape {tuple(volume.shape)}, axis {axis}")
    slices = volume.movedim(axis, 0)  # (N, H, W)
    n, h, w = slices.shape
    pad = tuple(((-s % multiple) // 2, -s % multiple - (-s % multiple) // 2) for s in (h, w))
    slices = torch.nn.functional.pad(slices, (*pad[1], *pad[0]), value=pad_value)
    half = k // 2
    index = (torch.arange(n)[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, n - 1)
    return slices[index], SlabLayout(tuple(int(s) for s in volume.shape), axis, k, pad)


def slabs_to_volume(predictions: torch.Tensor, layout: SlabLayout) -> torch.Tensor:
    """Average the k predictions every slice received and undo the padding.

    Args:
        predictions: ``(N, k, H', W')`` as produced for the slabs of :func:`volume_to_slabs`.
        layout: the layout returned with those slabs.

    Returns:
        ``(X, Y, Z)`` float32 volume of the original shape. An identity network returns the input exactly
        (the sum is taken in float64).
    """
    n, k, hp, wp = predictions.shape
    in_plane = [s for i, s in enumerate(layout.shape) if i != layout.axis]
    padded = tuple(s + before + after for s, (before, after) in zip(in_plane, layout.pad))
    if k != layout.k or n != layout.shape[layout.axis] or (hp, wp) != padded:
        raise ValueError(f"predictions {tuple(predictions.shape)} do not fit the layout "
                         f"({layout.shape[layout.axis]}, {layout.k}, {padded[0]}, {padded[1]})")
    half = k // 2
    total = torch.zeros((n, hp, wp), dtype=torch.float64, device=predictions.device)
    count = torch.zeros(n, dtype=torch.float64, device=predictions.device)
    for c in range(k):
        # slab j, channel c predicts slice j + c - half; slices beyond the edges were replicas: drop them.
        lo, hi = max(0, half - c), min(n, n + half - c)
        if hi <= lo:
            continue
        total[lo + c - half: hi + c - half] += predictions[lo:hi, c].double()
        count[lo + c - half: hi + c - half] += 1
    (top, bottom), (left, right) = layout.pad
    volume = (total / count[:, None, None])[:, top: hp - bottom, left: wp - right]
    return volume.float().movedim(0, layout.axis)
