"""The MONAI training workflow: a ``Trainer`` subclass that owns one CycleGAN step, its plan (how long the run
is, which fixes the learning-rate decay and the prior's fade), and the handlers that hook into its events
(learning-rate schedule, checkpoints and resume, console stats, progress bar, progress montages and loss
curves). Training only: inference never imports this module."""

from __future__ import annotations

import copy
import logging
import math
import random
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.handlers import LrScheduleHandler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from . import visualize
from .config import RunConfig
from .cyclegan import CycleGANLoss, ImagePool, cyclegan_step
from .errors import ModelError, TrainingError
from .io import atomic_path
from .networks import PriorResidualUNet, build_networks
from .runtime import precision_for, read_checkpoint

log = logging.getLogger("mri_translate.train")
CHECKPOINT = "checkpoint.pt"
#: Steps in a row with a non-finite loss that a run under fp16's grad scaler skips before it stops.
OVERFLOW_PATIENCE = 10
SHOWN = ("G", "D_A", "D_B")  # the loss terms on the progress bar and in the closing summary
SMOOTHING = 50  # iterations their moving averages span


def linear_decay(total: int, decay_fraction: float):
    """LambdaLR factor of the step count: 1 for the first ``(1 - decay_fraction) * total`` steps, then linearly
    to 0 at ``total``."""
    start = int(total * (1 - decay_fraction))

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1 - (step - start) / max(1, total - start))
    return factor


def prior_fade(total: int, fraction: float):
    """Prior weight factor of the 1-based iteration: 1 at the first, linearly to 0 at ``fraction * total``."""
    end = fraction * total

    def factor(iteration: int) -> float:
        return max(0.0, 1 - (iteration - 1) / end) if end > 0 else 0.0
    return factor


@dataclass
class Plan:
    """How long a run is planned to be, which fixes its schedules (learning-rate decay, prior fade).

    Extending (or shortening) a run on resume (``--resume --iterations N``) re-plans each schedule so that it
    continues from its value at the resumed iteration ``anchor`` and ends where it would end in a run planned
    for ``N``: ``factor(i) = scale * base_N(i) / base_N(anchor)``, ``scale`` being the old schedule's value at
    ``anchor``. The learning rate never jumps back up and a faded prior stays faded. Saved in every checkpoint.
    """

    iterations: int
    anchor: int = 0
    lr_scale: float = 1.0
    prior_scale: float = 1.0

    def lr_factor(self, decay_fraction: float):
        """LambdaLR factor of the scheduler's step count (= iterations done)."""
        return _continued(linear_decay(self.iterations, decay_fraction), self.anchor, self.lr_scale)

    def prior_factor(self, fraction: float):
        """Prior weight factor of the 1-based iteration."""
        return _continued(prior_fade(self.iterations, fraction), self.anchor + 1, self.prior_scale)

    def extended(self, iterations: int, done: int, decay_fraction: float, prior_fraction: float) -> Plan:
        """The plan for ``iterations`` in all, continuing both schedules after ``done`` iterations."""
        return Plan(iterations, done, self.lr_factor(decay_fraction)(done),
                    self.prior_factor(prior_fraction)(done + 1))


def _continued(base, anchor: int, scale: float):
    """``base`` rescaled to equal ``scale`` at ``anchor`` (``base`` itself for a fresh plan)."""
    if anchor == 0:
        return base
    reference = base(anchor)
    return lambda i: scale * base(i) / reference if reference > 0 else 0.0


