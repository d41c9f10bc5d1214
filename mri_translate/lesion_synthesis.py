"""Synthetic white-matter lesions painted into co-registered training pairs (a training augmentation).

Real pairs with lesions are few (two expert-masked MS patients among the shippable subjects), and a white-matter
hypointensity in a T1w is, across the training sources, as often partial volume or a vessel as a lesion; a model
trained on them gives lesions the contrast of the no-learning map (docs/benchmarks.md). :class:`SyntheticLesions`
paints soft ellipsoidal lesions into the white matter of a paired item, darker in the T1w and brighter in the T2w,
at contrasts drawn over the range MS lesions show, so the supervised L1 sees many lesions the T2w shows and the
T1w only hints at. Unpaired items are left alone: they have no truth to teach it.
"""

from __future__ import annotations

import math

import torch


def _uniform(low: float, high: float, rng: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


def _log_uniform(low: float, high: float, rng: torch.Generator) -> float:
    return math.exp(_uniform(math.log(low), math.log(high), rng))


class SyntheticLesions:
    """Paint 1 to ``max_count`` lesions into one co-registered pair of slabs, with probability ``prob``.

    White matter = the pixels of the middle slice inside both scans' foreground whose T1w is above its
    ``WM_T1_QUANTILE`` there and whose T2w is below its median: bright on the T1w, dark on the T2w. Each lesion is a
    soft ellipsoid centred on a white-matter pixel: in-plane radii log-uniform in ``radius_px`` (pixels), a random
    orientation, a through-plane radius log-uniform in ``depth_slices`` (slices), its edge a logistic ramp
    (``sigmoid(EDGE_SLOPE (1 - r))``, ``r`` the ellipsoidal radius: 0.95 at ``r = 0.7``, 0.05 at 1.3); where
    lesions overlap the strongest wins. With ``m`` in [0, 1] that weight, inside the foreground the T1w is
    multiplied by ``1 - m (1 - f1)`` and the T2w by ``1 + m (f2 - 1)`` (``f1``, ``f2`` uniform in ``t1_factor``,
    ``t2_factor``), so both keep their texture; the T2w is then capped at the larger of its own value and
    ``1.25 f2 w`` (``w`` the white matter's median T2w), so a lesion touching a ventricle does not brighten its CSF.
    The factors are relative to the white matter around: the ranges span what MS lesions show (the two MSLUB
    pairs': T1w 0.65-0.79, T2w 1.7-2.0 times their white matter's median). Intensities are ``x + 1`` of the slabs'
    [-1, 1] (background 0).
    """

    #: the T1w quantile, among the foreground pixels of the middle slice, that white matter is above
    WM_T1_QUANTILE = 0.6
    #: fewest white-matter pixels a slice needs to be painted
    MIN_WM_PIXELS = 50
    #: steepness of a lesion's edge (per unit of ellipsoidal radius)
    EDGE_SLOPE = 10.0

    def __init__(self, prob: float = 0.5, max_count: int = 6, radius_px=(1.5, 10.0), depth_slices=(0.7, 3.0),
                 t1_factor=(0.55, 0.95), t2_factor=(1.3, 2.4)):
        self.prob, self.max_count = prob, max_count
        self.radius_px, self.depth_slices = radius_px, depth_slices
        self.t1_factor, self.t2_factor = t1_factor, t2_factor

    def __call__(self, t1: torch.Tensor, t2: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``t1``, ``t2``: ``(k, H, W)`` in [-1, 1], the same anatomy; returns them painted (or unchanged)."""
        if not self.prob or not bool(torch.rand((), generator=rng) < self.prob):
            return t1, t2
        u, v = t1 + 1, t2 + 1
        foreground = (u > 0) & (v > 0)
        mid = u.shape[0] // 2
        inside = foreground[mid]
        if int(inside.sum()) < self.MIN_WM_PIXELS:
            return t1, t2
        u_mid, v_mid = u[mid][inside], v[mid][inside]
        wm = inside & (u[mid] > torch.quantile(u_mid, self.WM_T1_QUANTILE)) & (v[mid] < v_mid.median())
        candidates = wm.flatten().nonzero().flatten()
        if len(candidates) < self.MIN_WM_PIXELS:
            return t1, t2
        wm_t2 = float(v[mid][wm].median())
        weight = self._lesions(u.shape, candidates, rng) * foreground
        f1, f2 = _uniform(*self.t1_factor, rng), _uniform(*self.t2_factor, rng)
        u = u * (1 - weight * (1 - f1))
        v = torch.minimum(v * (1 + weight * (f2 - 1)), v.clamp(min=1.25 * f2 * wm_t2))
        return (u - 1).clamp(-1, 1), (v - 1).clamp(-1, 1)

    def _lesions(self, shape, candidates: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """``(k, H, W)`` in [0, 1]: the union (maximum) of 1 to ``max_count`` soft ellipsoids centred on
        ``candidates`` (flat indices into the ``(H, W)`` slice)."""
        k, height, width = shape
        z = torch.arange(k, dtype=torch.float32).view(k, 1, 1) - k // 2
        y = torch.arange(height, dtype=torch.float32).view(1, height, 1)
        x = torch.arange(width, dtype=torch.float32).view(1, 1, width)
        weight = torch.zeros(shape)
        for _ in range(int(torch.randint(1, self.max_count + 1, (1,), generator=rng))):
            centre = int(candidates[int(torch.randint(len(candidates), (1,), generator=rng))])
            cy, cx = divmod(centre, width)
            ry, rx = (_log_uniform(*self.radius_px, rng) for _ in range(2))
            rz, angle = _log_uniform(*self.depth_slices, rng), _uniform(0.0, math.pi, rng)
            along = (y - cy) * math.cos(angle) + (x - cx) * math.sin(angle)
            across = -(y - cy) * math.sin(angle) + (x - cx) * math.cos(angle)
            radius = ((along / ry) ** 2 + (across / rx) ** 2 + (z / rz) ** 2).sqrt()
            weight = torch.maximum(weight, torch.sigmoid((1 - radius) * self.EDGE_SLOPE))
        return weight
