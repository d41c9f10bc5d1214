"""Tests of training (mri_translate.train, engine, cli train): the run directory, checkpoints, seeded
reproducibility, resume (also after SIGKILL), refusal to mix runs, unusable checkpoints, NaN losses, and a
short run on synthetic data that must learn something."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch

from mri_translate import cli
from mri_translate.errors import InputError, ModelError, TrainingError
from mri_translate.train import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LOSS_KEYS = {"G", "G_adv_AB", "G_adv_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "prior_A", "prior_B", "paired_A", "paired_B", "D_A", "D_B"}


@pytest.fixture
def sources(synthetic_4mm):
    """Unpaired: T1w of subject 1, T2w of subject 2."""
    return [synthetic_4mm["t1"][0]], [synthetic_4mm["t2"][1]]


def run(sources, out, config, **kwargs):
    """train() on ``sources``; the run directory (train returns the trainer, whose ``run_dir`` it is)."""
    result = train(*sources, out, config=config, progress_bar=False, **kwargs)
    return Path(getattr(result, "run_dir", result))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def tmp_files(folder):
    return sorted(p for p in folder.rglob("*") if ".tmp-" in p.name)


def test_train_writes_the_run_bundle_and_a_resumable_checkpoint(sources, tiny_config, tmp_path):
    out = run(sources, tmp_path / "run", tiny_config())
    assert out == tmp_path / "run"
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/logging.conf",
                 "models/model.pt", "docs/README.md", "checkpoint.pt", "progress.gif", "progress.png",
                 "losses.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not tmp_files(out)

    frames = iio.imread(out / "progress.gif", index=None)
    assert frames.ndim >= 3 and len(frames) >= 2           # montages at iterations 4 and 8
    assert not np.array_equal(frames[0], frames[-1])        # the generators changed in between
    assert iio.imread(out / "progress.png").ndim >= 2
    assert iio.imread(out / "losses.png").ndim == 3

    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 8
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        assert state[name] and all(isinstance(v, torch.Tensor) for v in state[name].values())
    for name in ("opt_G", "opt_D"):
        assert state[name]["state"], f"{name} has no Adam moments"
        assert all(float(s["step"]) == 8 for s in state[name]["state"].values())
    assert set(state["history"]) == LOSS_KEYS
    for term, points in state["history"].items():
        assert [p[0] for p in points] == list(range(1, 9)), term
        assert all(np.isfinite(p[1]) for p in points)
    assert state["config"]["model"]["channels"] == [8, 16] and state["config"]["train"]["iterations"] == 8
    # linear decay over the second half: the learning rate has reached 0 at the last iteration
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(0.0)

    model = load(out / "models" / "model.pt")
    assert model["iteration"] == 8 and model["format"].startswith("mri-translate-generators")
    for name in ("G_AB", "G_BA"):
        assert model[name].keys() == state[name].keys()
        assert all(torch.equal(model[name][k], state[name][k]) for k in model[name])
    low, high = model["normalization"]["B"]
    assert high > low
    readme = (out / "docs" / "README.md").read_text()
    assert str(sources[0][0]) in readme and str(sources[1][0]) in readme


def test_train_with_planes_draws_from_the_three_planes_of_an_isotropic_scan(sources, tiny_config, tmp_path, caplog):
    """data.planes: the 4 mm isotropic sources are loaded along all three axes (the logged slice counts are those
    of load_slices with planes, more than twice those along one axis) and the run records the setting."""
    from mri_translate.data import load_slices

    out = run(sources, tmp_path / "run", tiny_config(data={"planes": True}, train={"iterations": 2}))
    config = load(out / "models" / "model.pt")["config"]
    assert config["data"]["planes"] is True
    data = config["data"]
    counts = {planes: [len(load_slices(files, 3, data["min_foreground"], data["spacing"], data["standardize"], planes))
                       for files in sources] for planes in (False, True)}
    assert all(three > 2 * one for one, three in zip(counts[False], counts[True]))
    message = (f"domain A (T1w): {counts[True][0]} slices from 1 source(s); "
               f"domain B (T2w): {counts[True][1]} slices from 1 source(s)")
    assert any(r.getMessage().startswith(message) for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_seeded_cpu_runs_are_reproducible(sources, tiny_config, tmp_path):
    config = tiny_config(train={"iterations": 4})
    weights = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = run(sources, tmp_path / name, config, overrides={"train": {"seed": seed}})
        weights[name] = load(out / "models" / "model.pt")["G_AB"]
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_resume_extends_a_run_whose_learning_rate_has_not_decayed(sources, tiny_config, tmp_path):
    config = tiny_config(optim={"decay_fraction": 0.0})
    out = run(sources, tmp_path / "run", config, overrides={"train": {"iterations": 4}})
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4
    run(sources, out, config, resume=True)  # iterations 8
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 8
    assert {len(points) for points in state["history"].values()} == {8}
    assert [p[0] for p in state["history"]["G"]] == list(range(1, 9))
    for name in ("opt_G", "opt_D"):
        assert {float(s["step"]) for s in state[name]["state"].values()} == {8.0}
    assert state["plan"]["iterations"] == 8 and state["config"]["train"]["iterations"] == 8
    assert load(out / "models" / "model.pt")["iteration"] == 8
    assert len(iio.imread(out / "progress.gif", index=None)) >= 1


class StopAt:
    """Interrupt a run (like Ctrl-C) when it is about to start iteration ``at``."""

    def __init__(self, monkeypatch, at: int):
        from mri_translate import engine

        real = engine.CycleGANTrainer._iteration

        def iteration(trainer, engine_, batch):
            if engine_.state.iteration == at:
                raise KeyboardInterrupt
            return real(trainer, engine_, batch)

        monkeypatch.setattr(engine.CycleGANTrainer, "_iteration", iteration)
        self.undo = monkeypatch.undo


def run_interrupted(monkeypatch, sources, out, config, at: int = 5) -> Path:
    """``run`` interrupted (like Ctrl-C) when it is about to start iteration ``at``; the run directory."""
    StopAt(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        run(sources, out, config)
    monkeypatch.undo()
    return out


def test_resume_matches_an_uninterrupted_run_with_decay_and_prior(sources, tiny_config, tmp_path, monkeypatch):
    """With the learning-rate decay AND the fading contrast prior on: a run of 8 planned iterations interrupted
    after its checkpoint at 4 and resumed gives exactly the weights, learning rates and loss history of 8
    uninterrupted ones (the plan is saved in the checkpoint; a pool that never fills)."""
    config = tiny_config(optim={"decay_fraction": 0.75}, loss={"prior": 5.0, "prior_fraction": 1.0})
    straight = run(sources, tmp_path / "straight", config)
    split = run_interrupted(monkeypatch, sources, tmp_path / "split", config)
    assert load(split / "checkpoint.pt")["trainer"]["iteration"] == 4
    run(sources, split, None, resume=True)  # the configuration, and so the plan, from the checkpoint
    a, b = load(straight / "checkpoint.pt"), load(split / "checkpoint.pt")
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert a["history"] == b["history"]
    assert a["opt_G"]["param_groups"][0]["lr"] == b["opt_G"]["param_groups"][0]["lr"]
    prior = [a + b for (_, a), (_, b) in zip(b["history"]["prior_A"], b["history"]["prior_B"])]
    assert sum(prior[4:]) > 0  # the prior was on after the resume too


def test_resume_restores_the_image_pools_exactly(sources, tiny_config, tmp_path, monkeypatch):
    """A pool that fills (2 fakes) is checkpointed with its random generator: interrupted after its checkpoint
    at 4 of 8 iterations and resumed, the run ends with exactly the weights of an uninterrupted one; a
    checkpoint without pools (an older version) still resumes, with empty pools."""
    config = tiny_config(loss={"pool_size": 2})
    straight = run(sources, tmp_path / "straight", config)
    split = run_interrupted(monkeypatch, sources, tmp_path / "split", config)
    saved = load(split / "checkpoint.pt")
    assert len(saved["pool_A"]["images"]) == len(saved["pool_B"]["images"]) == 2
    run(sources, split, None, resume=True)
    a, b = load(straight / "checkpoint.pt"), load(split / "checkpoint.pt")
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert all(torch.equal(x, y) for x, y in zip(a["pool_A"]["images"], b["pool_A"]["images"]))
    older = run_interrupted(monkeypatch, sources, tmp_path / "older", config)
    state = load(older / "checkpoint.pt")
    del state["pool_A"], state["pool_B"]
    torch.save(state, older / "checkpoint.pt")
    run(sources, older, None, resume=True)
    assert load(older / "checkpoint.pt")["trainer"]["iteration"] == 8


def record_batches(monkeypatch) -> dict:
    """From now on, the batch each iteration trains on: ``{iteration: {"A": ..., "B": ..., "paired": ...}}``."""
    from mri_translate import engine

    seen, real = {}, engine.CycleGANTrainer._iteration

    def iteration(trainer, engine_, batch):
        seen[engine_.state.iteration] = {key: value.clone() for key, value in batch.items()}
        return real(trainer, engine_, batch)

    monkeypatch.setattr(engine.CycleGANTrainer, "_iteration", iteration)
    return seen


def test_a_run_resumed_mid_epoch_trains_on_the_batches_of_an_uninterrupted_one(sources, tiny_config, tmp_path,
                                                                                monkeypatch):
    """Epochs of 4 iterations, a checkpoint every 2: interrupted before iteration 7, the run resumes from its
    checkpoint at 6, in the middle of the second epoch, and trains on exactly the batches an uninterrupted run
    trains on at 7 and 8 (not the epoch's first two again), ending with its weights."""
    config = tiny_config(train={"checkpoint_every": 2})
    straight = record_batches(monkeypatch)
    run(sources, tmp_path / "straight", config)
    monkeypatch.undo()
    split = run_interrupted(monkeypatch, sources, tmp_path / "split", config, at=7)
    assert load(split / "checkpoint.pt")["trainer"]["iteration"] == 6
    resumed = record_batches(monkeypatch)
    run(sources, split, None, resume=True)
    assert sorted(resumed) == [7, 8]
    for iteration, batch in resumed.items():
        assert batch.keys() == straight[iteration].keys()
        assert all(torch.equal(value, straight[iteration][key]) for key, value in batch.items()), iteration
    assert not torch.equal(resumed[7]["A"], straight[5]["A"])  # so a replayed epoch start would show
    a, b = load(tmp_path / "straight" / "checkpoint.pt"), load(split / "checkpoint.pt")
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert a["history"] == b["history"]


def test_resume_keeps_the_validation_history(synthetic_4mm, sources, tiny_config, tmp_path):
    """4 iterations validated every 2 on one pair (a row per direction), then resumed to 6: validation.csv
    holds the rows of 2, 4 and 6, and the checkpoint and the trainer (whose results the loss plot draws) all
    three results."""
    pair = (synthetic_4mm["t1"][0], synthetic_4mm["t2"][0])
    config = tiny_config(train={"val_every": 2, "checkpoint_every": 2}, optim={"decay_fraction": 0.0})

    def rows():
        return [line.split(",")[0] for line in (tmp_path / "run" / "validation.csv").read_text().splitlines()[1:]]

    run(sources, tmp_path / "run", config, overrides={"train": {"iterations": 4}}, val=[pair])
    assert rows() == ["2", "2", "4", "4"]
    trainer = train(*sources, tmp_path / "run", config=config, overrides={"train": {"iterations": 6}}, resume=True,
                    progress_bar=False, val=[pair])
    assert rows() == ["2", "2", "4", "4", "6", "6"]
    saved = load(tmp_path / "run" / "checkpoint.pt")["validation"]
    assert saved == trainer.validation and [result["iteration"] for result in saved] == [2, 4, 6]
    assert all(len(result["pairs"]) == 2 for result in saved)


def test_weight_average_follows_its_warmed_up_decay():
    """``avg += (1 - d) (w - avg)`` with ``d = min(train.ema, (1 + t) / (10 + t))``: at t = 0 the average all
    but jumps to the weights (d = 0.1); later it moves by ``1 - train.ema``."""
    from types import SimpleNamespace

    from mri_translate.config import RunConfig
    from mri_translate.engine import CycleGANTrainer

    net, average = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        for p, q in zip(net.parameters(), average.parameters()):
            p.fill_(1.0)
            q.fill_(0.0)
    trainer = SimpleNamespace(config=RunConfig.from_dict({"train": {"ema": 0.5}}), averages={"G_AB": average},
                              nets={"G_AB": net})
    CycleGANTrainer.update_averages(trainer, 0)
    assert all(torch.allclose(q, torch.full_like(q, 0.9)) for q in average.parameters())
    CycleGANTrainer.update_averages(trainer, 100)  # d = min(0.5, 101 / 110) = 0.5
    assert all(torch.allclose(q, torch.full_like(q, 0.95)) for q in average.parameters())


def test_weight_averaging_exports_the_average_and_resumes_exactly(sources, tiny_config, tmp_path, monkeypatch):
    """``train.ema``: models/model.pt carries the averaged generators (not the last weights), the checkpoint
    carries both, and a run interrupted and resumed ends with the averages of an uninterrupted one."""
    config = tiny_config(train={"ema": 0.9})
    straight = run(sources, tmp_path / "straight", config)
    state, model = load(straight / "checkpoint.pt"), load(straight / "models" / "model.pt")
    for name in ("G_AB", "G_BA"):
        assert all(torch.equal(model[name][k], state[f"average_{name}"][k]) for k in model[name])
        assert any(not torch.equal(state[name][k], state[f"average_{name}"][k]) for k in state[name])
    assert "generator weight average (train.ema): 0.9" in (straight / "docs" / "README.md").read_text()
    run(sources, run_interrupted(monkeypatch, sources, tmp_path / "split", config), None, resume=True)
    resumed = load(tmp_path / "split" / "checkpoint.pt")
    for name in ("average_G_AB", "average_G_BA"):
        assert all(torch.equal(state[name][k], resumed[name][k]) for k in state[name]), name
    with pytest.raises(InputError, match="train.ema must be in"):
        run(sources, tmp_path / "bad", tiny_config("bad.yaml", train={"ema": 1.0}))


def test_extending_a_run_continues_its_schedules_instead_of_restarting_them(sources, tiny_config, tmp_path,
                                                                            monkeypatch):
    """Planned for 8, interrupted at 4, resumed with 16: the learning rate and the prior weight continue from
    their values at iteration 4 (no jump back up) and reach 0 at 16, as the stated rule (engine.Plan) says."""
    from mri_translate.engine import Plan

    config = tiny_config(optim={"decay_fraction": 0.75}, loss={"prior": 5.0, "prior_fraction": 1.0})
    run_interrupted(monkeypatch, sources, tmp_path / "run", config)
    lrs, weights = [], []
    from mri_translate import engine

    real = engine.CycleGANTrainer._iteration

    def record(trainer, engine_, batch):
        lrs.append(trainer.optimizers["G"].param_groups[0]["lr"])
        weights.append(trainer.prior_weight(engine_.state.iteration))
        return real(trainer, engine_, batch)

    monkeypatch.setattr(engine.CycleGANTrainer, "_iteration", record)
    run(sources, tmp_path / "run", config, overrides={"train": {"iterations": 16}}, resume=True)
    old, lr = Plan(8), 2e-4  # optim.lr's default
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(lr * old.lr_factor(0.75)(4))             # where the 8-iteration plan was
    assert weights[0] == pytest.approx(5.0 * old.prior_factor(1.0)(5))      # ... and its prior
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0         # never back up
    assert all(b < a for a, b in zip(weights, weights[1:])) and weights[-1] > 0
    state = load(tmp_path / "run" / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 16 and state["plan"]["iterations"] == 16
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed at the new end


def test_extending_a_run_whose_learning_rate_reached_zero_is_refused(sources, tiny_config, tmp_path, capsys):
    config = tiny_config(train={"iterations": 4})
    out = run(sources, tmp_path / "run", config)
    t1, t2 = (str(p[0]) for p in sources)
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--resume", "--iterations", "8",
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "checkpoint.pt" in err[0] and "decayed to 0" in err[0] and "iteration 4 of 4" in err[0]
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4


@pytest.mark.parametrize("override, field", [({"k": 5}, "k"), ({"channels": [8, 24]}, "channels"),
                                             ({"res_units": 2}, "res_units"), ({"disc_channels": 16}, "disc_channels")])
def test_resume_with_a_different_model_is_refused(override, field, sources, tiny_config, tmp_path):
    config = tiny_config(train={"iterations": 4}, optim={"decay_fraction": 0.0})
    out = run(sources, tmp_path / "run", config)
    with pytest.raises(ModelError) as info:
        run(sources, out, config, overrides={"model": override, "train": {"iterations": 6}}, resume=True)
    message = str(info.value)
    assert f"model.{field}=" in message and "checkpoint.pt" in message and "keeps its model" in message
    assert str(list(override.values())[0]).replace("[", "(").replace("]", ")") in message
    # nothing of the refused run was written
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4
    assert json.loads((out / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"][
        "num_channels"] == 3


def test_fp16_training_keeps_its_grad_scaler_through_checkpoint_and_resume(sources, tiny_config, tmp_path):
    """fp16 autocast (forced on the CPU here; on a GPU without bf16 ``amp: true`` picks it) trains with a
    GradScaler, whose state is checkpointed and restored on resume."""
    config = tiny_config(train={"iterations": 4, "amp": "fp16"}, optim={"decay_fraction": 0.0})
    out = run(sources, tmp_path / "run", config)
    saved = load(out / "checkpoint.pt")["scaler"]
    assert 0 < saved["scale"] < 65536.0  # the default initial scale, lowered after fp16 overflows: it was used
    resumed = train(*sources, out, config=None, resume=True, progress_bar=False)  # nothing left to train
    assert resumed.precision.dtype == torch.float16 and resumed.grad_scaler.state_dict() == saved
    train(*sources, out, config=None, overrides={"train": {"iterations": 6}}, resume=True, progress_bar=False)
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 6 and "scaler" in load(out / "checkpoint.pt")


def test_killed_run_resumes_from_its_last_checkpoint(sources, tiny_config, tmp_path):
    config = tiny_config(train={"checkpoint_every": 2, "progress_every": 2})
    out = tmp_path / "killed run"
    t1, t2 = (str(p[0]) for p in sources)
    command = [sys.executable, "-m", "mri_translate.cli", "train", "--t1", t1, "--t2", t2, "--out", str(out),
               "--config", str(config), "--iterations", "400", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "killed.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while not (out / "checkpoint.pt").exists():
                assert proc.poll() is None, f"training exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no checkpoint after 60 s:\n{log.read_text()}"
                time.sleep(0.05)
            time.sleep(0.3)  # somewhere in the middle of the following iterations
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    saved = load(out / "checkpoint.pt")["trainer"]["iteration"]
    assert saved >= 2 and saved % 2 == 0 and saved < 400
    target = saved + 4
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--config", str(config), "--resume",
                     "--iterations", str(target), "--no-progress"])
    assert code == 0
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == target
    assert len(state["history"]["G"]) == target
    assert load(out / "models" / "model.pt")["iteration"] == target
    # a temporary file can only be a leftover of the killed process (stale ones are removed on resume: see the test below)
    assert all(f".tmp-{proc.pid}" in p.name for p in tmp_files(out)), tmp_files(out)


def test_resume_removes_temporaries_left_by_a_killed_run(sources, tiny_config, tmp_path):
    config = tiny_config(train={"iterations": 4}, optim={"decay_fraction": 0.0})
    out = run(sources, tmp_path / "run", config)
    stale = [out / ".checkpoint.pt.tmp-4194300.pt", out / "models" / ".model.pt.tmp-4194300.pt"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    run(sources, out, config, overrides={"train": {"iterations": 6}}, resume=True)
    assert not tmp_files(out)


def test_output_folder_holding_a_run_needs_resume_or_overwrite(sources, tiny_config, tmp_path):
    config = tiny_config(train={"iterations": 4})
    out = run(sources, tmp_path / "run", config)
    with pytest.raises(InputError, match="--resume") as info:
        run(sources, out, config)
    assert "--overwrite" in str(info.value) and str(out) in str(info.value)
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4  # untouched

    t1, t2 = (str(p[0]) for p in sources)
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--config", str(config),
                     "--iterations", "2", "--overwrite", "--no-progress"])
    assert code == 0
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 2 and len(state["history"]["G"]) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="--resume"):
        run(sources, empty, config, resume=True)
    with pytest.raises(InputError):
        run(sources, tmp_path / "missing", config, resume=True)
    assert not list(empty.iterdir())


