"""The MONAI training workflow: a ``Trainer`` subclass that owns one CycleGAN step, and the handlers that
hook into its events (learning-rate schedule, checkpoints and resume, console stats, progress bar,
progress montages and loss curves)."""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.handlers import LrScheduleHandler
from torch.utils.data import DataLoader

from . import visualize
from .config import RunConfig
from .cyclegan import CycleGANLoss, ImagePool, cyclegan_step
from .data import Slices, UnpairedSlabDataset, pad_to
from .distributed import Context, broadcast_parameters
from .errors import InputError, ModelError, TrainingError
from .io import atomic_path
from .networks import build_networks

log = logging.getLogger("mri_translate.train")
CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present (this torchrun process's ``LOCAL_RANK`` GPU), else ``cpu``;
    anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: no CUDA GPU is available here")
    return device


def autocast_for(device: torch.device, enabled: bool):
    """Autocast factory for mixed precision: bf16 where the GPU supports it, else fp16; ``None`` (full
    precision) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def amp_context(device: torch.device, enabled: bool):
    """Autocast factory (:func:`autocast_for`) and, for fp16, the grad scaler training needs."""
    autocast = autocast_for(device, enabled)
    scaler = torch.amp.GradScaler("cuda") if autocast and not torch.cuda.is_bf16_supported() else None
    return autocast, scaler


def linear_decay(total: int, decay_fraction: float):
    """LambdaLR factor: 1 for the first ``(1 - decay_fraction) * total`` iterations, then linearly to 0."""
    start = int(total * (1 - decay_fraction))

    def factor(iteration: int) -> float:
        return 1.0 if iteration < start else max(0.0, 1 - (iteration - start) / max(1, total - start))
    return factor


class CycleGANTrainer(Trainer):
    """MONAI trainer running one CycleGAN step per iteration.

    ``engine.state.output`` holds the float loss terms of :func:`~mri_translate.cyclegan.cyclegan_step`;
    ``engine.state.history`` accumulates them for the loss plot. Checkpoints, montages and logging attach
    to events from outside (see :func:`attach_handlers`).
    """

    def __init__(self, config: RunConfig, loader: DataLoader, device: torch.device, nets=None, rank: int = 0,
                 priors=None):
        self.config = config
        train = config.train
        super().__init__(device=device, max_epochs=math.ceil(train.iterations / train.epoch_length),
                         data_loader=loader, epoch_length=train.epoch_length)
        torch.manual_seed(train.seed)
        self.nets = {name: net.to(device) for name, net in (nets or build_networks(config.model)).items()}
        broadcast_parameters(self.nets)
        opt = config.optim
        adam = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2))
        self.optimizers = {
            "G": torch.optim.Adam([*self.nets["G_AB"].parameters(), *self.nets["G_BA"].parameters()], **adam),
            "D": torch.optim.Adam([*self.nets["D_A"].parameters(), *self.nets["D_B"].parameters()], **adam),
        }
        factor = linear_decay(train.iterations, opt.decay_fraction)
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in self.optimizers.items()}
        self.loss = CycleGANLoss(config.loss.lambda_cycle, config.loss.identity)
        rng = random.Random(train.seed + rank)  # pools are local to each rank
        self.pools = {"A": ImagePool(config.loss.pool_size, rng), "B": ImagePool(config.loss.pool_size, rng)}
        self.priors = priors
        self.autocast, self.scaler = amp_context(device, train.amp)
        self.state.history = {}

    def prior_weight(self, iteration: int) -> float:
        """Weight of the contrast prior at ``iteration`` (1-based): ``loss.prior``, fading linearly to zero at
        ``loss.prior_fraction`` of the run."""
        loss, total = self.config.loss, self.config.train.iterations
        end = loss.prior_fraction * total
        return loss.prior * max(0.0, 1 - (iteration - 1) / end) if end > 0 else 0.0

    def _iteration(self, engine, batchdata: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a = batchdata["A"].to(engine.state.device, non_blocking=True)
        real_b = batchdata["B"].to(engine.state.device, non_blocking=True)
        losses = cyclegan_step(self.nets, self.optimizers, real_a, real_b, self.loss, self.pools,
                               self.autocast, self.scaler, self.priors, self.prior_weight(engine.state.iteration))
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise TrainingError(f"loss {', '.join(bad)} is not finite at iteration {engine.state.iteration}; "
                                "stopped, the last good checkpoint is kept (lower optim.lr or disable amp)")
        for name, value in losses.items():
            engine.state.history.setdefault(name, []).append((engine.state.iteration, value))
        return losses

    def checkpoint_objects(self) -> dict:
        """Everything that is saved and restored: networks, optimisers, schedulers, scaler and trainer state."""
        objects = {**self.nets, **{f"opt_{k}": o for k, o in self.optimizers.items()},
                   **{f"sched_{k}": s for k, s in self.schedulers.items()}, "trainer": self}
        if self.scaler is not None:
            objects["scaler"] = self.scaler
        return objects

    def save_checkpoint(self, path: Path, extra: dict) -> None:
        """Write a resumable checkpoint atomically (temporary file, then rename)."""
        state = {name: obj.state_dict() for name, obj in self.checkpoint_objects().items()}
        state["history"] = {k: [list(p) for p in v] for k, v in self.state.history.items()}
        state.update(extra)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``weights_only=True``: nothing executes)."""
        state = read_checkpoint(path, self.state.device)
        saved_k = state.get("config", {}).get("model", {}).get("k")
        if saved_k != self.config.model.k:
            raise ModelError(f"{path}: checkpoint has k={saved_k} but the configuration asks for k="
                             f"{self.config.model.k}")
        try:
            for name, obj in self.checkpoint_objects().items():
                obj.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelError(f"{path}: checkpoint does not fit this model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0]})") from err
        self.state.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        train = self.config.train
        self.state.max_epochs = max(self.state.epoch, math.ceil(train.iterations / train.epoch_length))


def read_checkpoint(path, device="cpu") -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: not a loadable mri-translate checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict) or "G_AB" not in state or "config" not in state:
        raise ModelError(f"{path}: not an mri-translate checkpoint (no G_AB weights or config inside)")
    return state


