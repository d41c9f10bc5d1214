"""Configuration: one dataclass per area, read from ``configs/*.yaml`` presets and saved beside every
checkpoint, so a model rebuilds from its run directory alone. The CLI and the MONAI bundle both build a
:class:`RunConfig` with :func:`load_config` and hand it to the same functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError


@dataclass
class ModelConfig:
    """Generators (2.5D modified U-Net) and discriminators (PatchGAN).

    ``k``: neighbouring slices in and out (odd); ``channels``: U-Net widths per level (each level halves
    the resolution); ``res_units``: residual units per block; ``disc_channels``/``disc_layers``: PatchGAN width
    and depth (3 layers = the 70x70 receptive field); ``prior_residual``: the generators learn a correction of
    the contrast prior's map (:class:`~mri_translate.networks.PriorResidualUNet`) and start as that map;
    ``inverted_weight``: at inference, the share (in [0, 1)) of the *inverted input* in the translation: the
    input's brain/head intensities reversed and standardised onto the target domain's scale, a map with no
    learning that keeps the input's sharp anatomy (:func:`~mri_translate.inference.inverted_input`; needs
    ``data.standardize``). Chosen after training, per direction, by leave-one-out (docs/benchmarks.md);
    ``guided_radius_mm``: at inference, before that average, the generator's translation is refitted in windows
    of this radius (mm) as a local linear function of the inverted input (a guided filter,
    :func:`~mri_translate.inference.guided_filter`), so its edges are the acquired scan's; 0: off (needs
    ``data.standardize``). Chosen the same way; ``mirror``: at inference, average each translation with that of
    the left-right mirrored scan (test-time augmentation, twice the network work), for the model file's members
    too.
    """

    k: int = 3
    channels: tuple[int, ...] = (32, 64, 128, 256)
    res_units: int = 2
    disc_channels: int = 64
    disc_layers: int = 3
    prior_residual: bool = False
    inverted_weight: float = 0.0
    guided_radius_mm: float = 0.0
    mirror: bool = True


@dataclass
class LossConfig:
    """CycleGAN objective weights: the generators' adversarial term ``adversarial``, cycle L1 ``lambda_cycle``,
    identity L1 ``identity * lambda_cycle``, the contrast-prior L1 weight ``prior``
    (:mod:`~mri_translate.contrast_prior`), fading linearly to zero over the first ``prior_fraction`` of the
    iterations (``.inf`` in YAML: constant), the supervised L1 weight ``paired`` of co-registered pairs
    (``|G_AB(x) - y|`` and ``|G_BA(y) - x|``, paired batches only), ``paired_focus``: that L1 weighted per pixel by
    ``1 + paired_focus * |y - prior(x)|`` inside the brain (:func:`~mri_translate.cyclegan.focus_weights`: where the
    no-learning map misses the truth, as on lesions; 0 = unweighted), ``paired_region``: that L1's pixels inside a
    pair's region mask (``train --region-masks``, e.g. expert lesion masks) and in the lesions that
    ``data.synthetic_lesions`` paints (by their soft weight) weighted ``paired_region`` more (on top of the focus; 0 =
    neither is used), and the size of the history pool of fakes shown to each discriminator.

    Defaults: the prior at full weight over the whole run, as the shipped recipes keep it (on the case study's
    folders a run that lets it fade ends level with the no-learning baseline's SSIM T1w -> T2w, one that keeps
    it above it: docs/benchmarks.md), and no identity term, which would pull ``G_AB(T2w)`` towards the T2w itself and so
    fight the contrast inversion the prior asks for."""

    adversarial: float = 1.0
    lambda_cycle: float = 10.0
    identity: float = 0.0
    prior: float = 10.0
    prior_fraction: float = float("inf")
    paired: float = 10.0
    paired_focus: float = 0.0
    paired_region: float = 0.0
    pool_size: int = 50


@dataclass
class OptimConfig:
    """Adam for all four networks; learning rate constant for the first ``1 - decay_fraction`` of the
    iterations, then linearly to zero."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 0.5


