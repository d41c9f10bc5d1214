"""The ``train`` verb: unpaired T1w (domain A) and T2w (domain B) sources in, a run directory out that is
a MONAI bundle (``configs/``, ``models/model.pt``, ``docs/``) plus ``checkpoint.pt``, ``progress.gif``,
``progress.png`` and ``losses.png``. The CLI and the bundle's ``train.json`` both call :func:`train`."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from ignite.engine import Events

from . import bundle, distributed, pairing
from .config import RunConfig, load_config, merge_overrides
from .contrast_prior import EDGE, ContrastPrior
from .data import (effective_k, fixed_slabs, load_slices, make_loader, paired_volumes,
                   skull_stripping_mismatch)
from .engine import CHECKPOINT, CycleGANTrainer, attach_handlers
from .errors import InputError, ModelError
from .inference import load_generator, stored_model
from .io import load_volume, remove_stale_temporaries
from .model_file import DIRECTIONS, resolve_model_path, sha256
from .networks import build_networks
from .runtime import read_checkpoint
from .validation import Validator

log = logging.getLogger("mri_translate.train")
RUN_OUTPUTS = ("configs", "models", "docs", "tensorboard", CHECKPOINT, "progress.gif", "progress.png",
               "losses.png", "validation.csv")


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder unless asked to resume or overwrite; remove temporary files a
    killed run left behind."""
    checkpoint = out / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise InputError(out, f"--resume given but there is no {CHECKPOINT} to resume from")
        remove_stale_temporaries(out)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "already holds files (another run?); use --resume to continue it or "
                                  "--overwrite to replace it")
        for name in RUN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def train(t1, t2, out, config: RunConfig | str | Path | None = None, overrides: dict | None = None,
          epochs: int | None = None, resume: bool = False, overwrite: bool = False,
          progress_bar: bool = True, val=None, paired: bool = False, register: bool = False,
          regions=()) -> CycleGANTrainer:
    """Train a 2.5D CycleGAN T1w <-> T2w.

    Args:
        t1, t2: lists of sources of each domain: volumes, DICOM series folders, 2D images or folders of them.
        out: run directory.
        config: a :class:`RunConfig`, a YAML preset path, or ``None``: the defaults, or when resuming the
            configuration saved in the checkpoint.
        overrides: nested ``{section: {key: value}}`` applied on top (``None`` values ignored).
        epochs: if given, ``train.iterations = epochs * train.epoch_length``.
        resume: continue from ``out/checkpoint.pt`` (iteration, optimisers and schedules restored).
        overwrite: replace an earlier run in ``out``.
        progress_bar: show a tqdm progress bar.
        val: co-registered ``(t1, t2)`` pairs never trained on: scored every ``train.val_every`` iterations;
            the best checkpoint becomes ``models/model.pt`` (:mod:`~mri_translate.validation`).
        paired: a T1w and a T2w of one subject (:func:`~mri_translate.pairing.match_subjects`) form a pair that
            adds the supervised L1 (``loss.paired``) in ``data.paired_fraction`` of the batches; the others stay
            unpaired (mixed mode). Each pair must share one grid, unless ``register``.
        register: with ``paired``, align each pair that is not already on one grid
            (:func:`~mri_translate.pairing.register`, files and checkerboards in ``out/pairs``).
        regions: with ``paired``, region mask files (e.g. expert lesion masks), each on the grid of its pair's
            T1w and named after the pair's subject (:func:`~mri_translate.pairing.match_regions`): the supervised
            L1 weighs their pixels ``loss.paired_region`` more.

    Returns:
        The finished trainer: ``run_dir`` is the run directory, ``nets`` the four networks, ``state`` the
        iteration and loss history.

    Raises:
        InputError: unusable sources or output folder. ModelError: checkpoint does not fit.
        TrainingError: losses became NaN (the last good checkpoint is kept).
    """
    out = Path(out)
    if config is None and resume and (out / CHECKPOINT).is_file():
        config = RunConfig.from_dict(read_checkpoint(out / CHECKPOINT)["config"], str(out / CHECKPOINT))
    if isinstance(config, RunConfig):
        config = RunConfig.from_dict(merge_overrides(config.to_dict(), overrides))
    else:
        config = load_config(config, overrides)
    if epochs is not None:
        config.train.iterations = epochs * config.train.epoch_length
    # a model to start from is read (and refused) before anything is written; a resumed run has its weights
    nets = initial_networks(config.train.init, config.model) if config.train.init and not resume else None
    t1, t2 = [str(p) for p in t1], [str(p) for p in t2]
    k, reason = effective_k(t1, t2, config.model.k)
    if reason and nets is not None:
        raise ModelError(f"{config.train.init}: its generators take model.k = {config.model.k} slices, but {reason}")
    context, device = distributed.setup(config.train.device)
    validator = Validator(val) if val and context.main else None  # bad pairs refused before anything is written
    masks = pairing.match_regions(pairing.match_subjects(t1, t2)[0], regions) if paired and regions else {}
    if masks and config.loss.paired_region == 0:
        log.warning("region masks given but loss.paired_region is 0: they change nothing, so they are not loaded")
        masks = {}
    for t1_file, mask in masks.items():  # a mask off its T1w's grid is refused before anything is written
        pairing.check_region(t1_file, mask)
    if context.main:
        _prepare_run_dir(out, resume, overwrite)
        _log_to_console()
    distributed.barrier()

    if nets is not None:
        path = init_path(config.train.init)
        log.info("generators start from %s (sha256 %s), discriminators fresh", path, sha256(path)[:12])
    if reason:
        log.warning("%s; recorded as model.k = 1 in this run", reason)
        config.model.k = k
    pairs = _pairs(t1, t2, out / "pairs", register, masks) if paired else []
    if register:  # the registered files replace the originals of each pair
        moved = {original: aligned for pair, aligned_pair, _ in pairs for original, aligned in zip(pair, aligned_pair)}
        t1, t2 = [moved.get(p, p) for p in t1], [moved.get(p, p) for p in t2]
    masks = {aligned[0]: mask for _, aligned, mask in pairs if mask is not None}
    pairs = [aligned for _, aligned, _ in pairs]
    data = config.data
    domain_a = load_slices(t1, k, data.min_foreground, data.spacing, data.standardize, data.planes)
    domain_b = load_slices(t2, k, data.min_foreground, data.spacing, data.standardize, data.planes)
    log.info("domain A (T1w): %d slices from %d source(s); domain B (T2w): %d slices from %d source(s); %d pair(s)%s",
             len(domain_a.names), len(t1), len(domain_b.names), len(t2), len(pairs),
             f", {len(masks)} with a region mask" if masks else "")
    mismatch = skull_stripping_mismatch(domain_a, domain_b)
    if mismatch:
        log.warning(mismatch)
    loader = make_loader(domain_a, domain_b, config, context,
                         paired_volumes(domain_a, domain_b, pairs, masks, data.spacing, data.planes), device)
    priors = None
    if config.loss.prior > 0 or config.loss.paired_focus > 0 or config.model.prior_residual:
        edge = max(1, round(EDGE / (data.spacing or 1.0)))  # EDGE pixels at 1 mm
        priors = {"AB": ContrastPrior.between(domain_a.slabs, domain_b.slabs, edge),
                  "BA": ContrastPrior.between(domain_b.slabs, domain_a.slabs, edge)}
    trainer = CycleGANTrainer(config, loader, device, nets=nets, rank=context.rank, priors=priors,
                              distributed=context.active)
    trainer.run_dir = out
    if resume:
        trainer.load_checkpoint(out / CHECKPOINT)
        log.info("resumed from %s at iteration %d", out / CHECKPOINT, trainer.state.iteration)
    normalization = {"A": domain_a.typical_range(), "B": domain_b.typical_range(),
                     "histogram_A": domain_a.intensity_histogram(), "histogram_B": domain_b.intensity_histogram()}
    trainer.export_state = bundle.export_state(
        normalization, data.spacing, [domain.standardizer for domain in (domain_a, domain_b)],
        {name: all(v.skull_stripped for v in domain.volumes) for name, domain in (("A", domain_a), ("B", domain_b))})
    if context.main:
        bundle.write_run_bundle(out, config, {"t1": t1, "t2": t2}, normalization)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: _set_epoch(loader, e.state.epoch))
    attach_handlers(trainer, out, fixed_slabs(domain_a, domain_b, crop=config.data.crop),
                    on_save=lambda e: bundle.export_model(trainer, out),
                    progress_bar=progress_bar and context.main, main=context.main, validator=validator)
    log.info("training %d iterations on %s (AMP: %s, %d process(es))", config.train.iterations, device,
             trainer.precision.describe(), context.world)
    try:
        if trainer.state.iteration < config.train.iterations:
            trainer.run()
        distributed.barrier()
    finally:
        distributed.teardown()
    return trainer