def test_cli_train_on_the_case_study_png_folders(shared_data, tiny_config, tmp_path, capsys, caplog):
    """Folders of 2D PNGs (k = 3 asked): trained as k = 1, logged, recorded in the run; convert of a PNG then
    uses k = 1 too."""
    t1, t2 = shared_data / "seed_2d" / "TrainT1", shared_data / "seed_2d" / "TrainT2"
    if not (t1.is_dir() and t2.is_dir()):
        pytest.skip("seed_2d/TrainT1 and TrainT2 not in shared data")
    out = tmp_path / "run #1 with spaces"
    config = tiny_config(train={"progress_every": 2})
    code = cli.main(["train", "--t1", str(t1), "--t2", str(t2), "--out", str(out), "--config", str(config),
                     "--iterations", "4", "--no-progress", "--device", "cpu"])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "models/model.pt",
                 "docs/README.md", "checkpoint.pt", "progress.png", "losses.png"):
        assert (out / name).is_file(), name
    assert len(iio.imread(out / "progress.gif", index=None)) >= 2
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4
    readme = (out / "docs" / "README.md").read_text()
    assert "TrainT1" in readme and "TrainT2" in readme
    assert load(out / "checkpoint.pt")["config"]["model"]["k"] == 1 == load(out / "models" / "model.pt")["config"]["model"]["k"]
    assert any("every source is a 2D image: k = 1 instead of 3" in r.getMessage() for r in caplog.records)
    assert "k = 1 slices per slab" in readme


