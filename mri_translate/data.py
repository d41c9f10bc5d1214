"""Unpaired 2.5D slab datasets: domain A (T1w) and domain B (T2w) drawn independently from any mix of
volumes, DICOM series and folders of 2D slices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import Context
from .errors import ConstantImageError, InputError
from .io import list_images_2d, load_volume, voxel_spacing
from .slabs import through_plane_axis, volume_to_slabs
from .transforms import RANGE_KEY, RobustNormalize, foreground_mask, to_canonical


@dataclass
class Slices:
    """The usable slices of one domain, normalised: ``slabs`` ``(N, k, H, W)`` in [-1, 1], where they came
    from (``names``, for messages) and the ``(low, high)`` intensity range of every source."""

    slabs: torch.Tensor
    names: list[str]
    ranges: list[tuple[float, float]]

    def typical_range(self) -> tuple[float, float]:
        """Median ``(low, high)`` over the sources: the range outputs in this domain are mapped back to."""
        low, high = np.median(np.asarray(self.ranges), axis=0)
        return float(low), float(high)

    def intensity_histogram(self, bins: int = 64) -> list[float]:
        """In-foreground histogram of the centre slices (:func:`~mri_translate.metrics.in_mask_histogram`):
        the domain's intensity distribution, against which ``convert --qc`` compares its outputs."""
        from .metrics import in_mask_histogram

        centre = self.slabs[:, self.slabs.shape[1] // 2].movedim(0, -1)  # (H, W, N) in [-1, 1]
        return in_mask_histogram((centre + 1) / 2, foreground_mask(centre + 1), bins).tolist()


def prepare_volume(volume, k: int, normalize: RobustNormalize):
    """Canonical orientation, normalisation and slabs of one loaded volume ``(1, X, Y, Z)``.

    Returns:
        ``(slabs (N, k, H', W'), layout, canonical normalised volume)``; the slicing axis is the through-plane
        (largest spacing) axis of the canonical volume.
    """
    canonical = normalize(to_canonical(volume))
    axis = through_plane_axis(voxel_spacing(canonical.affine))
    slabs, layout = volume_to_slabs(canonical[0].as_tensor(), k, axis)
    return slabs, layout, canonical


def expand_sources(paths) -> list[Path]:
    """Each path as given, except a folder of 2D images, which becomes its image files (a slice each)."""
    files: list[Path] = []
    for path in map(Path, paths):
        images = list_images_2d(path) if path.is_dir() else []
        files.extend(images or [path])
    return files


def load_slices(paths, k: int = 3, min_foreground: float = 0.05) -> Slices:
    """Load every source of one domain and keep the slabs whose centre slice is not empty background.

    Args:
        paths: volumes, DICOM series folders, 2D image files or folders of 2D images.
        k: slices per slab.
        min_foreground: least fraction of foreground pixels in the centre slice.

    Raises:
        InputError: a source cannot be loaded, or no source yields a usable slice.
    """
    normalize = RobustNormalize()
    kept, names, ranges = [], [], []
    files = expand_sources(paths)
    for file in files:
        try:
            slabs, _, canonical = prepare_volume(load_volume(file), k, normalize)
        except ConstantImageError:
            continue  # an all-black (or uniform) image has no usable slice, like an empty slice of a volume
        ranges.append(canonical.meta[RANGE_KEY])
        centre = slabs[:, k // 2]
        fraction = foreground_mask(centre + 1).flatten(1).float().mean(1)
        keep = fraction >= min_foreground
        kept.append(slabs[keep])
        names += [f"{file.name}[{i}]" for i in torch.nonzero(keep).flatten().tolist()]
    if not names:
        where = ", ".join(str(p) for p in paths) or "(no paths)"
        raise InputError(where, f"no usable slices (foreground >= {min_foreground:.0%}) in {len(files)} source(s)")
    return Slices(_to_common_size(kept), names, ranges)


def pad_to(slabs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre ``(..., H, W)`` in ``height`` x ``width``: padded with background (-1) where smaller, cropped
    where larger."""
    dh, dw = height - slabs.shape[-2], width - slabs.shape[-1]
    return torch.nn.functional.pad(slabs, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=-1.0)


def _to_common_size(parts: list[torch.Tensor]) -> torch.Tensor:
    """Pad every slab to the largest in-plane size (with background -1) and stack them."""
    height = max(p.shape[-2] for p in parts)
    width = max(p.shape[-1] for p in parts)
    return torch.cat([pad_to(p, height, width) for p in parts])


class UnpairedSlabDataset(Dataset):
    """Item ``i`` = ``{"A": slab, "B": slab}``: a random slab of domain A and an independent one of B,
    each randomly cropped (padded first when smaller) to ``crop`` x ``crop`` and left-right flipped.

    Randomness comes from ``(seed, epoch, i)``, so a seeded run sees the same samples whatever the number
    of workers; call :meth:`set_epoch` each epoch.
    """

    def __init__(self, domain_a: Slices, domain_b: Slices, crop: int = 128, flip: bool = True, seed: int = 0,
                 length: int | None = None):
        self.a, self.b = domain_a.slabs, domain_b.slabs
        self.crop, self.flip, self.seed, self.epoch = crop, flip, seed, 0
        self.length = length or max(len(self.a), len(self.b))

    def set_epoch(self, epoch: int) -> None:
        """Draw different samples in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**62)
        a = self.a[int(torch.randint(len(self.a), (1,), generator=rng))]
        b = self.b[int(torch.randint(len(self.b), (1,), generator=rng))]
        return {"A": self._augment(a, rng), "B": self._augment(b, rng)}

    def _augment(self, slab: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """``(k, H, W)`` -> ``(k, crop, crop)``."""
        slab = pad_to(slab, max(self.crop, slab.shape[-2]), max(self.crop, slab.shape[-1]))
        top = int(torch.randint(slab.shape[-2] - self.crop + 1, (1,), generator=rng))
        left = int(torch.randint(slab.shape[-1] - self.crop + 1, (1,), generator=rng))
        slab = slab[:, top: top + self.crop, left: left + self.crop]
        if self.flip and bool(torch.rand((), generator=rng) < 0.5):
            slab = slab.flip(-2)  # axis X of a RAS axial slice: patient left-right
        return slab.contiguous()


def fixed_slabs(a: Slices, b: Slices, count: int = 2, crop: int = 128) -> dict[str, torch.Tensor]:
    """``count`` evenly spaced slabs of each domain, centre-cropped/padded to ``crop``, for the montages."""
    def pick(slices: Slices) -> torch.Tensor:
        index = np.linspace(0, len(slices.slabs) - 1, count + 2)[1:-1].round().astype(int)
        return pad_to(slices.slabs[index], crop, crop)
    return {"A": pick(a), "B": pick(b)}


def make_loader(a: Slices, b: Slices, config, context: Context = Context()) -> DataLoader:
    """DataLoader of :class:`UnpairedSlabDataset` (settings from a :class:`~mri_translate.config.RunConfig`) with
    one epoch = ``train.epoch_length`` batches per rank;
    under torchrun a ``DistributedSampler`` gives each rank its own share of the items."""
    from torch.utils.data import DistributedSampler

    data = config.data
    dataset = UnpairedSlabDataset(a, b, crop=data.crop, flip=data.flip, seed=config.train.seed,
                                  length=config.train.epoch_length * data.batch_size * context.world)
    sampler = DistributedSampler(dataset, context.world, context.rank, shuffle=True, seed=config.train.seed,
                                 drop_last=True) if context.active else None
    return DataLoader(dataset, batch_size=data.batch_size, shuffle=False, sampler=sampler,
                      num_workers=data.num_workers, drop_last=True)