#: the fields of :class:`~mri_translate.config.ModelConfig` that shape a generator: a run started from a model
#: (``train.init``) takes them from it
GENERATOR_SHAPE = ("k", "channels", "res_units", "prior_residual")


def init_path(init) -> Path:
    """The model file of ``train.init``: ``default`` is the shipped model (unless a file of that name exists),
    a run directory its ``models/model.pt`` (else ``checkpoint.pt``)."""
    return resolve_model_path(None if str(init) == "default" and not Path(init).exists() else init)


def initial_networks(init, model) -> dict:
    """The four networks of a run that starts from the model ``init`` (a run directory, ``model.pt`` or
    ``checkpoint.pt``, read with ``weights_only=True``; ``default``: the shipped model): each generator with that
    direction's weights (a composed file's own per direction; an averaged file's members are not trained, only
    its own generators), the discriminators fresh. ``model`` (the run's :class:`~mri_translate.config.ModelConfig`)
    takes the file's :data:`GENERATOR_SHAPE`, so the run records and exports the shape it trains.

    Raises:
        InputError: no such file. ModelError: not an mri-translate model, or its two generators differ in shape.
    """
    path = init_path(init)
    state = read_checkpoint(path)
    first, second = ({key: getattr(stored_model(state, direction, path), key) for key in GENERATOR_SHAPE}
                     for direction in DIRECTIONS)
    if first != second:
        differ = ", ".join(f"model.{key} {first[key]!r} and {second[key]!r}" for key in GENERATOR_SHAPE
                           if first[key] != second[key])
        raise ModelError(f"{path}: its two generators differ in shape ({differ}); a run trains one shape for both")
    for key, value in first.items():
        setattr(model, key, value)
    nets = build_networks(model)
    nets.update({name: load_generator(state, direction, path) for direction, name in DIRECTIONS.items()})
    return nets