def test_cli_train_epochs(sources, tiny_config, tmp_path):
    t1, t2 = (str(p[0]) for p in sources)
    out = tmp_path / "run"
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--config", str(tiny_config()),
                     "--epochs", "1", "--no-progress"])
    assert code == 0
    assert load(out / "checkpoint.pt")["trainer"]["iteration"] == 4  # 1 epoch of epoch_length 4


def test_cli_train_nproc_relaunches_this_command(sources, tiny_config, tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr("torch.distributed.run.run", launched.append)  # no real torchrun here
    t1, t2 = (str(p[0]) for p in sources)
    out = tmp_path / "run"
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--config", str(tiny_config()),
                     "--nproc", "2", "--no-progress"])
    assert code == 0
    (args,) = launched
    assert args.nproc_per_node == "2"
    assert "--nproc" not in args.training_script_args
    assert str(out) in args.training_script_args and t1 in args.training_script_args


# Unusable checkpoints ----------------------------------------------------------------------------------


class CodeRunner:
    """Pickles to ``os.system('touch MARKER')``: a checkpoint that runs code if loaded unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_bad_checkpoint(kind, path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "foreign":
        torch.save({"foo": 1}, path)
    else:
        torch.save({"G_AB": CodeRunner(marker), "config": {"model": {"k": 3}}}, path)


def test_the_code_running_checkpoint_is_live(tmp_path):
    """Sanity check of the payload used below: an unsafe load really runs it."""
    marker = tmp_path / "ran"
    write_bad_checkpoint("code", tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "code"])
def test_unusable_checkpoint_on_resume_is_a_one_line_error(kind, sources, tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    marker = tmp_path / "code was executed"
    write_bad_checkpoint(kind, checkpoint, marker)
    config = tiny_config()
    with pytest.raises((ModelError, InputError)) as info:
        run(sources, out, config, resume=True)
    message = str(info.value)
    assert str(checkpoint) in message and "\n" not in message
    assert not marker.exists()

    t1, t2 = (str(p[0]) for p in sources)
    code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--config", str(config), "--resume",
                     "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(checkpoint) in err[0] and err[0].startswith("mri-translate train: error:")
    assert not marker.exists()
    assert not (out / "models").exists()  # nothing written next to the unusable checkpoint


# NaN -----------------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(sources, tiny_config, tmp_path,
                                                                    monkeypatch):
    from mri_translate import engine

    real_step, calls = engine.cyclegan_step, []

    def step(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses["cycle_A"] = float("nan")
        return losses

    monkeypatch.setattr("mri_translate.engine.cyclegan_step", step)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="not finite") as info:
        run(sources, out, tiny_config(train={"checkpoint_every": 2}))
    assert "cycle_A" in str(info.value) and "iteration 3" in str(info.value)
    assert info.value.exit_code == 3
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 2
    assert all(len(points) == 2 for points in state["history"].values())
    assert all(torch.isfinite(v).all() for v in state["G_AB"].values())
    assert load(out / "models" / "model.pt")["iteration"] == 2
    assert not tmp_files(out)


def nan_inputs_from(monkeypatch, first: int, last: float = math.inf) -> dict:
    """Steps ``first`` to ``last`` (1-based calls) get NaN T1w inputs, so every loss is NaN (as after an fp16
    overflow); returns ``{"before", "after"}``: G_AB's weights around step ``first``."""
    from mri_translate import engine

    real_step, calls, weights = engine.cyclegan_step, [], {}

    def step(nets, optimizers, real_a, *args, **kwargs):
        calls.append(1)
        bad = first <= len(calls) <= last
        if len(calls) == first:
            weights["before"] = {k: v.clone() for k, v in nets["G_AB"].state_dict().items()}
        losses = real_step(nets, optimizers, real_a * float("nan") if bad else real_a, *args, **kwargs)
        if len(calls) == first:
            weights["after"] = {k: v.clone() for k, v in nets["G_AB"].state_dict().items()}
        return losses

    monkeypatch.setattr("mri_translate.engine.cyclegan_step", step)
    return weights


