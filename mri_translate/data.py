"""Unpaired 2.5D slab datasets: domain A (T1w) and domain B (T2w) drawn independently from any mix of
volumes, DICOM series and folders of 2D slices.

Memory stays bounded: each source is loaded once, put in RAS, resampled in-plane to one pixel size
(``data.spacing``, 1 mm; the through-plane axis as it is), normalised (per source, per image for 2D images,
exactly as ``convert`` normalises its input; or by a learned
:class:`~mri_translate.standardize.LandmarkStandardizer`) and stored once as float16 slices ``(N, H, W)`` cropped
to its head (no padding to other sources' sizes, no k copies). With ``planes`` a near-isotropic volume is stored
along each of the three axes that ``convert`` translates it along (:func:`~mri_translate.slabs.slicing_axes`), so
the generators learn coronal and sagittal slabs too. Slabs of k neighbouring slices are cut when an item is
drawn, from a slice picked in proportion to its foreground area (a volume's planes share its weight), then
randomly cropped, flipped left-right where the slice has a left-right axis and augmented (small affine, bias
field, gamma) with MONAI random transforms.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import Context
from .contrast_check import SKULL_STRIPPED_AREA_CM2, head_area_cm2, head_mask
from .errors import ConstantImageError, InputError
from .io import IMAGE_SUFFIXES, list_images_2d, load_volume, suffix, voxel_spacing
from .lesion_synthesis import SyntheticLesions
from .pairing import check_region
from .slabs import PLANES, slicing_axes
from .standardize import LandmarkStandardizer, volume_landmarks
from .transforms import RANGE_KEY, RobustNormalize, foreground_mask, resample_inplane, to_canonical

#: In-plane margin (pixels) kept around a source's foreground when it is stored.
MARGIN = 8
#: Slabs in :attr:`Slices.slabs`, the domain's bounded sample for statistics and montages.
SAMPLE = 64


@dataclass
class SourceVolume:
    """One source, stored once.

    Attributes:
        name: file name, for messages.
        slices: ``(N, H, W)`` float16 in [-1, 1]: the canonical volume's slices along ``axis``, cropped to the
            head, only those within k // 2 of a kept slice.
        first: index in the source of ``slices[0]`` (for names).
        axis: the RAS axis the slices are cut along (0 sagittal, 1 coronal, 2 axial): the through-plane axis, or
            with ``planes`` any of the three; 1 and 2 have X (left-right) first.
        kept: ``(M,)`` positions in ``slices`` of the usable slices (centre foreground >= ``min_foreground``).
        weights: ``(M,)`` their foreground areas in pixels (divided by the number of planes its source is stored
            along): how often each is drawn.
        range: raw ``(low, high)`` mapped to -1 and +1.
        head_area_cm2: largest axial cross-section of the head, noise left out (:func:`head_area_cm2` of
            :func:`head_mask`).
        corner: in-plane ``(row, column)`` of ``slices[:, 0, 0]`` in the uncropped slice (to align a pair).
        path: the source file.
    """

    name: str
    slices: torch.Tensor
    first: int
    axis: int
    kept: torch.Tensor
    weights: torch.Tensor
    range: tuple[float, float]
    head_area_cm2: float
    corner: tuple[int, int] = (0, 0)
    path: str = ""

    def slab(self, position: int, k: int, stack: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(k, H, W)`` float32 slab centred on ``slices[position]`` (edges replicated); of ``stack``
        instead of ``slices`` when given (a mask stored like them, e.g. :attr:`PairedVolume.region`)."""
        stack = self.slices if stack is None else stack
        index = (torch.arange(position - k // 2, position + k // 2 + 1)).clamp(0, len(stack) - 1)
        return stack[index].float()

    @property
    def skull_stripped(self) -> bool:
        """True when the head is no larger than a brain (:data:`SKULL_STRIPPED_AREA_CM2`)."""
        return self.head_area_cm2 < SKULL_STRIPPED_AREA_CM2


@dataclass
class Slices:
    """The usable slices of one domain: ``volumes`` (each stored once), ``k`` slices per slab, and the
    ``standardizer`` that normalised them (``None``: :class:`~mri_translate.transforms.RobustNormalize`)."""

    volumes: list[SourceVolume]
    k: int
    standardizer: LandmarkStandardizer | None = None

    def __len__(self) -> int:
        return sum(len(v.kept) for v in self.volumes)

    @property
    def names(self) -> list[str]:
        """``file[i]`` of every usable slice, ``i`` its index along the slicing axis of the RAS volume (``file``
        with `` (coronal)`` / `` (sagittal)`` for the extra planes of :func:`load_slices`' ``planes``)."""
        return [f"{v.name}[{v.first + int(p)}]" for v in self.volumes for p in v.kept]

    @property
    def ranges(self) -> list[tuple[float, float]]:
        """The raw ``(low, high)`` of every source."""
        return [v.range for v in self.volumes]

    @cached_property
    def weights(self) -> torch.Tensor:
        """``(len(self),)`` float64 sampling weights of the usable slices (foreground area)."""
        return torch.cat([v.weights for v in self.volumes]).double()

    def slab(self, index: int) -> tuple[torch.Tensor, int]:
        """Usable slice ``index`` (order of :attr:`names`) as ``(slab (k, H, W) float32, slicing axis)``."""
        for volume in self.volumes:
            if index < len(volume.kept):
                return volume.slab(int(volume.kept[index]), self.k), volume.axis
            index -= len(volume.kept)
        raise IndexError("slice index out of range")

    @cached_property
    def slabs(self) -> torch.Tensor:
        """A bounded sample: up to :data:`SAMPLE` evenly spaced usable slabs ``(S, k, H, W)``, centred and padded
        with background to their largest size: for statistics (the contrast prior, histograms) and montages."""
        index = np.unique(np.linspace(0, len(self) - 1, min(SAMPLE, len(self))).round().astype(int))
        sample = [self.slab(int(i))[0] for i in index]
        height, width = max(s.shape[-2] for s in sample), max(s.shape[-1] for s in sample)
        return torch.stack([pad_to(s, height, width) for s in sample])

    def typical_range(self) -> tuple[float, float]:
        """Median ``(low, high)`` over the sources: the range outputs in this domain are mapped back to."""
        low, high = np.median(np.asarray(self.ranges), axis=0)
        return float(low), float(high)

    def intensity_histogram(self, bins: int = 64) -> list[float]:
        """In-foreground histogram of the sample's centre slices (:func:`~mri_translate.metrics.in_mask_histogram`):
        the domain's intensity distribution, against which ``convert --qc`` compares its outputs."""
        from .metrics import in_mask_histogram

        centre = self.slabs[:, self.k // 2].movedim(0, -1)  # (H, W, S) in [-1, 1]
        return in_mask_histogram((centre + 1) / 2, foreground_mask(centre + 1), bins).tolist()


def expand_sources(paths) -> list[Path]:
    """Each path as given, except a folder of 2D images, which becomes its image files (a slice each)."""
    files: list[Path] = []
    for path in map(Path, paths):
        images = list_images_2d(path) if path.is_dir() else []
        files.extend(images or [path])
    return files


def effective_k(paths_a, paths_b, k: int) -> tuple[int, str | None]:
    """The k to train with, given both domains' sources (2D images are single slices, see :func:`expand_sources`).

    Returns:
        ``(k, None)``, or ``(1, reason)`` when every source is a 2D image and ``k > 1``: a slab of one slice
        would be k identical copies, unlike the neighbours it sees in a volume at inference. Log the reason
        and record it in the run.

    Raises:
        InputError: 2D images mixed with 3D sources and ``k > 1`` (names the first 2D image).
    """
    files = expand_sources(paths_a) + expand_sources(paths_b)
    flat = [f for f in files if suffix(f) in IMAGE_SUFFIXES]
    if k == 1 or not flat:
        return k, None
    if len(flat) == len(files):
        return 1, f"every source is a 2D image: k = 1 instead of {k} (a slab of one slice is {k} identical copies)"
    raise InputError(flat[0], f"a 2D image among 3D sources has no neighbouring slices for k = {k}; "
                              "train 2D and 3D sources separately or set model.k: 1")


def skull_stripping_mismatch(a: Slices, b: Slices) -> str | None:
    """A one-line warning when one domain is all skull-stripped and the other all whole-head (the generator
    would learn to add or remove a skull), else ``None``."""
    stripped_a, stripped_b = ([v.skull_stripped for v in d.volumes] for d in (a, b))
    if all(stripped_a) and not any(stripped_b):
        which = "A (T1w)"
    elif all(stripped_b) and not any(stripped_a):
        which = "B (T2w)"
    else:
        return None
    return (f"domain {which} looks skull-stripped and the other whole-head (largest axial head area < "
            f"{SKULL_STRIPPED_AREA_CM2:g} cm^2): the generators will learn to remove or add the skull")


def _prepare(volume, spacing_mm: float | None, planes: bool):
    """RAS, then for each axis the scan is sliced along (:func:`~mri_translate.slabs.slicing_axes`; the
    through-plane one only without ``planes``), in-plane resampling to ``spacing_mm`` (``None``: none).

    Yields:
        ``(raw (X, Y, Z) float32, axis, voxel spacing (mm), number of axes)``, one axis at a time (bounded memory).
    """
    canonical = to_canonical(volume)
    spacing = voxel_spacing(canonical.affine)
    data = canonical[0].as_tensor().float()
    axes = slicing_axes(spacing, data.shape, planes)
    for axis in axes:
        if spacing_mm is None:
            yield data, axis, spacing, len(axes)
        else:
            yield (resample_inplane(data, spacing, axis, spacing_mm), axis,
                   np.where(np.arange(3) == axis, spacing, spacing_mm), len(axes))


def _store(name: str, raw: torch.Tensor, axis: int, spacing, k: int, min_foreground: float):
    """Normalise one prepared volume and keep what training needs, its slices along ``axis``.

    Returns:
        ``None`` (no usable slice) or ``(SourceVolume, raw crop)`` (the crop for standardisation).
    """
    normalized = RobustNormalize()(raw[None])
    low_high = tuple(normalized.meta[RANGE_KEY])
    normalized = normalized.as_tensor()[0]
    mask = foreground_mask(normalized + 1)
    area = head_area_cm2(head_mask(normalized + 1), spacing)
    mask, normalized, slices = (t.movedim(axis, 0) for t in (mask, normalized, raw))  # (N, H, W)
    kept = torch.nonzero(mask.flatten(1).float().mean(1) >= min_foreground).flatten()
    if not len(kept):
        return None
    lo, hi = max(0, int(kept[0]) - k // 2), min(len(mask), int(kept[-1]) + k // 2 + 1)
    rows, cols = torch.nonzero(mask.any(0).any(1)).flatten(), torch.nonzero(mask.any(0).any(0)).flatten()
    top, bottom = max(0, int(rows[0]) - MARGIN), int(rows[-1]) + MARGIN + 1
    left, right = max(0, int(cols[0]) - MARGIN), int(cols[-1]) + MARGIN + 1
    crop = (slice(lo, hi), slice(top, bottom), slice(left, right))
    source = SourceVolume(name, normalized[crop].half().contiguous(), lo, axis, kept - lo,
                          mask[kept].flatten(1).sum(1).double(), low_high, area, (top, left))
    return source, slices[crop].contiguous()


def load_slices(paths, k: int = 3, min_foreground: float = 0.05, spacing: float | None = None,
                standardize: bool | LandmarkStandardizer = False, planes: bool = False) -> Slices:
    """Load every source of one domain, one at a time, and keep its usable slices (see :class:`SourceVolume`).

    Args:
        paths: volumes, DICOM series folders, 2D image files or folders of 2D images.
        k: slices per slab.
        min_foreground: least fraction of foreground pixels in a slab's centre slice (at ``spacing``).
        spacing: in-plane pixel size (mm) everything is resampled to (``data.spacing``, 1 mm); the through-plane
            axis is kept. ``None``: each source keeps its own (inference must then do the same).
        standardize: ``False``: each source normalised on its own (RobustNormalize, per image for 2D images, as
            in ``convert``); ``True``: a :class:`~mri_translate.standardize.LandmarkStandardizer` fitted on these
            sources maps them (kept in ``Slices.standardizer``); a fitted standardizer: that one maps them.
        planes: store a near-isotropic volume along all three axes (``data.planes``), as ``convert`` slices it;
            the extra planes are named ``file (coronal)`` / ``file (sagittal)`` and each plane of a volume gets
            ``1 / planes`` of its sampling weight. Otherwise along its through-plane axis only.

    Raises:
        InputError: a source cannot be loaded, or no source yields a usable slice.
    """
    volumes, raws, landmarks, files = [], [], [], expand_sources(paths)
    for file in files:
        try:
            fitted = False  # this source's landmarks are in ``landmarks``
            for plane, (raw, axis, voxel, count) in enumerate(_prepare(load_volume(file), spacing, planes)):
                stored = _store(f"{file.name} ({PLANES[axis]})" if plane else file.name, raw, axis, voxel, k,
                                min_foreground)
                if stored is None:
                    continue
                stored[0].path, stored[0].weights = str(file), stored[0].weights / count
                volumes.append(stored[0])
                if standardize is not False:
                    if not fitted:
                        landmarks.append(volume_landmarks(raw))  # once per source, on its first stored plane
                        fitted = True
                    raws.append((stored[1], len(landmarks) - 1))
        except ConstantImageError:
            continue  # an all-black (or uniform) image has no usable slice, like an empty slice of a volume
    if not volumes:
        where = ", ".join(str(p) for p in paths) or "(no paths)"
        raise InputError(where, f"no usable slices (foreground >= {min_foreground:.0%}) in {len(files)} source(s)")
    standardizer = None
    if standardize is not False:
        standardizer = standardize if isinstance(standardize, LandmarkStandardizer) else \
            LandmarkStandardizer.from_landmarks(landmarks)
        for volume, (raw, index) in zip(volumes, raws):
            standardized = standardizer(raw[None], landmarks[index])
            volume.slices, volume.range = standardized[0].as_tensor().half(), tuple(standardized.meta[RANGE_KEY])
    return Slices(volumes, k, standardizer)


def pad_to(slabs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre ``(..., H, W)`` in ``height`` x ``width``: padded with background (-1) where smaller, cropped
    where larger."""
    dh, dw = height - slabs.shape[-2], width - slabs.shape[-1]
    return torch.nn.functional.pad(slabs, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=-1.0)


class SlabAugment:
    """MONAI random intensity/geometry transforms of one slab ``(k, H, W)`` in [-1, 1], the same for all k
    channels: a small affine (rotation up to ``degrees``, scale +-``scale``), a smooth bias field and a gamma
    change, each with its probability; applied to ``x + 1`` so the background stays at -1 (0 there).
    Draws come from :meth:`__call__`'s torch generator, so they follow the dataset's seed."""

    def __init__(self, degrees: float = 5.0, scale: float = 0.1, prob: float = 0.5):
        from monai.transforms import RandAdjustContrast, RandAffine, RandBiasField

        self.transforms = [
            RandAffine(prob=prob, rotate_range=(np.deg2rad(degrees),), scale_range=(scale, scale),
                       padding_mode="zeros", mode="bilinear"),
            RandBiasField(degree=3, coeff_range=(0.0, 0.2), prob=prob),
            RandAdjustContrast(prob=prob, gamma=(0.7, 1.5)),
        ]

    def __call__(self, slab: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        out = slab + 1
        for transform in self.transforms:
            transform.set_random_state(seed=int(torch.randint(2**31, (1,), generator=rng)))
            out = transform(out)
            out = (out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)).float()  # plain: a
            # MetaTensor would route every later network op through MONAI's __torch_function__ (2-3x slower)
        return (out - 1).clamp(-1, 1)


class UnpairedSlabDataset(Dataset):
    """Item ``i`` = ``{"A": slab, "B": slab, "paired": 0. or 1.}``: a slab of domain A and an independent one of B,
    each centred on a usable slice drawn in proportion to its foreground area, randomly cropped to ``crop`` x
    ``crop`` (padded with background first when smaller), flipped left-right with probability 1/2 where the slice
    has a left-right axis (axial and coronal slices: their first in-plane axis is X; sagittal: none) and
    augmented. With ``pairs`` (co-registered subjects, see :func:`paired_volumes`), a fraction ``paired_fraction``
    of the items are instead the SAME slab of one subject in both contrasts (same slice, crop and flip; no
    augmentation, which would misalign them), marked ``paired = 1``. When a pair has a region mask
    (:attr:`PairedVolume.region`, e.g. an expert lesion mask) every item also carries ``"region"``: ``(k, crop,
    crop)`` 1 inside the mask, cut like the pair's slab (0 in unpaired items and pairs without a mask).
    ``lesions`` (a :class:`~mri_translate.lesion_synthesis.SyntheticLesions`) paints lesions into paired items;
    every item then carries a ``"region"``, the painted lesions' soft weight (in [0, 1]) joined to any mask's.

    Randomness comes from ``(seed, epoch, i)``, so a seeded run sees the same samples whatever the number
    of workers. The item may be asked for as ``(epoch, i)`` (what :class:`ResumableSampler` yields, so workers that
    persist across epochs need no message from the main process) or as ``i`` of the epoch set by
    :meth:`set_epoch`.
    """

    def __init__(self, domain_a: Slices, domain_b: Slices, crop: int = 128, flip: bool = True, seed: int = 0,
                 length: int | None = None, augment: bool = False, pairs=(), paired_fraction: float = 0.5,
                 lesions=None):
        self.a, self.b = domain_a, domain_b
        self.crop, self.flip, self.seed, self.epoch = crop, flip, seed, 0
        self.augment = SlabAugment() if augment else None
        self.length = length or max(len(self.a), len(self.b))
        self.pairs, self.paired_fraction = list(pairs), paired_fraction if pairs else 0.0
        #: how often each paired plane is drawn (:attr:`PairedVolume.share`: each subject equally often)
        self.pair_shares = torch.tensor([pair.share for pair in self.pairs], dtype=torch.float64)
        self.regions = lesions is not None or any(pair.region is not None for pair in self.pairs)
        self.lesions = lesions

    def set_epoch(self, epoch: int) -> None:
        """Draw different samples in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        rng = torch.Generator().manual_seed(hash((self.seed, epoch, index)) % 2**62)
        if self.paired_fraction and bool(torch.rand((), generator=rng) < self.paired_fraction):
            return self._draw_pair(rng)
        item = {**{name: self._draw(domain, rng) for name, domain in (("A", self.a), ("B", self.b))},
                "paired": torch.tensor(0.0)}
        return {**item, "region": torch.zeros_like(item["A"])} if self.regions else item

    def _crop_and_flip(self, slab: torch.Tensor, axis: int, rng: torch.Generator) -> torch.Tensor:
        """Random ``crop`` x ``crop`` window (padded first when smaller) and left-right flip of ``(C, H, W)``."""
        slab = pad_to(slab, max(self.crop, slab.shape[-2]), max(self.crop, slab.shape[-1]))
        top = int(torch.randint(slab.shape[-2] - self.crop + 1, (1,), generator=rng))
        left = int(torch.randint(slab.shape[-1] - self.crop + 1, (1,), generator=rng))
        slab = slab[:, top: top + self.crop, left: left + self.crop]
        if self.flip and bool(torch.rand((), generator=rng) < 0.5) and axis != 0:
            slab = slab.flip(-2)  # X, patient left-right, is the first in-plane axis of axial/coronal slices
        return slab

    def _draw(self, domain: Slices, rng: torch.Generator) -> torch.Tensor:
        """One augmented ``(k, crop, crop)`` slab of ``domain``."""
        slab, axis = domain.slab(int(torch.multinomial(domain.weights, 1, generator=rng)))
        slab = self._crop_and_flip(slab, axis, rng)
        if self.augment is not None:
            slab = self.augment(slab, rng)
        return slab.contiguous()

    def _draw_pair(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One subject's slab in both contrasts, aligned: the same plane and slice, the common in-plane window of
        the two stored crops, then one crop and flip for both."""
        pair = self.pairs[int(torch.multinomial(self.pair_shares, 1, generator=rng))]
        index = pair.usable[int(torch.multinomial(pair.weights, 1, generator=rng))]
        a, b = pair.a.slab(index - pair.a.first, self.a.k), pair.b.slab(index - pair.b.first, self.b.k)
        (ta, la), (tb, lb) = pair.a.corner, pair.b.corner
        top, left = max(ta, tb), max(la, lb)
        bottom, right = min(ta + a.shape[-2], tb + b.shape[-2]), min(la + a.shape[-1], lb + b.shape[-1])
        stacks = [a[:, top - ta: bottom - ta, left - la: right - la],
                  b[:, top - tb: bottom - tb, left - lb: right - lb]]
        if self.regions:  # the mask is stored like the T1w (same slices and crop): its window is the T1w's
            region = torch.zeros_like(a) if pair.region is None else \
                pair.a.slab(index - pair.a.first, self.a.k, pair.region)
            stacks.append(region[:, top - ta: bottom - ta, left - la: right - la])
        both = self._crop_and_flip(torch.cat(stacks), pair.a.axis, rng).contiguous()
        item = {"A": both[: self.a.k], "B": both[self.a.k: self.a.k + self.b.k], "paired": torch.tensor(1.0)}
        if self.regions:  # padding is -1: outside the mask
            item["region"] = (both[self.a.k + self.b.k:] > 0.5).float()
        if self.lesions is not None:
            item["A"], item["B"], painted = self.lesions(item["A"], item["B"], rng)
            item["region"] = torch.maximum(item["region"], painted)
        return item


@dataclass
class PairedVolume:
    """One co-registered subject as stored in both domains along one plane: its :class:`SourceVolume` in A and in
    B, the source slice indices usable in both (``usable``), their sampling ``weights`` (the T1w's foreground
    areas), the plane's ``share`` of the subject's paired draws (1 / the subject's planes) and an optional
    ``region``: a mask of the subject (e.g. its lesions) stored like ``a.slices``, ``(N, H, W)`` uint8 0/1."""

    a: SourceVolume
    b: SourceVolume
    usable: list[int]
    weights: torch.Tensor
    share: float = 1.0
    region: torch.Tensor | None = None


def paired_volumes(a: Slices, b: Slices, pairs, regions: dict | None = None, spacing: float | None = None,
                   planes: bool = False) -> list[PairedVolume]:
    """The stored volumes of co-registered ``pairs`` ``[(t1, t2), ...]`` (already loaded into ``a`` and ``b``,
    found by path), one :class:`PairedVolume` per plane both contrasts were stored along.

    ``regions`` ``{t1: mask file}``: a mask on the grid of the pair's T1w (nonzero inside), prepared as the T1w was
    (``spacing`` and ``planes`` as given to :func:`load_slices`) and stored with it (:attr:`PairedVolume.region`).

    Raises:
        InputError: a pair's file left no usable slice, or the two share no usable slice; a region mask is not on
            its T1w's grid.
    """
    regions = {str(t1): mask for t1, mask in (regions or {}).items()}
    by_source = [{(v.path, v.axis): v for v in domain.volumes} for domain in (a, b)]
    found = []
    for t1, t2 in pairs:
        stored_a = [va for (path, _), va in by_source[0].items() if path == str(t1)]
        planes = [(va, by_source[1][str(t2), va.axis]) for va in stored_a if (str(t2), va.axis) in by_source[1]]
        if not planes:
            raise InputError(t2 if stored_a else t1, "gave no usable slice, so it cannot be trained as a pair")
        usable_planes = []
        for va, vb in planes:
            in_b = set((vb.first + vb.kept).tolist())
            usable = [(int(va.first + p), float(w)) for p, w in zip(va.kept, va.weights) if int(va.first + p) in in_b]
            if usable:
                usable_planes.append(PairedVolume(va, vb, [i for i, _ in usable], torch.tensor([w for _, w in usable])))
        if not usable_planes:
            raise InputError(t2, f"shares no usable slice with {t1}")
        masks = _stored_region(regions[str(t1)], t1, spacing, planes) if str(t1) in regions else {}
        for plane in usable_planes:
            plane.share = 1 / len(usable_planes)
            if masks:
                first, (top, left), (n, height, width) = plane.a.first, plane.a.corner, plane.a.slices.shape
                plane.region = masks[plane.a.axis][first: first + n, top: top + height, left: left + width]
        found.extend(usable_planes)
    return found


def _stored_region(mask, t1, spacing: float | None, planes: bool) -> dict[int, torch.Tensor]:
    """``{axis: (N, H, W) uint8}``: the region ``mask`` file prepared as :func:`load_slices` prepares ``t1``
    (RAS, in-plane resampling, one stack per slicing axis; 1 where the resampled mask is above 0.5), uncropped.

    Raises:
        InputError: the mask is not on the grid of ``t1``.
    """
    return {axis: ((raw > 0.5).movedim(axis, 0).to(torch.uint8).contiguous())
            for raw, axis, _, _ in _prepare(check_region(t1, mask), spacing, planes)}


def fixed_slabs(a: Slices, b: Slices, count: int = 2, crop: int = 128) -> dict[str, torch.Tensor]:
    """``count`` evenly spaced slabs of each domain, centre-cropped/padded to ``crop``, for the montages."""
    def pick(slices: Slices) -> torch.Tensor:
        index = np.linspace(0, len(slices.slabs) - 1, count + 2)[1:-1].round().astype(int)
        return pad_to(slices.slabs[index], crop, crop)
    return {"A": pick(a), "B": pick(b)}


class ResumableSampler(Sampler[tuple[int, int]]):
    """``(epoch, i)`` for each index ``i`` of ``sampler``, the epoch being the one last given to :meth:`set_epoch`
    (so the items depend only on ``(seed, epoch, i)``, see :class:`UnpairedSlabDataset`, in the main process and in
    persistent workers alike); after :meth:`skip` the next pass leaves its first ``count`` out: a run resumed in
    the middle of an epoch goes on with the items it had not reached instead of the epoch's first ones."""

    def __init__(self, sampler: Sampler[int]):
        self.sampler, self.pending, self.epoch = sampler, 0, 0

    def skip(self, count: int) -> None:
        """Leave the first ``count`` indices of the next pass out (once)."""
        self.pending = count

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass; passed on to the wrapped sampler where it has one (``DistributedSampler``)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        count, self.pending = self.pending, 0
        return ((self.epoch, i) for i in itertools.islice(iter(self.sampler), count, None))

    def __len__(self) -> int:
        return len(self.sampler) - self.pending


def loader_workers(setting: int | None, device: torch.device) -> int:
    """DataLoader worker processes for ``data.num_workers`` (``None``: 0 on a CPU, whose cores the networks need;
    on a GPU up to 4, leaving one core to the main process)."""
    if setting is not None:
        return setting
    return 0 if device.type == "cpu" else max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(a: Slices, b: Slices, config, context: Context = Context(), pairs=(),
                device: torch.device = torch.device("cpu")) -> DataLoader:
    """DataLoader of :class:`UnpairedSlabDataset` (settings from a :class:`~mri_translate.config.RunConfig`;
    ``pairs`` from :func:`paired_volumes`) with one epoch = ``train.epoch_length`` batches per rank, in order;
    under torchrun a ``DistributedSampler`` gives each rank its own share of the items. The sampler is a
    :class:`ResumableSampler` (call its ``set_epoch`` every epoch). Workers (:func:`loader_workers`) persist across
    epochs; batches for a GPU come in pinned memory."""
    from torch.utils.data import DistributedSampler, SequentialSampler

    data = config.data
    dataset = UnpairedSlabDataset(a, b, crop=data.crop, flip=data.flip, seed=config.train.seed,
                                  length=config.train.epoch_length * data.batch_size * context.world,
                                  augment=data.augment, pairs=pairs, paired_fraction=data.paired_fraction,
                                  lesions=SyntheticLesions(data.synthetic_lesions) if data.synthetic_lesions else None)
    sampler = DistributedSampler(dataset, context.world, context.rank, shuffle=True, seed=config.train.seed,
                                 drop_last=True) if context.active else SequentialSampler(dataset)
    workers = loader_workers(data.num_workers, device)
    return DataLoader(dataset, batch_size=data.batch_size, sampler=ResumableSampler(sampler), num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda", drop_last=True)
