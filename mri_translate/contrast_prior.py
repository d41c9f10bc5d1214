"""The contrast prior: a no-learning T1w <-> T2w intensity map that starts the generators in the right basin.

An unpaired CycleGAN starts near the identity, where the cycle loss is already small, and the adversarial
loss alone rarely drags it across to the inverted tissue contrast: it learns T2w *texture* on top of T1w
*contrast* (white matter stays bright, ventricles stay dark). Inside the brain, T1w and T2w order the
tissues the opposite way (CSF < grey < white matter in T1w; white < grey matter < CSF in T2w), so the
inverted quantile map of the two domains' intensity distributions is a rough but correctly oriented
translation. Each generator is pulled towards it by an L1 term whose weight fades to zero over the run,
while the adversarial and cycle losses learn what the map cannot (context, texture).

Only the two domains' marginal intensity distributions are used: no paired data.
"""

from __future__ import annotations

import torch

from .transforms import strided_sample

#: Normalised intensity above which a voxel is foreground (tissue); the background sits at -1.
FOREGROUND = -0.8


def foreground_quantiles(slabs: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Quantiles ``(levels,)`` of the foreground values of ``slabs`` ``(N, k, H, W)`` in [-1, 1] (of a strided
    subsample, :func:`~mri_translate.transforms.strided_sample`)."""
    values = slabs[slabs > FOREGROUND].float()
    if values.numel() == 0:
        raise ValueError("no foreground voxels to take quantiles of")
    return torch.quantile(strided_sample(values), torch.linspace(0, 1, levels))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``fp(xp)`` at ``x`` (``xp`` increasing), constant beyond the ends, like ``np.interp``."""
    index = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    weight = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + weight * (f1 - f0)


class ContrastPrior:
    """Inverted quantile map from a source domain to a target domain, in normalised intensities.

    A foreground value at source quantile ``u`` goes to the target's quantile ``1 - u`` (the darkest source
    tissue becomes the brightest target tissue); background (<= :data:`FOREGROUND`) is kept.

    Args:
        source, target: foreground quantiles ``(L,)`` of the two domains (:func:`foreground_quantiles`).
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor):
        self.source = source.float().cummax(0).values  # ties can make quantiles non-increasing in float
        self.target = target.float().cummax(0).values
        self.levels = torch.linspace(0, 1, len(source))

    @classmethod
    def between(cls, source_slabs: torch.Tensor, target_slabs: torch.Tensor) -> ContrastPrior:
        """The prior from two domains' slabs ``(N, k, H, W)`` in [-1, 1]."""
        return cls(foreground_quantiles(source_slabs), foreground_quantiles(target_slabs))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(...)`` in [-1, 1]. Returns: the mapped values, same shape and device, no gradient."""
        if self.source.device != x.device:  # move the tables once, not every step
            self.source, self.target, self.levels = (t.to(x.device) for t in (self.source, self.target, self.levels))
        flat = x.detach().float().reshape(-1)
        rank = _interp(flat, self.source, self.levels)
        mapped = _interp(1 - rank, self.levels, self.target)
        out = torch.where(flat > FOREGROUND, mapped, flat)
        return out.reshape(x.shape).to(x.dtype)