def test_an_fp16_overflow_is_skipped_and_the_run_goes_on(sources, tiny_config, tmp_path, monkeypatch, caplog):
    """Under fp16's grad scaler a step whose losses are not finite (iteration 3) is skipped: the scaler leaves the
    weights as they were, the step is logged and counted in the checkpoint, it adds nothing to the loss history,
    and the run goes on to its end."""
    weights = nan_inputs_from(monkeypatch, 3, 3)
    config = tiny_config(train={"iterations": 6, "amp": "fp16"}, optim={"decay_fraction": 0.0}, loss={"pool_size": 1})
    out = run(sources, tmp_path / "run", config)
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["iteration"] == 6 and state["skipped"] == [3]
    assert {tuple(p[0] for p in points) for points in state["history"].values()} == {(1, 2, 4, 5, 6)}
    assert all(np.isfinite(p[1]) for points in state["history"].values() for p in points)
    assert all(torch.equal(weights["before"][k], weights["after"][k]) for k in weights["before"])
    assert all(torch.isfinite(image).all() for key in ("pool_A", "pool_B") for image in state[key]["images"])
    messages = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("iteration 3: loss G, ") and "1 in a row" in messages[0]


def test_fp16_overflows_in_a_row_stop_the_run(sources, tiny_config, tmp_path, monkeypatch):
    """Non-finite fp16 losses from iteration 3 on: the run stops at the OVERFLOW_PATIENCE-th in a row (a
    TrainingError naming them), keeping its last checkpoint (finite weights, the skipped iterations counted)."""
    from mri_translate.engine import OVERFLOW_PATIENCE

    nan_inputs_from(monkeypatch, 3)
    last = 2 + OVERFLOW_PATIENCE
    config = tiny_config(train={"iterations": last + 4, "amp": "fp16"}, optim={"decay_fraction": 0.0})
    with pytest.raises(TrainingError, match=f"not finite in {OVERFLOW_PATIENCE} fp16 steps in a row") as info:
        run(sources, tmp_path / "run", config)
    assert f"(iterations 3 to {last})" in str(info.value) and "last good checkpoint is kept" in str(info.value)
    state = load(tmp_path / "run" / "checkpoint.pt")
    saved = state["trainer"]["iteration"]
    assert saved == (last - 1) // 4 * 4 and state["skipped"] == list(range(3, saved + 1))
    assert all(torch.isfinite(v).all() for v in state["G_AB"].values())


