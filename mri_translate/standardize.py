"""Intensity standardisation learned on a training domain (Nyul & Udupa, 2000): piecewise-linear landmarks.

Each volume's landmarks are its background level (the 0.5th percentile of the whole image) and percentiles
1, 10, 20, ..., 90, 99 of its foreground. :meth:`LandmarkStandardizer.fit` maps every training volume's
landmarks linearly so that background -> -1 and the 99th percentile -> ``top`` (0.9) and averages them: the
*standard scale*. A volume is then standardised by the piecewise-linear map of its own landmarks onto that
scale (beyond the ends: the end segments' slopes, then clipped to [-1, 1]), so the same tissue lands at the
same value whatever the scanner. Background (at or below its level) is exactly -1, and the map is
continuous. The map is inverted with the volume's own landmarks (:meth:`~LandmarkStandardizer.invert`) or,
for a translation that has no raw intensities of its own, with the median raw landmarks of the training
volumes (:meth:`~LandmarkStandardizer.to_raw`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from monai.data import MetaTensor

from .errors import ConstantImageError
from .transforms import RANGE_KEY, foreground_mask, sample_quantiles

#: Foreground percentiles used as landmarks.
PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
#: Meta key holding a standardised volume's own raw landmarks (background level first).
LANDMARKS_KEY = "standardize_landmarks"


def piecewise_linear(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, extrapolate: bool = True) -> torch.Tensor:
    """``fp(xp)`` at ``x``, linear between the points (``xp`` increasing); beyond the ends continued with the
    end segments' slopes (``extrapolate``) or held constant, like ``np.interp``. Each segment as a slope and an
    intercept, so a voxel costs one lookup and one multiply-add."""
    xp, fp = xp.to(x.device, torch.float32), fp.to(x.device, torch.float32)
    slope = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1]).clamp_min(1e-12)
    intercept = fp[:-1] - slope * xp[:-1]
    x = x if extrapolate else x.clamp(float(xp[0]), float(xp[-1]))
    segment = torch.bucketize(x, xp[1:-1])  # the segment ending at xp[j] holds x == xp[j]
    return torch.addcmul(intercept[segment], slope[segment], x)


def volume_landmarks(volume: torch.Tensor, percentiles=PERCENTILES) -> torch.Tensor:
    """Raw landmarks ``(1 + P,)`` float32 of one volume ``(C, X, Y, Z)`` (any shape): the 0.5th percentile of
    all voxels, then the ``percentiles`` of the foreground (:func:`~mri_translate.transforms.foreground_mask`);
    made strictly increasing.

    Raises:
        ConstantImageError: the volume has no contrast.
    """
    data = torch.as_tensor(volume).float()
    low = sample_quantiles(data, 0.005)
    foreground = data[foreground_mask(data)]
    if foreground.numel() == 0 or not float(foreground.max()) > float(low):
        name = volume.meta.get("filename_or_obj", "image") if isinstance(volume, MetaTensor) else "image"
        raise ConstantImageError(name, "image is constant; no landmarks to standardise")
    landmarks = torch.cat([low[None], sample_quantiles(foreground, [p / 100 for p in percentiles])])
    step = float(landmarks[-1] - landmarks[0]) * 1e-4  # ties (e.g. uint8 data) would make the map a step
    return landmarks.cummax(0).values + step * torch.arange(len(landmarks))


class LandmarkStandardizer:
    """Piecewise-linear map of a volume's landmarks onto a domain's standard scale, into [-1, 1].

    Args:
        scale: standard landmarks ``(1 + P,)``, increasing, from -1 (background).
        raw: median raw landmarks of the training volumes ``(1 + P,)``: where :meth:`to_raw` maps back to.
        percentiles: the ``P`` foreground percentiles the landmarks are taken at.

    >>> standardizer = LandmarkStandardizer.fit(training_volumes)
    >>> x = standardizer(volume)                      # MetaTensor in [-1, 1], meta: own landmarks, raw range
    >>> raw = standardizer.invert(x, x.meta[LANDMARKS_KEY])
    """

    def __init__(self, scale, raw, percentiles=PERCENTILES):
        self.scale = torch.as_tensor(scale, dtype=torch.float32)
        self.raw = torch.as_tensor(raw, dtype=torch.float32)
        self.percentiles = tuple(float(p) for p in percentiles)
        if not len(self.scale) == len(self.raw) == len(self.percentiles) + 1:
            raise ValueError(f"need {len(self.percentiles) + 1} landmarks, got {len(self.scale)} and {len(self.raw)}")

    @classmethod
    def fit(cls, volumes: Iterable[torch.Tensor], percentiles=PERCENTILES, top: float = 0.9) -> LandmarkStandardizer:
        """Learn the standard scale from one domain's raw training volumes (an iterable: one in memory at a time).

        Args:
            volumes: raw volumes ``(C, X, Y, Z)`` (any shape).
            top: standard value of the 99th (last) foreground percentile; the brighter tail extrapolates to +1.
        """
        return cls.from_landmarks([volume_landmarks(v, percentiles) for v in volumes], percentiles, top)

    @classmethod
    def from_landmarks(cls, landmarks, percentiles=PERCENTILES, top: float = 0.9) -> LandmarkStandardizer:
        """:meth:`fit` from the volumes' landmarks ``(V, 1 + P)`` (:func:`volume_landmarks`)."""
        landmarks = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in landmarks])
        low, high = landmarks[:, :1], landmarks[:, -1:]
        scale = (-1 + (landmarks - low) / (high - low) * (top + 1)).mean(0)
        raw = landmarks.median(0).values.cummax(0).values
        return cls(scale, raw, percentiles)

    def __call__(self, volume: torch.Tensor, landmarks=None) -> MetaTensor:
        """Standardise a raw volume.

        Args:
            volume: ``(C, X, Y, Z)`` raw.
            landmarks: the volume's own (:func:`volume_landmarks`); measured on ``volume`` when ``None`` (give
                them when ``volume`` is a crop of the volume they were measured on).

        Returns:
            float32 ``MetaTensor`` in [-1, 1]; meta holds the landmarks (:data:`LANDMARKS_KEY`) and the raw
            ``(low, high)`` mapped to -1 and +1 (``intensity_range``).

        Raises:
            ConstantImageError: the volume has no contrast.
        """
        volume = volume if isinstance(volume, MetaTensor) else MetaTensor(volume)
        landmarks = volume_landmarks(volume, self.percentiles) if landmarks is None else \
            torch.as_tensor(landmarks, dtype=torch.float32)
        values = piecewise_linear(volume.as_tensor().float(), landmarks, self.scale).clamp(-1, 1)
        out = MetaTensor(values, meta=dict(volume.meta), applied_operations=list(volume.applied_operations))
        out.meta[LANDMARKS_KEY] = landmarks.tolist()
        out.meta[RANGE_KEY] = (float(landmarks[0]), float(self.invert(torch.ones(1), landmarks)))
        return out

    def invert(self, values: torch.Tensor, landmarks) -> torch.Tensor:
        """Standardised ``values`` (any shape, in [-1, 1]) back to the raw intensities of the volume whose
        ``landmarks`` are given (e.g. ``x.meta[LANDMARKS_KEY]``)."""
        values = torch.as_tensor(values).float()
        return piecewise_linear(values, self.scale, torch.as_tensor(landmarks, dtype=torch.float32))

    def to_raw(self, values: torch.Tensor) -> torch.Tensor:
        """Standardised ``values`` (e.g. a translation into this domain) to the domain's typical raw
        intensities: :meth:`invert` with the median raw landmarks of the training volumes."""
        return self.invert(values, self.raw)

    def to_dict(self) -> dict:
        """Plain floats and lists (for ``model.pt``, read back with ``weights_only=True``)."""
        return {"percentiles": list(self.percentiles), "scale": self.scale.tolist(), "raw": self.raw.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> LandmarkStandardizer:
        """Inverse of :meth:`to_dict`."""
        return cls(values["scale"], values["raw"], values["percentiles"])