@dataclass
class DataConfig:
    """Slab sampling: in-plane ``crop`` (pixels, a multiple of 16; smaller slices are padded), slices whose
    foreground covers less than ``min_foreground`` of the slice are skipped, random left-right ``flip``, MONAI
    ``augment`` (small affine, bias field, gamma). ``spacing``: the in-plane pixel size (mm) every scan is
    resampled to, in training and in ``convert`` (``null``: each scan keeps its own). ``standardize``: per-volume
    piecewise-linear landmark standardisation learned on each domain (:mod:`~mri_translate.standardize`) instead
    of a two-percentile rescaling. ``planes``: near-isotropic scans are also sampled as coronal and sagittal slabs,
    the planes ``convert`` translates them along and averages (:func:`~mri_translate.slabs.slicing_axes`).
    ``paired_fraction``: the share of batches drawn from co-registered pairs (``train --paired``) when there are
    any. ``synthetic_lesions``: the share of paired items into which white-matter lesions are painted, dark on the
    T1w and bright on the T2w (:class:`~mri_translate.lesion_synthesis.SyntheticLesions`; 0 = none).
    ``num_workers``: DataLoader worker processes drawing the slabs (persistent across epochs); ``null`` = 0 on a
    CPU, where the cores are better spent on the networks, and up to 4 (one core left free) on a GPU."""

    crop: int = 128
    batch_size: int = 1
    min_foreground: float = 0.05
    flip: bool = True
    augment: bool = True
    spacing: float | None = 1.0
    standardize: bool = True
    planes: bool = False
    paired_fraction: float = 0.5
    synthetic_lesions: float = 0.0
    num_workers: int | None = None


#: ``train.amp`` values: ``True`` = bf16 where the GPU supports it, else fp16; bf16 on a CPU that computes it
#: natively (AVX512-BF16 / AMX), full precision on other CPUs; ``"bf16"`` / ``"fp16"`` force that dtype on any
#: device; ``False`` = full precision.
AMP_CHOICES = (True, False, "bf16", "fp16")


def is_amp_choice(value) -> bool:
    """``value`` is one of :data:`AMP_CHOICES` (``1`` and ``0`` are not booleans here)."""
    return value is True or value is False or value in AMP_CHOICES[2:]


@dataclass
class TrainConfig:
    """Length and bookkeeping of a run: ``iterations`` optimisation steps (``epoch_length`` per epoch),
    checkpoint, progress-montage and validation (``val_every``, with ``train --val``) intervals, seed, ``device``
    (``auto`` = cuda when present) and ``amp`` (mixed precision, one of :data:`AMP_CHOICES`). ``ema``: decay per
    iteration of an exponential moving average of the generators' weights (0: none); when set, the average is
    what validation scores, the montages show and ``models/model.pt`` carries. ``log_every``: log every loss term
    raw every this many iterations (0: never; the progress bar shows moving averages of G, D_A and D_B). ``init``:
    start the generators from a model instead of random weights (fine-tuning; a run directory, ``model.pt`` or
    ``checkpoint.pt``, or ``default``: the shipped model), which also fixes their shape (``model.k``,
    ``channels``, ``res_units``, ``prior_residual``); the discriminators start fresh
    (:func:`~mri_translate.train.initial_networks`)."""

    iterations: int = 2000
    epoch_length: int = 100
    checkpoint_every: int = 200
    progress_every: int = 100
    val_every: int = 500
    seed: int = 0
    device: str = "auto"
    amp: bool | str = True
    ema: float = 0.0
    log_every: int = 0
    init: str | None = None