# Quality -------------------------------------------------------------------------------------------------


def pearson(a, b, mask):
    return float(np.corrcoef(np.asarray(a, dtype=np.float64)[mask], np.asarray(b, dtype=np.float64)[mask])[0, 1])


@pytest.mark.slow
def test_short_run_on_synthetic_data_learns_without_the_prior(tiny_config, tmp_path):
    """250 iterations (about 20 s on one core) of the plain CycleGAN (contrast prior OFF, so nothing hands the
    generators the answer): the cycle loss falls, and the held-out T1w translated by G_AB moves towards the
    T2w domain: its in-brain intensity histogram lies clearly nearer the true T2w's than the input's does."""
    from mri_translate.inference import Translator
    from mri_translate.metrics import histogram_distance
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", n_subjects=3, resolution=3.0)
    config = tiny_config(model={"channels": [16, 32, 64], "disc_channels": 16}, data={"crop": 64}, loss={"prior": 0.0},
                         train={"iterations": 250, "epoch_length": 50, "checkpoint_every": 50,
                                "progress_every": 250})
    out = run(([data["t1"][0]], [data["t2"][1]]), tmp_path / "run", config)
    history = load(out / "checkpoint.pt")["history"]
    cycle = [a + b for (_, a), (_, b) in zip(history["cycle_A"], history["cycle_B"])]
    assert len(cycle) == 250 and np.mean(cycle[-50:]) < 0.7 * np.mean(cycle[:50])
    assert all(value == 0 for _, value in history["prior_A"])

    t1_path = data["t1"][2]
    t2 = nib.load(data["t2"][2]).get_fdata()
    mask = np.asarray(nib.load(data["mask"][2]).dataobj) > 0
    trained = Translator.from_run(out, device="cpu")(t1_path)[0].numpy()
    assert trained.shape == t2.shape and np.isfinite(trained).all()
    t1 = nib.load(t1_path).get_fdata()
    distance = {name: histogram_distance(image, t2, mask, mask) for name, image in (("trained", trained), ("input", t1))}
    assert distance["trained"] < 0.85 * distance["input"], distance  # measured: 0.21 vs 0.29


