"""Run by tests/test_distributed.py under torchrun: CycleGAN steps with the four networks wrapped in
DistributedDataParallel, each rank on its half of a fixed global batch (some items paired); rank 0 saves the
weights.

    torchrun --standalone --nproc_per_node 2 tests/ddp_step_worker.py OUT.pt STEPS
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mri_translate.config import ModelConfig
from mri_translate.cyclegan import CycleGANLoss, ImagePool, cyclegan_step
from mri_translate.networks import build_networks


#: ``paired`` of the global batches of 4, in turn: one paired item (on rank 0 only), three (two on rank 0), none.
PAIRED = ((1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 1.0), (0.0, 0.0, 0.0, 0.0))


def global_batches(steps: int):
    """The same ``(A, B, paired)`` batches ``(4, 3, 32, 32)``, ``(4,)`` in every process."""
    generator = torch.Generator().manual_seed(7)
    return [(torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1,
             torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1,
             torch.tensor(PAIRED[step % len(PAIRED)])) for step in range(steps)]


def setup(seed: int = 0):
    """Tiny networks with seeded weights, their optimisers and the loss (pools off: no randomness). Plain SGD:
    Adam's first steps turn float rounding in near-zero gradients into differences of the size of the
    learning rate, which would hide what the test compares."""
    torch.manual_seed(seed)
    nets = build_networks(ModelConfig(k=3, channels=(8, 16), res_units=1, disc_channels=8, disc_layers=2))
    optimizers = {"G": torch.optim.SGD([*nets["G_AB"].parameters(), *nets["G_BA"].parameters()], lr=0.01),
                  "D": torch.optim.SGD([*nets["D_A"].parameters(), *nets["D_B"].parameters()], lr=0.01)}
    return nets, optimizers, CycleGANLoss(10.0, 0.5), {"A": ImagePool(0), "B": ImagePool(0)}


if __name__ == "__main__":
    out, steps = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    nets, optimizers, loss, pools = setup(seed=rank)  # different seeds: DDP must broadcast rank 0's weights
    wrapped = {name: DistributedDataParallel(net) for name, net in nets.items()}
    for a, b, paired in global_batches(steps):
        mine = slice(rank * len(a) // world, (rank + 1) * len(a) // world)
        cyclegan_step(wrapped, optimizers, a[mine], b[mine], loss, pools, paired=paired[mine])
    if rank == 0:
        torch.save({name: net.state_dict() for name, net in nets.items()}, out)
    dist.barrier()  # no rank tears gloo down while another is still working (an abort at exit, seen once in CI)
    del wrapped
    dist.destroy_process_group()
