"""Data-parallel training with ``torchrun`` (PyTorch distributed): process group set-up from the
environment torchrun provides, and the rank rules (only rank 0 writes files).

The four networks themselves are wrapped in ``DistributedDataParallel`` by the engine
(:class:`~mri_translate.engine.CycleGANTrainer`), which broadcasts rank 0's weights and averages gradients
while backward runs; the image pools stay local to each rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runtime import resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True for the process that writes checkpoints, logs and pictures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world > 1


def setup(device_name: str = "auto") -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick this rank's device.

    NCCL on GPU, gloo on CPU. On CPU the cores are shared between the processes of a node.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    context = Context(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda" and context.active:
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if context.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return context, device


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