def test_a_checkpoint_translates_like_the_exported_model(sources, tiny_config, tmp_path):
    """checkpoint.pt carries the normalisation too: Translator.from_run gives the same intensities from it as
    from models/model.pt; a checkpoint without one is refused instead of mapping outputs to (0, 1)."""
    from mri_translate.inference import Translator

    out = run(sources, tmp_path / "run", tiny_config(train={"iterations": 4}))
    volume = sources[0][0]
    for direction in ("t1-to-t2", "t2-to-t1"):
        exported = Translator.from_run(out / "models" / "model.pt", direction, device="cpu")(volume)
        checkpointed = Translator.from_run(out / "checkpoint.pt", direction, device="cpu")(volume)
        torch.testing.assert_close(checkpointed.as_tensor(), exported.as_tensor(), rtol=0, atol=0)
    ranges = load(out / "models" / "model.pt")["normalization"]
    assert ranges["A"] != ranges["B"] and tuple(ranges["B"]) != (0.0, 1.0)  # so a lost range would show
    state = load(out / "checkpoint.pt")
    del state["normalization"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="old.pt: holds no intensity normalisation"):
        Translator.from_run(tmp_path / "old.pt", device="cpu")


@pytest.mark.slow
def test_a_short_run_on_real_scans_beats_the_identity(shared_data, tiny_config, tmp_path):
    """150 iterations on two real BraTS 2018 T1w and one real T2w (different people), at 1 mm with landmark
    standardisation and the brain-aware prior: the held-out real tcga_du_7294 T1w translated to T2w scores a
    higher in-brain PSNR against its true T2w than the T1w itself does (the identity)."""
    from mri_translate.evaluate import load_array
    from mri_translate.metrics import auto_mask, paired_metrics

    real = shared_data / "volumes" / "train_real"
    t1 = sorted(real.glob("brats18_*_T1w.nii.gz"))[:2]
    config = tiny_config(model={"channels": [16, 32, 64], "disc_channels": 16},
                         data={"crop": 64, "spacing": 1.0, "standardize": True},
                         train={"iterations": 150, "epoch_length": 50, "checkpoint_every": 150,
                                "progress_every": 150})
    out = run((t1, [real / "arc_m2208_T2w.nii.gz"]), tmp_path / "run", config)
    held_out = shared_data / "volumes" / "tcga_du_7294"
    output = tmp_path / "t2.nii.gz"
    assert cli.main(["convert", str(held_out / "t1.nii.gz"), str(output), "--model", str(out), "--no-progress"]) == 0
    truth = load_array(held_out / "t2.nii.gz")
    brain = auto_mask(truth)
    model, identity = (paired_metrics(load_array(image), truth, brain)["mask"]
                       for image in (output, held_out / "t1.nii.gz"))
    assert model["psnr"] > identity["psnr"] + 1.0, (model, identity)
    assert model["ssim_3d"] > identity["ssim_3d"]


