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


def pad_slices(volume: torch.Tensor, k: int = 3, axis: int = 2, multiple: int = 16,
               pad_value: float = -1.0) -> tuple[torch.Tensor, SlabLayout]:
    """A volume as the slices slabs are cut from: moved to ``(N, H', W')`` along ``axis``, in-plane padded.

    Args:
        volume: ``(X, Y, Z)`` or ``(1, X, Y, Z)``, normalised (background -1).
        k: slices per slab (odd).
        axis: spatial axis (0, 1 or 2) to slice along.
        multiple: pad the two in-plane sizes up to a multiple of this (centred, ``pad_value``).

    Returns:
        ``(N, H', W')`` slices, N = number of slices, and the :class:`SlabLayout` to undo it.
    """
    _check_k(k)
    volume = torch.as_tensor(volume)
    volume = volume[0] if volume.ndim == 4 else volume
    if volume.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"expected a (X, Y, Z) volume and axis 0-2, got shape {tuple(volume.shape)}, axis {axis}")
    slices = volume.movedim(axis, 0)  # (N, H, W)
    h, w = slices.shape[1:]
    pad = tuple(((-s % multiple) // 2, -s % multiple - (-s % multiple) // 2) for s in (h, w))
    slices = torch.nn.functional.pad(slices, (*pad[1], *pad[0]), value=pad_value)
    return slices, SlabLayout(tuple(int(s) for s in volume.shape), axis, k, pad)


def slab_index(centres: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """``(B, k)`` indices of the slices in the slabs centred on ``centres`` ``(B,)`` of ``n`` slices (edges
    replicated): ``slices[slab_index(...)]`` is a batch of slabs ``(B, k, H', W')``."""
    half = k // 2
    return (centres[:, None] + torch.arange(-half, half + 1, device=centres.device)[None]).clamp(0, n - 1)


class SliceAverage:
    """The k predictions every slice receives, summed batch of slabs by batch (float64, so an identity network
    returns its input exactly) and averaged by :meth:`volume`.

    Args:
        layout: how the volume was cut (:func:`pad_slices`).
        device: where the sums are kept (the network's device).
    """

    def __init__(self, layout: SlabLayout, device=None):
        n = layout.shape[layout.axis]
        in_plane = [s for i, s in enumerate(layout.shape) if i != layout.axis]
        padded = [s + before + after for s, (before, after) in zip(in_plane, layout.pad)]
        self.layout, self.n = layout, n
        self.total = torch.zeros((n, *padded), dtype=torch.float64, device=device)
        self.count = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, centres: torch.Tensor, predictions: torch.Tensor) -> None:
        """``predictions`` ``(B, k, H', W')`` of the slabs centred on slices ``centres`` ``(B,)``: channel c of slab
        j predicts slice j + c - k // 2 (predictions of replicated slices beyond the edges are dropped)."""
        k, half = self.layout.k, self.layout.k // 2
        if (predictions.ndim != 4 or len(predictions) != len(centres) or predictions.shape[1] != k
                or tuple(predictions.shape[2:]) != self.total.shape[1:]):
            raise ValueError(f"predictions {tuple(predictions.shape)} do not fit the layout "
                             f"({len(centres)}, {k}, {self.total.shape[1]}, {self.total.shape[2]})")
        centres = centres.to(self.total.device)
        for c in range(k):
            target = centres + c - half
            valid = (target >= 0) & (target < self.n)
            target = target[valid]
            self.total.index_add_(0, target, predictions[valid, c].to(self.total))
            self.count.index_add_(0, target, torch.ones_like(target, dtype=self.count.dtype))

    def volume(self, empty: float = -1.0) -> torch.Tensor:
        """``(X, Y, Z)`` float32: each slice's mean prediction, padding removed; ``empty`` where a slice received
        none."""
        (top, bottom), (left, right) = self.layout.pad
        hp, wp = self.total.shape[1:]
        mean = (self.total[:, top: hp - bottom, left: wp - right] / self.count.clamp(min=1)[:, None, None]).float()
        mean[self.count == 0] = empty
        return mean.movedim(0, self.layout.axis)
