"""Run by tests/test_distributed.py under torchrun: train, then record what this rank holds and did.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py T1 T2 RUN_DIR PRESET RECORD_DIR [--resume N]
"""

import os
import sys
from pathlib import Path

import torch

from mri_translate import engine
from mri_translate.train import train

t1, t2, run_dir, preset, record_dir = sys.argv[1:6]
resume = "--resume" in sys.argv
rank = int(os.environ["RANK"])
record = Path(record_dir)
record.mkdir(parents=True, exist_ok=True)
saves = []
original_save = engine.CycleGANTrainer.save_checkpoint


def counting_save(self, path):
    saves.append(str(path))
    original_save(self, path)


engine.CycleGANTrainer.save_checkpoint = counting_save
overrides = {"train": {"iterations": int(sys.argv[sys.argv.index("--resume") + 1])}} if resume else None
trainer = train([t1], [t2], run_dir, config=preset, overrides=overrides, resume=resume, progress_bar=False)
sampler = trainer.data_loader.sampler
sampler.set_epoch(0)
torch.save({"nets": {k: v.state_dict() for k, v in trainer.nets.items()}, "indices": [i for _, i in sampler],
            "saves": saves, "iteration": trainer.state.iteration}, record / f"rank{rank}.pt")