@dataclass
class RunConfig:
    """Everything a training run needs, grouped by area."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists, an infinite number as the text ``"inf"``, which :meth:`from_dict`
        reads back), ready for strict JSON and YAML."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict | None, source: str = "configuration") -> RunConfig:
        """Build from a nested dict of overrides; unknown sections or keys raise :class:`InputError`."""
        config = cls()
        for section, entries in (values or {}).items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise InputError(source, f"unknown section '{section}' (expected model, loss, optim, data, train)")
            part = getattr(config, section)
            known = {f.name: f for f in dataclasses.fields(part)}
            for key, value in (entries or {}).items():
                if key not in known:
                    raise InputError(source, f"unknown key '{section}.{key}' (expected one of {', '.join(known)})")
                setattr(part, key, _typed(f"{section}.{key}", known[key].type, value, source))
        config.validate(source)
        return config

    def validate(self, source: str = "configuration") -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.model.k < 1 or self.model.k % 2 == 0:
            raise InputError(source, f"model.k must be a positive odd number, got {self.model.k}")
        if self.data.crop % 16 or self.data.crop < 32:
            raise InputError(source, f"data.crop must be a multiple of 16 and >= 32, got {self.data.crop}")
        if not 1 <= len(self.model.channels) <= 4:
            raise InputError(source, f"model.channels needs 1 to 4 levels (slices are padded to a multiple of "
                                     f"16 = 2 ** 4), got {len(self.model.channels)}")
        if min(self.train.iterations, self.train.epoch_length, self.train.val_every) < 1:
            raise InputError(source, "train.iterations, train.epoch_length and train.val_every must be >= 1")
        if self.train.log_every < 0:
            raise InputError(source, f"train.log_every must be >= 0 (0: no raw loss lines), got {self.train.log_every}")
        if not 0 <= self.train.ema < 1:
            raise InputError(source, f"train.ema must be in [0, 1) (0: no weight averaging), got {self.train.ema}")
        if not 0 <= self.model.inverted_weight < 1:
            raise InputError(source, f"model.inverted_weight must be in [0, 1) (0: the generator alone), got "
                                     f"{self.model.inverted_weight}")
        if self.model.guided_radius_mm < 0:
            raise InputError(source, f"model.guided_radius_mm must be >= 0 (0: off), got {self.model.guided_radius_mm}")
        for key in ("inverted_weight", "guided_radius_mm"):
            if getattr(self.model, key) and not self.data.standardize:
                raise InputError(source, f"model.{key} needs data.standardize: true (the inverted input is "
                                         "standardised onto the target domain's scale)")
        for key in ("paired_fraction", "synthetic_lesions"):
            if not 0 <= getattr(self.data, key) <= 1:
                raise InputError(source, f"data.{key} is a share of the items and must be in [0, 1], got "
                                         f"{getattr(self.data, key)}")
        if not is_amp_choice(self.train.amp):
            raise InputError(source, f"train.amp must be true, false, bf16 or fp16, got {self.train.amp!r}")


#: the words for each annotation of the configuration's fields, and what they accept (a bool is no number)
_KINDS = {"int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
          "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
          "bool": ("true or false", lambda v: isinstance(v, bool)),
          "str": ("a string", lambda v: isinstance(v, str)),
          "None": ("null", lambda v: v is None),
          "tuple[int, ...]": ("a list of integers", lambda v: isinstance(v, (list, tuple)) and all(
              isinstance(i, int) and not isinstance(i, bool) for i in v))}


def _typed(name: str, annotation: str, value, source: str):
    """``value`` checked against the field's ``annotation`` (e.g. ``"float | None"``); lists become tuples and a
    number written as text (YAML reads ``1e-4`` as a string) becomes that number.

    Raises:
        InputError: the value has the wrong type, e.g. ``data.crop must be an integer, got 'big'``.
    """
    kinds = [kind.strip() for kind in str(annotation).split("|")]
    if "float" in kinds and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not any(_KINDS[kind][1](value) for kind in kinds):
        words = " or ".join(_KINDS[kind][0] for kind in kinds)
        raise InputError(source, f"{name} must be {words}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return str(value)  # JSON has no infinity; "inf" / "-inf" read back through _typed
    return value


def load_config(path=None, overrides: dict | None = None) -> RunConfig:
    """Read a YAML preset (sections as in :class:`RunConfig`, optionally on a ``base:``; :func:`read_preset`) and
    apply nested ``overrides`` on top."""
    values = read_preset(Path(path)) if path is not None else {}
    return RunConfig.from_dict(merge_overrides(values, overrides), source=str(path or "configuration"))


def read_preset(path: Path, below: tuple = ()) -> dict:
    """The sections of the YAML preset at ``path``. A top-level ``base: other.yaml`` (relative to ``path``) is read
    first and this file's keys replace its keys one by one within each section, so a variant of a recipe names
    only what it changes.

    Raises:
        InputError: the file cannot be read, is not a mapping of sections, or its ``base`` chain comes back to it.
    """
    import yaml

    if path.resolve() in below:
        raise InputError(path, "configuration's base chain comes back to this file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise InputError(path, f"cannot read configuration ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(values, dict):
        raise InputError(path, "configuration must be a mapping of sections")
    base = values.pop("base", None)
    for section, entries in values.items():
        if not isinstance(entries, dict | None):
            raise InputError(path, f"section {section} must be a mapping of keys, got {entries!r}")
    if base is None:
        return values
    if not isinstance(base, str):
        raise InputError(path, f"base must be the path of another preset, got {base!r}")
    # null is a value in a preset (e.g. data.spacing: null), unlike in overrides
    return merge_overrides(read_preset(path.parent / base, below + (path.resolve(),)), values, skip_none=False)


def merge_overrides(base: dict, overrides: dict | None, skip_none: bool = True) -> dict:
    """A copy of nested ``base`` with ``{section: {key: value}}`` overrides applied (``None`` values ignored unless
    ``skip_none`` is false)."""
    merged = {section: dict(entries or {}) for section, entries in base.items()}
    for section, entries in (overrides or {}).items():
        merged.setdefault(section, {}).update({k: v for k, v in (entries or {}).items()
                                               if v is not None or not skip_none})
    return merged
