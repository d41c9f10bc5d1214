"""Two CPU processes (gloo) train together through torchrun: DistributedDataParallel gives the weights of one
process over the same global batch; same weights on every rank, different data, one writer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mri_translate.synthetic import write_dataset

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("ddp_worker.py")
STEP_WORKER = Path(__file__).with_name("ddp_step_worker.py")
PRESET = """
model: {k: 3, channels: [8, 16], res_units: 1, disc_channels: 8, disc_layers: 2}
data: {crop: 32}
optim: {decay_fraction: 0.0}
train: {iterations: 4, epoch_length: 2, checkpoint_every: 2, progress_every: 2, seed: 3}
"""


def torchrun(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = write_dataset(root / "data", n_subjects=2, resolution=4.0)
    preset = root / "tiny.yaml"
    preset.write_text(PRESET)
    run, record = root / "run", root / "record"
    torchrun(WORKER, data["t1"][0], data["t2"][1], run, preset, record)
    return root, data, preset, run, record


def load(record, rank):
    return torch.load(record / f"rank{rank}.pt", weights_only=True)


def test_two_processes_reach_the_weights_of_one_process_over_the_same_global_batch(tmp_path):
    """Each rank steps on its half of every global batch of 4 with the networks wrapped in DDP (ranks start from
    different seeds: DDP must broadcast rank 0's); one process steps on the whole batches. Some batches hold
    paired items, unevenly spread over the ranks: the supervised L1 weighs them as one process does."""
    sys.path.insert(0, str(STEP_WORKER.parent))
    try:
        from ddp_step_worker import global_batches, setup
    finally:
        sys.path.pop(0)
    from mri_translate.cyclegan import cyclegan_step

    torchrun(STEP_WORKER, tmp_path / "ddp.pt", 3)
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    nets, optimizers, loss, pools = setup(seed=0)
    start = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in nets.items()}
    for a, b, paired in global_batches(3):
        cyclegan_step(nets, optimizers, a, b, loss, pools, paired=paired)
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(distributed[name][key], value, rtol=0, atol=1e-6, msg=f"{name}.{key}")
        moved = max(float((value - start[name][key]).abs().max()) for key, value in net.state_dict().items())
        assert moved > 1e-3, f"{name} did not train"


def test_a_rank_resumed_mid_epoch_leaves_out_the_items_it_trained_on():
    """make_loader's sampler under torchrun: after ``skip(n)`` (a checkpoint n items into the epoch) the next pass
    over each rank's share of the epoch leaves its first n items out, once."""
    from torch.utils.data import DistributedSampler

    from mri_translate.data import ResumableSampler

    for rank in (0, 1):
        share = DistributedSampler(range(12), 2, rank, seed=3, drop_last=True)
        sampler = ResumableSampler(DistributedSampler(range(12), 2, rank, seed=3, drop_last=True))
        share.set_epoch(5)
        sampler.set_epoch(5)
        sampler.skip(4)
        assert len(sampler) == 2 and list(sampler) == [(5, i) for i in list(share)[4:]]
        assert list(sampler) == [(5, i) for i in share] and list(share) != sorted(share)


def test_ranks_hold_identical_weights(ddp_run):
    _, _, _, _, record = ddp_run
    r0, r1 = load(record, 0), load(record, 1)
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        for key, value in r0["nets"][name].items():
            assert torch.equal(value, r1["nets"][name][key]), f"{name}.{key} differs between ranks"


def test_ranks_saw_different_slices(ddp_run):
    _, _, _, _, record = ddp_run
    i0, i1 = load(record, 0)["indices"], load(record, 1)["indices"]
    assert i0 and i1 and not set(i0) & set(i1)


def test_only_rank_0_writes_checkpoints_and_bundle(ddp_run):
    _, _, _, run, record = ddp_run
    assert load(record, 0)["saves"] and load(record, 1)["saves"] == []
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert (run / "models" / "model.pt").is_file() and (run / "progress.gif").is_file()
    assert not list(run.glob(".*tmp*"))


def test_resumed_two_process_run_continues(ddp_run):
    root, data, preset, run, _ = ddp_run
    record = root / "record-resume"
    torchrun(WORKER, data["t1"][0], data["t2"][1], run, preset, record, "--resume", 8)
    r0, r1 = load(record, 0), load(record, 1)
    assert r0["iteration"] == r1["iteration"] == 8
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 8 and len(state["history"]["G"]) == 8


def test_bundle_multi_gpu_overlay_runs_two_processes(tmp_path):
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "mri_cyclegan" / "configs"
    config = json.dumps({"model": {"channels": [8, 16], "res_units": 1, "disc_channels": 8, "disc_layers": 2},
                         "data": {"crop": 32}, "train": {"epoch_length": 2, "checkpoint_every": 2,
                                                         "progress_every": 2}})
    files = f"['{bundle / 'train.json'}','{bundle / 'multi_gpu_train.json'}']"
    torchrun("-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", tmp_path,
             "--max_epochs", 1, "--config", config, cwd=tmp_path)
    state = torch.load(tmp_path / "runs" / "train" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2
