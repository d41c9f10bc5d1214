"""Synthetic white-matter lesions painted into co-registered training pairs (a training augmentation).

Real pairs with lesions are few (two expert-masked MS patients among the shippable subjects), and a model trained
on them gives lesions the contrast of the no-learning map. :class:`SyntheticLesions` paints soft ellipsoidal
lesions into the white matter of a paired item, darker in the T1w and brighter in the T2w, at contrasts drawn over
the range MS lesions show, so the supervised L1 sees many lesions that the T2w shows and the T1w only hints at.
Unpaired items are left alone: they have no truth to teach it. The painted weight joins the item's region, which
``loss.paired_region`` weighs. Neither as a third learning-rate cycle of a trained generator, nor from the first
iteration, nor at ten times the weight did it change how the generator answers lesions (docs/benchmarks.md); off by
default.
"""

from __future__ import annotations

import math

import torch


#: white matter: above this T1w quantile of the foreground (and below its T2w median)
WM_T1_QUANTILE = 0.6
#: steepness of a lesion's edge, per unit of ellipsoidal radius: weight 0.95 at 0.7 of the radius, 0.05 at 1.3
EDGE_SLOPE = 10.0


def white_matter(t1: torch.Tensor, t2: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the pixels of ``inside`` (a boolean foreground of the same shape) whose T1w is above its
    :data:`WM_T1_QUANTILE` there and whose T2w is below its median: bright on the T1w, dark on the T2w."""
    return inside & (t1 > torch.quantile(t1[inside], WM_T1_QUANTILE)) & (t2 < t2[inside].median())


def soft_ellipsoid(shape, centre, radii, angle: float = 0.0) -> torch.Tensor:
    """``shape`` ``(Z, Y, X)`` weights in [0, 1]: ``sigmoid(EDGE_SLOPE (1 - r))``, ``r`` the ellipsoidal radius
    about ``centre`` ``(z, y, x)`` with ``radii`` ``(rz, ry, rx)`` (voxels), its Y and X axes turned by ``angle``
    (radians) in the (Y, X) plane."""
    z, y, x = (torch.arange(n, dtype=torch.float32).view([-1 if i == axis else 1 for i in range(3)]) - c
               for axis, (n, c) in enumerate(zip(shape, centre)))
    along = y * math.cos(angle) + x * math.sin(angle)
    across = -y * math.sin(angle) + x * math.cos(angle)
    radius = ((z / radii[0]) ** 2 + (along / radii[1]) ** 2 + (across / radii[2]) ** 2).sqrt()
    return torch.sigmoid((1 - radius) * EDGE_SLOPE)


def paint(t1: torch.Tensor, t2: torch.Tensor, weight: torch.Tensor, t1_factor: float, t2_factor: float,
          wm_t2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesions of ``weight`` (in [0, 1], 0 outside the foreground) painted into intensities ``t1``, ``t2`` (>= 0):
    the T1w times ``1 - weight (1 - t1_factor)``, the T2w times ``1 + weight (t2_factor - 1)`` (both keep their
    texture), the T2w then capped at the larger of its own value and ``1.25 t2_factor wm_t2`` (``wm_t2``: the white
    matter's median T2w), so a lesion touching a ventricle does not brighten its CSF."""
    painted_t2 = torch.minimum(t2 * (1 + weight * (t2_factor - 1)), t2.clamp(min=1.25 * t2_factor * wm_t2))
    return t1 * (1 - weight * (1 - t1_factor)), painted_t2


def _uniform(low: float, high: float, rng: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


def _log_uniform(low: float, high: float, rng: torch.Generator) -> float:
    return math.exp(_uniform(math.log(low), math.log(high), rng))


class SyntheticLesions:
    """Paint 1 to ``max_count`` lesions into one co-registered pair of slabs, with probability ``prob``.

    Each lesion is a :func:`soft_ellipsoid` centred on a :func:`white_matter` pixel of the middle slice (inside
    both scans' foreground): in-plane radii log-uniform in ``radius_px`` (pixels), a random orientation, a
    through-plane radius log-uniform in ``depth_slices`` (slices); where lesions overlap the strongest wins. They
    are :func:`paint`-ed at one T1w and one T2w factor per item, uniform in ``t1_factor`` and ``t2_factor``: relative
    to the white matter around, the ranges span what MS lesions show (the two MSLUB pairs': T1w 0.65-0.79, T2w
    1.7-2.0 times their white matter's median). Intensities are ``x + 1`` of the slabs' [-1, 1] (background 0).
    """

    #: fewest white-matter pixels a slice needs to be painted
    MIN_WM_PIXELS = 50

    def __init__(self, prob: float = 0.5, max_count: int = 6, radius_px=(1.5, 10.0), depth_slices=(0.7, 3.0),
                 t1_factor=(0.55, 0.95), t2_factor=(1.3, 2.4)):
        self.prob, self.max_count = prob, max_count
        self.radius_px, self.depth_slices = radius_px, depth_slices
        self.t1_factor, self.t2_factor = t1_factor, t2_factor

    def __call__(self, t1: torch.Tensor, t2: torch.Tensor,
                 rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``t1``, ``t2``: ``(k, H, W)`` in [-1, 1], the same anatomy; returns them painted (or unchanged) and the
        painted weight, ``(k, H, W)`` in [0, 1] (all 0 when nothing was painted)."""
        unchanged = t1, t2, torch.zeros_like(t1)
        if not self.prob or not bool(torch.rand((), generator=rng) < self.prob):
            return unchanged
        u, v = t1 + 1, t2 + 1
        foreground = (u > 0) & (v > 0)
        mid = u.shape[0] // 2
        if int(foreground[mid].sum()) < self.MIN_WM_PIXELS:
            return unchanged
        wm = white_matter(u[mid], v[mid], foreground[mid])
        candidates = wm.flatten().nonzero().flatten()
        if len(candidates) < self.MIN_WM_PIXELS:
            return unchanged
        weight = torch.zeros(u.shape)
        for _ in range(int(torch.randint(1, self.max_count + 1, (1,), generator=rng))):
            centre = divmod(int(candidates[int(torch.randint(len(candidates), (1,), generator=rng))]), u.shape[-1])
            radii = [_log_uniform(*self.depth_slices, rng)] + [_log_uniform(*self.radius_px, rng) for _ in range(2)]
            ellipsoid = soft_ellipsoid(u.shape, (mid, *centre), radii, _uniform(0.0, math.pi, rng))
            weight = torch.maximum(weight, ellipsoid)
        f1, f2 = _uniform(*self.t1_factor, rng), _uniform(*self.t2_factor, rng)
        weight = weight * foreground
        u, v = paint(u, v, weight, f1, f2, float(v[mid][wm].median()))
        return (u - 1).clamp(-1, 1), (v - 1).clamp(-1, 1), weight
