"""The contrast prior: a no-learning T1w <-> T2w intensity map that starts the generators in the right basin.

An unpaired CycleGAN starts near the identity, where the cycle loss is already small, and the adversarial
loss alone rarely drags it across to the inverted tissue contrast: it learns T2w *texture* on top of T1w
*contrast* (white matter stays bright, ventricles stay dark). Inside the brain, T1w and T2w order the
tissues the opposite way (CSF < grey < white matter in T1w; white < grey matter < CSF in T2w), so the
inverted quantile map of the two domains' intensity distributions is a rough but correctly oriented
translation. Each generator is pulled towards it by an L1 term whose weight fades to zero over the run,
while the adversarial and cycle losses learn what the map cannot (context, texture).

Only the two domains' marginal intensity distributions are used: no paired data. With ``model.prior_residual``
the generators go further and start AS the map (:class:`~mri_translate.networks.PriorResidualUNet`), learning
only a correction of it.

The pull is brain-aware: it acts only inside the foreground with a soft edge (:func:`weight_map`: the mask
eroded, then blurred), so the skull, scalp and the dark rim of the head are left to the adversarial and cycle
losses, and the loss is continuous in the input (no jump where a voxel crosses the background threshold).
"""

from __future__ import annotations

import torch
from torch import nn

from .standardize import piecewise_linear
from .transforms import sample_quantiles

#: Normalised intensity above which a voxel is foreground (tissue); the background sits at -1.
FOREGROUND = -0.8
#: Blur radius (pixels) of :func:`weight_map`; the erosion is twice as deep. The weight is 0 in the outer
#: ``EDGE`` pixels of the foreground (6 mm at 1 mm pixels: scalp and skull) and 1 from ``3 * EDGE`` on.
EDGE = 6


def weight_map(x: torch.Tensor, edge: int = EDGE) -> torch.Tensor:
    """Soft brain weight of slabs ``x`` ``(B, k, H, W)`` in [-1, 1], per slice: the foreground (> -0.8)
    eroded by ``2 * edge`` pixels, then box-blurred over ``2 * edge + 1`` pixels.

    Returns:
        ``(B, k, H, W)`` in [0, 1], no gradient: exactly 0 outside the foreground and in its outer ``edge``
        pixels (the blur never reaches past the erosion), then rising by at most ``1 / (2 * edge + 1)`` per
        pixel: continuous, no jump at the edge.
    """
    mask = (x.detach() > FOREGROUND).float()
    eroded = -torch.nn.functional.max_pool2d(-mask, 4 * edge + 1, stride=1, padding=2 * edge)
    return torch.nn.functional.avg_pool2d(eroded, 2 * edge + 1, stride=1, padding=edge, count_include_pad=True)


def foreground_quantiles(slabs: torch.Tensor, levels: int = 256, edge: int = EDGE) -> torch.Tensor:
    """Quantiles ``(levels,)`` of the brain values of ``slabs`` ``(N, k, H, W)`` in [-1, 1]: voxels whose
    :func:`weight_map` is above 1/2, or all foreground voxels when heads are too small for that (of a strided
    subsample, :func:`~mri_translate.transforms.sample_quantiles`)."""
    values = slabs[weight_map(slabs, edge) > 0.5]
    values = (values if values.numel() else slabs[slabs > FOREGROUND]).float()
    if values.numel() == 0:
        raise ValueError("no foreground voxels to take quantiles of")
    return sample_quantiles(values, torch.linspace(0, 1, levels, dtype=torch.float64))


class ContrastPrior(nn.Module):
    """Inverted quantile map from a source domain to a target domain, in normalised intensities, applied inside
    the brain only.

    A brain value at source quantile ``u`` goes to the target's quantile ``1 - u`` (the darkest source tissue
    becomes the brightest target tissue). The generator is pulled towards it with the L1 :meth:`loss`, weighted
    by :func:`weight_map` of the input: zero on the background, the skull and scalp rim, continuous everywhere.
    A module whose tables are buffers, so a generator that builds on the map
    (:class:`~mri_translate.networks.PriorResidualUNet`) carries it in its weights.

    Args:
        source, target: brain quantiles ``(L,)`` of the two domains (:func:`foreground_quantiles`).
        edge: :func:`weight_map`'s edge in pixels (6 = 6 mm at the 1 mm training spacing).
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor, edge: int = EDGE):
        super().__init__()
        # ties can make quantiles non-increasing in float
        self.register_buffer("source", source.float().cummax(0).values)
        self.register_buffer("target", target.float().cummax(0).values)
        self.register_buffer("levels", torch.linspace(0, 1, len(source)))
        self.register_buffer("edge_px", torch.tensor(int(edge)))

    @property
    def edge(self) -> int:
        return int(self.edge_px)

    @classmethod
    def between(cls, source_slabs: torch.Tensor, target_slabs: torch.Tensor, edge: int = EDGE) -> ContrastPrior:
        """The prior from two domains' slabs ``(N, k, H, W)`` in [-1, 1] (e.g. ``Slices.slabs``, a sample)."""
        return cls(foreground_quantiles(source_slabs, edge=edge), foreground_quantiles(target_slabs, edge=edge), edge)

    def mapped(self, x: torch.Tensor) -> torch.Tensor:
        """The inverted quantile map of every value of ``x`` (any shape; ends held constant), no gradient."""
        if self.source.device != x.device:  # a prior used only in the loss is not moved with the networks
            self.to(x.device)
        flat = x.detach().float().reshape(-1)
        rank = piecewise_linear(flat, self.source, self.levels, extrapolate=False)
        return piecewise_linear(1 - rank, self.levels, self.target, extrapolate=False).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The soft target ``x + w * (mapped(x) - x)``, ``w`` = :func:`weight_map` (``x`` itself outside the brain).

        Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: same shape, dtype and device, no gradient.
        """
        x = x.detach()
        return (x.float() + weight_map(x, self.edge) * (self.mapped(x) - x.float())).to(x.dtype)

    def miss(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel brain-weighted distance ``w * |output - mapped(x)|`` of ``output`` from the map of input ``x``,
        both ``(B, k, H, W)``; zero wherever ``w`` is (background, skull and scalp rim)."""
        return weight_map(x, self.edge) * (output.float() - self.mapped(x)).abs()

    def loss(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Brain-weighted L1 pull ``mean(`` :meth:`miss` ``)`` of a generator's ``output`` for input ``x``."""
        return self.miss(output, x).mean()