def test_a_prior_residual_model_carries_the_training_domains_prior(sources, tiny_config, tmp_path):
    """model.prior_residual: the generators get the contrast prior of the training domains before the first
    step, and model.pt carries it (and whether each domain was skull-stripped): with a zero learning rate the
    exported T1w -> T2w generator is exactly that prior's map, and the Translator rebuilds it from model.pt
    alone."""
    from mri_translate.contrast_prior import ContrastPrior
    from mri_translate.data import load_slices
    from mri_translate.inference import Translator

    config = tiny_config(model={"prior_residual": True}, optim={"lr": 0.0}, train={"iterations": 4})
    out = run(sources, tmp_path / "run", config)
    a, b = (load_slices(s, 3, 0.05, None, True) for s in sources)
    prior = ContrastPrior.between(a.slabs, b.slabs, edge=6)
    state = load(out / "models" / "model.pt")
    assert state["skull_stripped"] == {"A": a.volumes[0].skull_stripped, "B": b.volumes[0].skull_stripped}
    torch.testing.assert_close(state["G_AB"]["prior.source"], prior.source)
    torch.testing.assert_close(state["G_AB"]["prior.target"], prior.target)
    translator = Translator.from_run(out / "models" / "model.pt", "t1-to-t2", device="cpu", amp=False)  # fp32
    x = a.slabs[:2, :, :32, :32].float()
    with torch.no_grad():
        whole = ContrastPrior(prior.source, prior.target, edge=1)  # the generator maps all the foreground
        torch.testing.assert_close(translator.generator(x), whole(x).clamp(-0.995, 0.995), rtol=0, atol=1e-5)