class CycleGANTrainer(Trainer):
    """MONAI trainer running one CycleGAN step per iteration.

    ``engine.state.output`` holds the float loss terms of :func:`~mri_translate.cyclegan.cyclegan_step`;
    ``engine.state.history`` accumulates them for the loss plot. A step with a non-finite loss stops the run
    (:class:`~mri_translate.errors.TrainingError`), except under fp16's grad scaler, which leaves out the updates
    whose gradients overflowed: there the step is skipped (logged, its iteration kept in :attr:`skipped`, no
    history, no weight-average update) and only :data:`OVERFLOW_PATIENCE` such steps in a row stop the run.
    Under torchrun the four networks run wrapped in ``DistributedDataParallel`` (gradients averaged over the
    ranks during backward); ``nets`` always holds the plain modules, which are what checkpoints store.
    Checkpoints, montages and logging attach to events from outside (see :func:`attach_handlers`).

    Args:
        config: the run's configuration; ``config.train.iterations`` is the plan of a new run.
        loader: batches ``{"A": (B, k, H, W), "B": (B, k, H, W)}`` in [-1, 1] from
            :func:`~mri_translate.data.make_loader` (a run resumed mid-epoch skips the batches of that epoch it
            already trained on through its :class:`~mri_translate.data.ResumableSampler`).
        device: where the networks live.
        nets: the four networks (default: built from ``config.model``).
        rank: this process's rank (seeds its image pools; rank 0's are checkpointed and restored, the others
            start empty on resume and refill within ``loss.pool_size`` fakes).
        priors: contrast priors ``{"AB", "BA"}`` (:mod:`~mri_translate.contrast_prior`) or ``None``: the loss's
            pull and, for :class:`~mri_translate.networks.PriorResidualUNet` generators, the map they correct.
        distributed: wrap the networks in ``DistributedDataParallel`` (the process group must be up).
    """

    def __init__(self, config: RunConfig, loader: DataLoader, device: torch.device, nets=None, rank: int = 0,
                 priors=None, distributed: bool = False):
        self.config = config
        train = config.train
        super().__init__(device=device, max_epochs=math.ceil(train.iterations / train.epoch_length),
                         data_loader=loader, epoch_length=train.epoch_length)
        torch.manual_seed(train.seed)
        self.nets = {name: net.to(device) for name, net in (nets or build_networks(config.model)).items()}
        for name, key in (("G_AB", "AB"), ("G_BA", "BA")):  # before DDP broadcasts rank 0's buffers
            if priors is not None and isinstance(self.nets[name], PriorResidualUNet):
                self.nets[name].set_prior(priors[key])
        # weight averages of the generators (train.ema), updated after every step; identical on every rank
        self.averages = {name: copy.deepcopy(self.nets[name]).requires_grad_(False)
                         for name in ("G_AB", "G_BA")} if train.ema else {}
        self.step_nets = self.nets
        if distributed:  # DDP broadcasts rank 0's weights at construction and averages gradients in backward
            ids = [device.index] if device.type == "cuda" else None
            self.step_nets = {name: DistributedDataParallel(net, device_ids=ids) for name, net in self.nets.items()}
        opt = config.optim
        adam = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2))
        self.optimizers = {
            "G": torch.optim.Adam([*self.nets["G_AB"].parameters(), *self.nets["G_BA"].parameters()], **adam),
            "D": torch.optim.Adam([*self.nets["D_A"].parameters(), *self.nets["D_B"].parameters()], **adam),
        }
        self.plan = Plan(train.iterations)
        # the lambdas read self.plan at every step, so a plan re-made on resume takes effect
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda step: self.plan.lr_factor(
            self.config.optim.decay_fraction)(step)) for k, o in self.optimizers.items()}
        self.loss = CycleGANLoss(config.loss.lambda_cycle, config.loss.identity, config.loss.paired,
                                 config.loss.adversarial, config.loss.paired_focus, config.loss.paired_region)
        rng = random.Random(train.seed + rank)  # pools are local to each rank
        self.rank = rank
        self.pools = {"A": ImagePool(config.loss.pool_size, rng), "B": ImagePool(config.loss.pool_size, rng)}
        self.priors = priors
        self.precision = precision_for(device, train.amp)
        # not ``self.scaler``: MONAI's Trainer.run() resets that attribute from its own ``amp`` flag
        self.grad_scaler = self.precision.grad_scaler()
        self.export_state: dict = {}  # what model.pt and checkpoints carry besides weights (normalisation)
        self.validation: list[dict] = []  # every validation result, with its iteration (checkpointed)
        self.skipped: list[int] = []  # iterations whose non-finite fp16 loss was skipped (checkpointed)
        self.best: dict | None = None  # {"iteration", "score"} of the exported model when validating
        self.state.history = {}

    @property
    def generators(self) -> dict[str, torch.nn.Module]:
        """The generators ``{"G_AB", "G_BA"}`` that are validated and exported: the weight averages when
        ``train.ema`` is set, else the trained networks."""
        return self.averages or {name: self.nets[name] for name in ("G_AB", "G_BA")}

    @torch.no_grad()
    def update_averages(self, iteration: int) -> None:
        """Move each average towards its generator: ``avg += (1 - d) (w - avg)``, with the decay ``d`` warmed up
        as ``min(train.ema, (1 + t) / (10 + t))`` so the first iterations do not pull towards the initial
        weights; buffers are copied."""
        decay = min(self.config.train.ema, (1 + iteration) / (10 + iteration))
        for name, average in self.averages.items():
            net = self.nets[name]
            torch._foreach_lerp_(list(average.parameters()), list(net.parameters()), 1 - decay)
            for mine, theirs in zip(average.buffers(), net.buffers()):
                mine.copy_(theirs)

    def prior_weight(self, iteration: int) -> float:
        """Weight of the contrast prior at ``iteration`` (1-based): ``loss.prior`` times the plan's fade."""
        loss = self.config.loss
        return loss.prior * self.plan.prior_factor(loss.prior_fraction)(iteration)

    def _iteration(self, engine, batchdata: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a = batchdata["A"].to(engine.state.device, non_blocking=True)
        real_b = batchdata["B"].to(engine.state.device, non_blocking=True)
        iteration = engine.state.iteration
        losses = cyclegan_step(self.step_nets, self.optimizers, real_a, real_b, self.loss, self.pools,
                               self.precision.autocast, self.grad_scaler, self.priors,
                               self.prior_weight(iteration), batchdata.get("paired"), batchdata.get("region"))
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            self._skip(iteration, ", ".join(bad))
            return losses
        self.update_averages(iteration)
        for name, value in losses.items():
            engine.state.history.setdefault(name, []).append((iteration, value))
        return losses

    def _skip(self, iteration: int, bad: str) -> None:
        """Record the step at ``iteration`` whose losses ``bad`` are not finite as skipped, or stop the run: at once
        without a grad scaler, after :data:`OVERFLOW_PATIENCE` skipped steps in a row with one.

        Raises:
            TrainingError: the run stops (the last checkpoint, written before, is kept).
        """
        advice = "stopped, the last good checkpoint is kept (lower optim.lr or disable amp)"
        if self.grad_scaler is None:
            raise TrainingError(f"loss {bad} is not finite at iteration {iteration}; {advice}")
        self.skipped.append(iteration)
        streak = 0
        while streak < len(self.skipped) and self.skipped[-1 - streak] == iteration - streak:
            streak += 1
        if streak >= OVERFLOW_PATIENCE:
            raise TrainingError(f"loss {bad} is not finite in {streak} fp16 steps in a row (iterations "
                                f"{iteration - streak + 1} to {iteration}); {advice}")
        log.warning("iteration %d: loss %s is not finite (fp16 overflow); step skipped (%d in a row, %d in this "
                    "run; the run stops at %d in a row)", iteration, bad, streak, len(self.skipped),
                    OVERFLOW_PATIENCE)

    def checkpoint_objects(self) -> dict:
        """Everything that is saved and restored: networks, their weight averages (train.ema), optimisers,
        schedulers, scaler, trainer state and (rank 0's) image pools."""
        objects = {**self.nets, **{f"average_{k}": n for k, n in self.averages.items()},
                   **{f"opt_{k}": o for k, o in self.optimizers.items()},
                   **{f"sched_{k}": s for k, s in self.schedulers.items()}, "trainer": self}
        if self.rank == 0:
            objects.update({f"pool_{k}": pool for k, pool in self.pools.items()})
        if self.grad_scaler is not None:
            objects["scaler"] = self.grad_scaler
        return objects

    def save_checkpoint(self, path: Path) -> None:
        """Write a resumable checkpoint atomically (temporary file, then rename): the objects of
        :meth:`checkpoint_objects`, the loss history, the validation results (plain numbers, strings, lists and
        dicts, as ``weights_only`` loading needs), the skipped iterations, the configuration, the plan and
        :attr:`export_state`. The trainer state (iteration, epoch length) fixes the position in the epoch."""
        state = {name: obj.state_dict() for name, obj in self.checkpoint_objects().items()}
        state["history"] = {k: [list(p) for p in v] for k, v in self.state.history.items()}
        state.update(validation=self.validation, skipped=self.skipped)
        state.update(config=self.config.to_dict(), plan=asdict(self.plan), **self.export_state)
        if self.best is not None:
            state["best"] = dict(self.best)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``weights_only=True``: nothing executes).

        The model configuration must equal the checkpoint's. When ``train.iterations`` differs from the saved
        plan, the run is re-planned (see :class:`Plan`) and the change is logged. A checkpoint written in the
        middle of an epoch makes the loader skip that epoch's batches already trained on, so the resumed run sees
        the batches an uninterrupted one would.

        Raises:
            ModelError: the checkpoint does not fit this model or configuration.
        """
        state = read_checkpoint(path, self.state.device)
        saved = RunConfig.from_dict(state["config"], str(path)).model
        differ = [key for key, value in asdict(saved).items() if value != getattr(self.config.model, key)]
        if differ:
            had = ", ".join(f"model.{key}={getattr(saved, key)!r}" for key in differ)
            asked = ", ".join(f"model.{key}={getattr(self.config.model, key)!r}" for key in differ)
            raise ModelError(f"{path}: checkpoint has {had} but the configuration asks for {asked}; "
                             "a resumed run keeps its model")
        objects = self.checkpoint_objects()
        if "scaler" in objects and "scaler" not in state:
            objects.pop("scaler")  # resumed with fp16 after a run without: a fresh scaler
            log.info("%s: no grad scaler saved (the run was not fp16); starting a fresh one", path)
        if "pool_A" in objects and "pool_A" not in state:
            objects.pop("pool_A"), objects.pop("pool_B")  # a checkpoint of an older version: empty pools refill
            log.info("%s: no image pools saved; they refill within loss.pool_size fakes", path)
        try:
            for name, obj in objects.items():
                obj.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelError(f"{path}: checkpoint does not fit this model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0]})") from err
        self.state.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        self.validation, self.skipped = state.get("validation", []), state.get("skipped", [])
        self.best = state.get("best")
        done_in_epoch = self.state.iteration % self.state.epoch_length
        if done_in_epoch:
            self.data_loader.sampler.skip(done_in_epoch * self.data_loader.batch_size)
            log.info("%s was written %d iterations into epoch %d: its first %d batches are skipped", path,
                     done_in_epoch, self.state.iteration // self.state.epoch_length + 1, done_in_epoch)
        self.plan = Plan(**state["plan"]) if "plan" in state else Plan(state["config"]["train"]["iterations"])
        train, done = self.config.train, self.state.iteration
        if train.iterations != self.plan.iterations and done < train.iterations:
            old = self.plan
            if old.lr_factor(self.config.optim.decay_fraction)(done) == 0:
                raise ModelError(f"{path}: this run's learning rate has already decayed to 0 (iteration {done} of "
                                 f"{old.iterations}), so extending it to {train.iterations} would change nothing; "
                                 "start a new run planned for the length you want")
            self.plan = old.extended(train.iterations, done, self.config.optim.decay_fraction,
                                     self.config.loss.prior_fraction)
            log.info("re-planned from %d to %d iterations at iteration %d: learning-rate factor %.4g and prior "
                     "weight factor %.4g continue from here and reach 0 as in a %d-iteration run", old.iterations,
                     train.iterations, done, self.plan.lr_scale, self.plan.prior_scale, train.iterations)
        self.state.max_epochs = max(self.state.epoch, math.ceil(train.iterations / train.epoch_length))


def attach_handlers(trainer: CycleGANTrainer, run_dir: Path, fixed: dict[str, torch.Tensor], on_save,
                    progress_bar: bool = True, main: bool = True, validator=None) -> None:
    """Hook the workflow's side effects onto trainer events.

    Every rank gets the learning-rate schedule and the stop at ``train.iterations``; only the ``main`` rank
    writes checkpoints, montages, plots and logs, and validates.

    Args:
        trainer: the trainer.
        run_dir: run directory; ``checkpoint.pt``, ``progress.gif``, ``progress.png``, ``losses.png`` and, with
            a validator, ``validation.csv`` go here.
        fixed: fixed slabs ``{"A": (n, k, H, W), "B": (n, k, H, W)}`` translated for every montage.
        on_save: writes the run bundle's ``models/model.pt``: after every checkpoint, or with a validator only
            when the validation score is the best so far (:mod:`~mri_translate.validation`).
        progress_bar: show a bar over the run on stderr (iteration, it/s, ETA, moving averages of G, D_A and D_B);
            ``train.log_every`` adds a log line of every raw loss term, and a summary line ends the run.
        main: this process is rank 0.
        validator: a :class:`~mri_translate.validation.Validator` run every ``train.val_every`` iterations and at
            the end, or ``None``.
    """
    train = trainer.config.train
    for scheduler in trainer.schedulers.values():
        LrScheduleHandler(scheduler, epoch_level=False, print_lr=False).attach(trainer)
    montages: list[np.ndarray] = []
    averages = {name: visualize.MovingAverage(SMOOTHING) for name in SHOWN}

    def checkpoint(engine):
        trainer.save_checkpoint(run_dir / CHECKPOINT)
        if validator is None:
            on_save(engine)

    def validate(engine):
        iteration = engine.state.iteration
        if trainer.validation and trainer.validation[-1]["iteration"] == iteration:
            return  # already scored (the end of a run that stops on a validation iteration)
        result = validator(trainer.generators, trainer.export_state, engine.state.device)
        trainer.validation.append({"iteration": iteration, **result})
        best = trainer.best is None or result["score"] > trainer.best["score"]
        log.info("validation at iteration %d: score %.2f dB%s | %s", iteration, result["score"],
                 " (best so far: exported)" if best else f" (best {trainer.best['score']:.2f} at "
                 f"{trainer.best['iteration']})", " ".join(f"{k}={v:.3f}" for k, v in result.items()
                                                           if k.startswith(("psnr", "ssim"))))
        validator.write_csv(trainer.validation, run_dir / "validation.csv")
        if best:
            trainer.best = {"iteration": iteration, "score": result["score"]}
            on_save(engine)

    def montage(engine):
        montages.append(visualize.figure_pixels(progress_montage(trainer.generators, fixed, engine.state.device)))

    def log_stats(engine):
        values = " ".join(f"{k}={v:.4f}" for k, v in engine.state.output.items())
        log.info("iteration %d/%d %s", engine.state.iteration, train.iterations, values)

    def smooth(engine):
        for name, average in averages.items():
            average.update(engine.state.output[name])

    def finish(engine):
        if not montages or engine.state.iteration % train.progress_every:
            montage(engine)
        visualize.write_progress_gif(montages, run_dir / "progress.gif")
        visualize.write_png(montages[-1], run_dir / "progress.png")
        visualize.plot_losses(engine.state.history, run_dir / "losses.png", trainer.validation)
        log.info("finished iteration %d/%d in %s; moving averages %s; pictures: %s and %s",
                 engine.state.iteration, train.iterations, timedelta(seconds=round(engine.state.times["COMPLETED"])),
                 " ".join(f"{k}={a.value:.3g}" for k, a in averages.items()), run_dir / "progress.gif",
                 run_dir / "losses.png")

    def stop_at_budget(engine):
        if engine.state.iteration >= train.iterations:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop_at_budget)
    if not main:
        return
    if validator is not None:  # before the checkpoints, so they hold the newest best
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.val_every), validate)
        trainer.add_event_handler(Events.COMPLETED, validate)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.checkpoint_every), checkpoint)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.progress_every), montage)
    if train.log_every:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.log_every), log_stats)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, smooth)
    if progress_bar:  # closed before the closing checkpoint, so the summary line comes after the bar
        _attach_progress_bar(trainer, averages)
    trainer.add_event_handler(Events.COMPLETED, checkpoint)
    trainer.add_event_handler(Events.COMPLETED, finish)
    try:
        from monai.handlers import TensorBoardStatsHandler
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (only when tensorboard is installed)
    except ImportError:
        return
    TensorBoardStatsHandler(log_dir=str(run_dir / "tensorboard"), output_transform=lambda out: out,
                            iteration_log=True, epoch_log=False).attach(trainer)


def _attach_progress_bar(trainer: CycleGANTrainer, averages: dict) -> None:
    """A tqdm bar over the whole run on stderr (iteration, it/s, ETA, the moving ``averages``), from the
    iteration the run starts at to ``train.iterations``; while it runs, the package's log lines are printed
    above it instead of through it."""
    from contextlib import ExitStack

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    stack = ExitStack()
    bars = []

    def start(engine):
        console = [logger for logger in (logging.getLogger(), logging.getLogger("mri_translate")) if any(
            isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers)]
        stack.enter_context(logging_redirect_tqdm(console))
        bars.append(stack.enter_context(tqdm(total=trainer.config.train.iterations, initial=engine.state.iteration,
                                             desc="training", unit="it", dynamic_ncols=True)))

    def advance(engine):
        bars[-1].set_postfix({k: f"{a.value:.3g}" for k, a in averages.items()}, refresh=False)
        bars[-1].update(1)

    def close(engine, error=None):
        stack.close()
        if error is not None:
            raise error  # ignite re-raises only when nothing handles EXCEPTION_RAISED

    trainer.add_event_handler(Events.STARTED, start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, advance)
    trainer.add_event_handler(Events.COMPLETED, close)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, close)


@torch.inference_mode()
def progress_montage(nets, fixed: dict[str, torch.Tensor], device):
    """The training-progress picture: one row per fixed slab, its centre slice (radiological view) as input |
    G(input) | cycle (translated back), the T1w (domain A) rows labelled ``T1w -> T2w`` first, then the T2w
    rows ``T2w -> T1w``; every tile at least 192 pixels (:func:`~mri_translate.visualize.labelled_montage`).

    Args:
        nets: generators ``{"G_AB", "G_BA"}`` (put back in training mode after).
        fixed: slabs ``{"A": (n, k, H, W), "B": (n, k, H, W)}`` in [-1, 1].
        device: where ``nets`` live.

    Returns:
        The ``matplotlib.figure.Figure`` (render it with :func:`~mri_translate.visualize.figure_pixels`).
    """
    rows, labels = [], []
    for domain, forward, backward, label in (("A", "G_AB", "G_BA", "T1w -> T2w"),
                                             ("B", "G_BA", "G_AB", "T2w -> T1w")):
        real = fixed[domain].to(device)
        for net in nets.values():
            net.eval()
        fake = nets[forward](real)
        cycled = nets[backward](fake)
        for net in nets.values():
            net.train()
        centre = real.shape[1] // 2
        for i in range(real.shape[0]):
            panels = [t[i, centre].float().cpu().numpy() for t in (real, fake, cycled)]
            rows.append([visualize.window(visualize.display_slice(p[..., None], 0)) for p in panels])
            labels.append(label)
    return visualize.labelled_montage(rows, ("input", "G(input)", "cycle"), labels)