def attach_handlers(trainer: CycleGANTrainer, run_dir: Path, fixed: dict[str, torch.Tensor], on_save,
                    progress_bar: bool = True, main: bool = True) -> None:
    """Hook the workflow's side effects onto trainer events.

    Every rank gets the learning-rate schedule and the stop at ``train.iterations``; only the ``main`` rank
    writes checkpoints, montages, plots and logs.

    Args:
        trainer: the trainer.
        run_dir: run directory; ``checkpoint.pt``, ``progress.gif``, ``progress.png`` and ``losses.png`` go here.
        fixed: fixed slabs ``{"A": (n, k, H, W), "B": (n, k, H, W)}`` translated for every montage.
        on_save: called after every checkpoint (writes the run bundle's ``models/model.pt``).
        progress_bar: show a tqdm bar.
        main: this process is rank 0.
    """
    train = trainer.config.train
    for scheduler in trainer.schedulers.values():
        LrScheduleHandler(scheduler, epoch_level=False, print_lr=False).attach(trainer)
    montages: list[np.ndarray] = []

    def checkpoint(engine):
        trainer.save_checkpoint(run_dir / CHECKPOINT, {"config": trainer.config.to_dict()})
        on_save(engine)

    def montage(engine):
        montages.append(progress_montage(trainer.nets, fixed, engine.state.device))

    def log_stats(engine):
        values = " ".join(f"{k}={v:.4f}" for k, v in engine.state.output.items())
        log.info("iteration %d/%d %s", engine.state.iteration, train.iterations, values)

    def finish(engine):
        if not montages or engine.state.iteration % train.progress_every:
            montage(engine)
        visualize.write_progress_gif(montages, run_dir / "progress.gif")
        visualize.write_png(montages[-1], run_dir / "progress.png")
        visualize.plot_losses(engine.state.history, run_dir / "losses.png")

    def stop_at_budget(engine):
        if engine.state.iteration >= train.iterations:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop_at_budget)
    if not main:
        return
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.checkpoint_every), checkpoint)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=train.progress_every), montage)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=max(1, train.epoch_length // 4)), log_stats)
    trainer.add_event_handler(Events.COMPLETED, checkpoint)
    trainer.add_event_handler(Events.COMPLETED, finish)
    if progress_bar:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=True).attach(trainer, output_transform=lambda out: {"G": out["G"], "D_B": out["D_B"]})
    try:
        from monai.handlers import TensorBoardStatsHandler
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (only when tensorboard is installed)
    except ImportError:
        return
    TensorBoardStatsHandler(log_dir=str(run_dir / "tensorboard"), output_transform=lambda out: out,
                            iteration_log=True, epoch_log=False).attach(trainer)


@torch.inference_mode()
def progress_montage(nets, fixed: dict[str, torch.Tensor], device) -> np.ndarray:
    """One montage row per fixed slab: real | translated | cycled back (centre slice, radiological view)."""
    rows = []
    for domain, forward, backward in (("A", "G_AB", "G_BA"), ("B", "G_BA", "G_AB")):
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
    return visualize.montage(rows)


def fixed_slabs(a: Slices, b: Slices, count: int = 2, crop: int = 128) -> dict[str, torch.Tensor]:
    """``count`` evenly spaced slabs of each domain, centre-cropped/padded to ``crop``, for the montages."""
    def pick(slices: Slices) -> torch.Tensor:
        index = np.linspace(0, len(slices.slabs) - 1, count + 2)[1:-1].round().astype(int)
        return pad_to(slices.slabs[index], crop, crop)
    return {"A": pick(a), "B": pick(b)}


def make_loader(a: Slices, b: Slices, config: RunConfig, context: Context = Context()) -> DataLoader:
    """DataLoader of :class:`UnpairedSlabDataset` with one epoch = ``train.epoch_length`` batches per rank;
    under torchrun a ``DistributedSampler`` gives each rank its own share of the items."""
    from torch.utils.data import DistributedSampler

    data = config.data
    dataset = UnpairedSlabDataset(a, b, crop=data.crop, flip=data.flip, seed=config.train.seed,
                                  length=config.train.epoch_length * data.batch_size * context.world)
    sampler = DistributedSampler(dataset, context.world, context.rank, shuffle=True, seed=config.train.seed,
                                 drop_last=True) if context.active else None
    return DataLoader(dataset, batch_size=data.batch_size, shuffle=False, sampler=sampler,
                      num_workers=data.num_workers, drop_last=True)