def _weights(path, name="G_AB"):
    return torch.cat([v.flatten().float() for v in load(path)[name].values()])


def test_a_run_started_from_a_model_trains_on_from_its_generators_and_takes_their_shape(sources, tiny_config,
                                                                                       tmp_path, caplog):
    """train.init (mri-translate train --init): the new run's generators start as the model's (a few steps later
    they are still close to them, where a fresh run's are not), in the model's shape whatever the preset says;
    its config records where it started; the discriminators start fresh."""
    from mri_translate.train import initial_networks

    first = run(sources, tmp_path / "first", tiny_config(train={"iterations": 4}))
    model = first / "models" / "model.pt"
    other_shape = tiny_config("other.yaml", model={"channels": [4, 8, 12], "res_units": 2},
                              train={"iterations": 2, "seed": 1}, optim={"lr": 1e-5})
    with caplog.at_level("INFO", logger="mri_translate.train"):
        tuned = run(sources, tmp_path / "tuned", other_shape, overrides={"train": {"init": str(first)}})
    fresh = run(sources, tmp_path / "fresh",  # another seed: other random weights, as the tuned run would have
                tiny_config("fresh.yaml", train={"iterations": 2, "seed": 1}, optim={"lr": 1e-5}))
    assert f"generators start from {model}" in caplog.text
    state = load(tuned / "models" / "model.pt")
    assert state["config"]["model"]["channels"] == [8, 16] and state["config"]["model"]["res_units"] == 1
    assert state["config"]["train"]["init"] == str(first)
    for name in ("G_AB", "G_BA"):
        start = _weights(model, name)
        assert (_weights(tuned / "models" / "model.pt", name) - start).norm() < 0.01 * start.norm()
        assert (_weights(fresh / "models" / "model.pt", name) - start).norm() > 0.5 * start.norm()
    from mri_translate.config import RunConfig
    from mri_translate.networks import build_networks

    nets = initial_networks(str(model), RunConfig().model)
    for name in ("G_AB", "G_BA"):
        assert all(torch.equal(a, b) for a, b in zip(nets[name].state_dict().values(), load(model)[name].values()))
    fresh_d = build_networks(RunConfig().model)["D_A"].state_dict()  # the run's own discriminator shape
    assert [v.shape for v in nets["D_A"].state_dict().values()] == [v.shape for v in fresh_d.values()]


def test_a_model_that_cannot_start_a_run_is_refused_in_one_line_before_anything_is_written(sources, tiny_config,
                                                                                          tmp_path, capsys):
    from mri_translate.bundle import compose_model

    a = run(sources, tmp_path / "a", tiny_config(train={"iterations": 2}))
    b = run(sources, tmp_path / "b", tiny_config("b.yaml", model={"k": 1}, train={"iterations": 2}))
    mixed = compose_model(a, b, tmp_path / "mixed.pt")  # T1w -> T2w with k = 3, T2w -> T1w with k = 1
    t1, t2 = (str(p[0]) for p in sources)
    for model, words in ((mixed, ["differ in shape", "model.k 3 and 1"]), (tmp_path / "none.pt", ["not found"])):
        out = tmp_path / f"run-{model.stem}"
        code = cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(out), "--init", str(model),
                         "--config", str(tiny_config()), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and str(model) in err[0] and all(w in err[0] for w in words), err
        assert not out.exists()
    with pytest.raises(SystemExit):  # a new run from a model, or this run continued: not both
        cli.main(["train", "--t1", t1, "--t2", t2, "--out", str(a), "--init", str(a), "--resume"])
