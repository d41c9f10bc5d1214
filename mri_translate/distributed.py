"""Data-parallel training with ``torchrun`` (PyTorch distributed): process group set-up from the
environment torchrun provides, gradient averaging for the four CycleGAN networks, and the rank rules
(only rank 0 writes files).

The generators and discriminators are not wrapped in ``DistributedDataParallel``: a CycleGAN calls each
generator several times per step (translate, cycle, identity) before one backward pass, which DDP's
reducer does not allow without ``static_graph`` tricks. Instead every rank computes its gradients on its
own batch and :func:`average_gradients` all-reduces them before each optimiser step, which is the same
arithmetic DDP does. Initial weights are broadcast from rank 0; the image pools stay local.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    from .engine import resolve_device

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


def broadcast_parameters(nets: dict) -> None:
    """Give every rank rank 0's weights."""
    if dist.is_available() and dist.is_initialized():
        for net in nets.values():
            for tensor in [*net.parameters(), *net.buffers()]:
                dist.broadcast(tensor.data, src=0)


def average_gradients(parameters) -> None:
    """All-reduce and average the gradients of ``parameters`` over the ranks (no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