def _pairs(t1, t2, folder: Path, register: bool,
           masks: dict) -> list[tuple[tuple[str, str], tuple[str, str], Path | None]]:
    """``[(original pair, pair on one grid, its T1w's region mask on that grid or None), ...]`` of the subjects
    found in both lists: registered into ``folder`` when ``register`` and not already on one grid (under torchrun
    every rank registers, with the same seed, writing atomically; a moved T1w takes its mask from ``masks``
    ``{t1: mask}`` with it), else checked to share a grid.

    Raises:
        InputError: no subject has both contrasts, or a pair is not on one grid (without ``register``).
    """
    found, _, _ = pairing.match_subjects(t1, t2)
    if not found:
        raise InputError(t2[0] if t2 else "--t2", "--paired: no subject has both a T1w and a T2w (files are "
                                                  "matched by name without the contrast, e.g. sub-01_T1w/sub-01_T2w)")
    result = []
    for a, b in found:
        mask = masks.get(str(a))
        if register and pairing.same_grid(*(load_volume(path) for path in (a, b))) is None:
            log.info("%s and %s already share one grid: trained as a pair without registration", a, b)
            result.append(((str(a), str(b)), (str(a), str(b)), mask))
        elif register:
            folder.mkdir(parents=True, exist_ok=True)
            done = pairing.register(a, b, folder, t1_region=mask)
            log.info("registered %s and %s (%s moved): mutual information %.3f -> %.3f; %s", a, b, done.moved,
                     done.metric_initial, done.metric_final, done.checkerboard)
            result.append(((str(a), str(b)), (str(done.t1), str(done.t2)), done.t1_region))
        else:
            pairing.check_pair(a, b)
            result.append(((str(a), str(b)), (str(a), str(b)), mask))
    return result


def _set_epoch(loader, epoch: int) -> None:
    """New random draws each epoch: the sampler (a :class:`~mri_translate.data.ResumableSampler`) tags every index
    with the epoch and passes it on to a ``DistributedSampler`` under torchrun."""
    loader.sampler.set_epoch(epoch)


def train_bundle(dataset_dir=None, output_dir="runs/train", device: str = "auto", max_epochs=None,
                 preset=None, config: dict | None = None, resume: bool = False, overwrite: bool = False,
                 sources: dict | None = None) -> CycleGANTrainer:
    """Entry of the bundle's ``train.json``: sources from ``dataset_dir`` (see :func:`bundle.find_domains`),
    else the ``{"t1": [...], "t2": [...]}`` lists a run bundle recorded, else synthetic subjects generated
    beside ``output_dir``; then :func:`train`."""
    output_dir = Path(output_dir)
    if dataset_dir is None and sources:
        t1, t2 = sources["t1"], sources["t2"]
    elif dataset_dir is None:
        from .synthetic import write_dataset

        dataset_dir = output_dir.parent / f"{output_dir.name}-synthetic-data"
        context, _ = distributed.setup(device)
        if context.main:
            write_dataset(dataset_dir, n_subjects=4)
        distributed.barrier()
    if dataset_dir is not None:
        t1, t2 = bundle.find_domains(dataset_dir)
    overrides = merge_overrides(config or {}, {"train": {"device": device}})
    return train(t1, t2, output_dir, config=preset, overrides=overrides, epochs=max_epochs, resume=resume,
                 overwrite=overwrite, progress_bar=sys.stderr.isatty())


class _CurrentStderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is at the time of each message (so it never
    holds on to a closed or replaced stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_console() -> None:
    """INFO messages of the package on stderr (once), unless the caller configured logging."""
    logger = logging.getLogger("mri_translate")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
