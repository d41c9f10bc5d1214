"""Speed and memory: training slabs/s at batch 1, 8 and 32, the training loader alone with 0, 2 and 4 workers,
whole-file conversion of a 256x256x150 volume, and the training
data's load time and peak memory for 5, 10 and 21 real volumes (``--part data``: that part alone).

    python scripts/bench_speed.py [--json docs/bench_speed.json] [--iterations 10] [--part all|speed|training|data]
    python scripts/bench_speed.py --part speed --device cuda --json docs/bench_speed_gpu.json --iterations 30
    python scripts/bench_speed.py --render docs/bench_speed_gpu.json   # the docs section of a saved run

Each measurement runs in its own subprocess so peak memory (max RSS; on GPU also torch's peak allocated) is
the measurement's own. On a GPU the training and conversion run with AMP on and off, on a CPU that computes bf16
too; on a CPU without bf16 AMP is off anyway, so each row runs once, and the rows go to their own JSON
(``docs/bench_speed_cpu_fp32*.json``) and docs section (:func:`section_name`), beside the bf16 machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "volumes" / "train_real"
#: (T1w, T2w) volumes of ``train_real`` loaded for each data-set size: 5, 10 and all 21.
DATA_SIZES = ((3, 2), (7, 3), (16, 5))
#: (T1w, T2w) volumes also measured with ``data.planes`` on (near-isotropic volumes stored along three axes)
DATA_SIZES_PLANES = ((16, 5),)
#: convert rows of one file: conversions timed per row (the median is reported)
CONVERT_REPEATS = 3
GENERATORS = {"default (32-64-128-256, 2 res units)": [[32, 64, 128, 256], 2],
              "light (16-32-64-128, 2 res units)": [[16, 32, 64, 128], 2]}


def bench_train(channels, res_units, size, iterations, device, amp, channels_last=False, compiled=False,
                batch: int = 1) -> dict:
    """Full CycleGAN iterations (both generators, both discriminators) at size x size, ``batch`` slabs of each
    domain, k=3, with the mixed precision ``train.amp`` = ``amp`` gives on ``device`` (bf16 on a CPU that computes
    it); a slab/s figure counts the slabs of one domain (what each direction's generator sees);
    ``channels_last``: networks and inputs in NHWC memory format; ``compiled``: each network through
    ``torch.compile`` (its compile time is reported as ``warmup_s``)."""
    import torch

    from mri_translate.config import RunConfig
    from mri_translate.cyclegan import CycleGANLoss, ImagePool, cyclegan_step
    from mri_translate.networks import build_networks
    from mri_translate.runtime import precision_for

    config = RunConfig.from_dict({"model": {"channels": channels, "res_units": res_units}})
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    nets = {k: v.to(device, memory_format=memory_format) for k, v in build_networks(config.model).items()}
    adam = dict(lr=2e-4, betas=(0.5, 0.999))
    optimizers = {"G": torch.optim.Adam([*nets["G_AB"].parameters(), *nets["G_BA"].parameters()], **adam),
                  "D": torch.optim.Adam([*nets["D_A"].parameters(), *nets["D_B"].parameters()], **adam)}
    if compiled:
        nets = {k: torch.compile(v) for k, v in nets.items()}
    precision = precision_for(torch.device(device), amp)
    autocast, scaler = precision.autocast, precision.grad_scaler()
    pools = {"A": ImagePool(), "B": ImagePool()}
    a, b = ((torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=memory_format)
            for _ in range(2))
    loss = CycleGANLoss()
    start = time.perf_counter()
    for _ in range(3):
        cyclegan_step(nets, optimizers, a, b, loss, pools, autocast, scaler)
    _sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iterations):
        cyclegan_step(nets, optimizers, a, b, loss, pools, autocast, scaler)
    _sync(device)
    seconds = (time.perf_counter() - start) / iterations
    return {"s_per_iteration": round(seconds, 4), "iterations_per_s": round(1 / seconds, 2),
            "slabs_per_s": round(batch / seconds, 1), "warmup_s": round(warmup, 1), "precision": precision.describe()}


def bench_loader(workers: int, batches: int = 40, batch_size: int = 8, crop: int = 128) -> dict:
    """The training DataLoader alone (augmented slabs of 3 T1w and 2 T2w real volumes, batches of ``batch_size``)
    with ``workers`` persistent worker processes: slabs/s of one domain over ``batches`` batches after the first
    (which pays for starting the workers)."""
    import torch

    from mri_translate.config import RunConfig
    from mri_translate.data import load_slices, make_loader

    t1, t2 = sorted(REAL.glob("*_T1w.nii.gz"))[:3], sorted(REAL.glob("*_T2w.nii.gz"))[:2]
    config = RunConfig.from_dict({"data": {"crop": crop, "batch_size": batch_size, "num_workers": workers},
                                  "train": {"epoch_length": batches + 1}})
    a, b = (load_slices(files, 3, spacing=1.0) for files in (t1, t2))
    loader = make_loader(a, b, config)
    loader.sampler.set_epoch(1)
    batches_seen = iter(loader)
    next(batches_seen)
    start = time.perf_counter()
    count = sum(len(batch["A"]) for batch in batches_seen)
    seconds = time.perf_counter() - start
    return {"slabs_per_s": round(count / seconds, 1), "batches": batches, "torch_threads": torch.get_num_threads()}


def bench_convert(channels, res_units, device, amp, batch_size, mirror=None, fuse_planes=True, files=1,
                  repeats: int = CONVERT_REPEATS) -> dict:
    """``convert`` of a 256x256x150 NIfTI at 1 mm, file in to file out (load, standardise, translate, standardise
    the translation, save, sidecar), as the shipped model does it (landmark standardisers, 1 mm); ``mirror``: also
    translate the mirrored volume and average (``None``: as the shipped model's ``model.mirror`` says; ``False``
    halves the network work);
    ``fuse_planes``: translate along all three axes of this isotropic volume and average (the default;
    ``--single-plane`` does a third of the network work); ``files`` > 1: a batch of that many such files (the
    next one read while one is translated), reported as volumes per minute. The shipped model's T1w -> T2w
    inference settings (the refit on the inverted input) are taken from its file, and so are its members (models
    averaged in, each with its own settings: :func:`~mri_translate.bundle.average_models`), so the refit and the
    members' work are timed too. A single file is converted ``repeats`` times after the warm-up and the run of
    median wall time is reported, its stages with it, beside the fastest and slowest (``wall_s_range``): on a
    shared 2-core machine one conversion's time varies by up to 1.7x from run to run."""
    import nibabel as nib
    import numpy as np
    import torch

    from mri_translate.bundle import INFERENCE_SETTINGS, average_models, export_state
    from mri_translate.model_file import MODEL_FORMAT
    from mri_translate.config import RunConfig
    from mri_translate.convert import convert_file
    from mri_translate.inference import Translator
    from mri_translate.model_file import DEFAULT_MODEL, MEMBERS_KEY, direction_state
    from mri_translate.networks import ModifiedUNet
    from mri_translate.runtime import read_checkpoint
    from mri_translate.standardize import LandmarkStandardizer

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = np.zeros((256, 256, 150), np.float32)
        volume[40:216, 30:226, 10:140] = rng.uniform(100, 1000, (176, 196, 130))
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp / "in.nii.gz"))
        shipped = read_checkpoint(DEFAULT_MODEL)
        generator = ModifiedUNet(3, channels, res_units)
        fitted = LandmarkStandardizer.fit([torch.from_numpy(volume)[None]])
        state = export_state({"A": [0.0, 1000.0], "B": [0.0, 1000.0]}, spacing=1.0, standardizers=(fitted, fitted))

        def save_like(settings: dict, path: Path) -> Path:
            """A model file of ``generator`` with the T1w -> T2w inference settings of ``settings`` (a model's
            state)."""
            own = settings["config"]["model"]
            inference = {key: own[key] for key in INFERENCE_SETTINGS if key in own}
            config = RunConfig.from_dict({"model": {"channels": channels, "res_units": res_units, **inference}})
            torch.save({"format": MODEL_FORMAT, "G_AB": generator.state_dict(), "G_BA": generator.state_dict(),
                        "config": config.to_dict(), **state}, path)
            return path

        save_like(direction_state(shipped, "t1-to-t2"), tmp / "model.pt")
        members = (shipped.get(MEMBERS_KEY) or {}).get("t1-to-t2", [])
        if members:
            average_models(tmp / "model.pt", [save_like(member, tmp / f"member{i}.pt")
                                              for i, member in enumerate(members)], tmp / "model.pt")
        translator = Translator.from_run(tmp / "model.pt", device=device, batch_size=batch_size, amp=amp,
                                         mirror=mirror, fuse_planes=fuse_planes)
        # force: the input is noise, which the contrast check refuses (its own cost: scripts/bench_checks.py)
        convert_file(translator, tmp / "in.nii.gz", tmp / "warm.nii.gz", force=True)  # warm-up (imports, cuDNN)
        _sync(device)
        if files > 1:
            from mri_translate.convert import convert_batch

            pairs = [(tmp / "in.nii.gz", tmp / "batch" / f"out{i}.nii.gz") for i in range(files)]
            start = time.perf_counter()
            report = convert_batch(translator, pairs, progress=False, force=True)
            _sync(device)
            seconds = time.perf_counter() - start
            assert len(report.done) == files, report.failed
            return {"wall_s": round(seconds, 3), "volumes_per_min": round(60 * files / seconds, 2),
                    "precision": translator.precision.describe()}
        timed = []  # (wall seconds, stages) per run
        for _ in range(repeats):
            start = time.perf_counter()
            convert_file(translator, tmp / "in.nii.gz", tmp / "out.nii.gz", force=True, overwrite=True)
            _sync(device)
            timed.append((time.perf_counter() - start, dict(translator.clock.seconds)))  # convert --profile's
        seconds, stages = sorted(timed, key=lambda run: run[0])[len(timed) // 2]
    walls = [wall for wall, _ in timed]
    return {"wall_s": round(seconds, 3), "wall_s_range": [round(min(walls), 3), round(max(walls), 3)],
            "repeats": repeats, "slices_per_s": round(150 / seconds, 1), "precision": translator.precision.describe(),
            "stages_s": {name: round(value, 3) for name, value in stages.items()}}


def bench_data(n_t1: int, n_t2: int, planes: bool = False, iterations: int = 50, crop: int = 128,
               batch_size: int = 1) -> dict:
    """``load_slices`` of the first ``n_t1`` T1w and ``n_t2`` T2w volumes of ``train_real`` (1 mm in-plane,
    k = 3, ``data.planes`` = ``planes``), then ``iterations`` batches of augmented slabs from the training
    DataLoader."""
    import nibabel as nib
    import numpy as np
    import torch

    from mri_translate.config import RunConfig
    from mri_translate.data import load_slices, make_loader

    t1 = sorted(REAL.glob("*_T1w.nii.gz"))[:n_t1]
    t2 = sorted(REAL.glob("*_T2w.nii.gz"))[:n_t2]
    config = RunConfig.from_dict({"data": {"crop": crop, "batch_size": batch_size, "augment": True, "planes": planes},
                                  "train": {"epoch_length": iterations}})
    start = time.perf_counter()
    a, b = (load_slices(files, 3, spacing=1.0, planes=config.data.planes) for files in (t1, t2))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in make_loader(a, b, config):
        assert batch["A"].shape == (batch_size, 3, crop, crop)
    batches_s = time.perf_counter() - start
    stored = sum(v.slices.numel() * v.slices.element_size() for d in (a, b) for v in d.volumes)
    sources = sum(4 * int(np.prod(nib.load(str(f)).shape)) for f in t1 + t2)
    return {"volumes": n_t1 + n_t2, "load_s": round(load_s, 1), "batches_s": round(batches_s, 2),
            "stored_mb": round(stored / 2**20, 1), "sources_mb": round(sources / 2**20, 1), "slices_A": len(a),
            "slices_B": len(b), "planes": config.data.planes, "torch_threads": torch.get_num_threads(),
            "kept": {Path(v.path).name: sum(len(u.kept) for u in d.volumes if u.path == v.path)
                     for d in (a, b) for v in d.volumes}}


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _child(spec: dict) -> None:
    """Run one measurement and print it as JSON with its peak memory."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if spec["kind"] == "data":
        result = bench_data(spec["t1"], spec["t2"], spec.get("planes", False))
    elif spec["kind"] == "loader":
        result = bench_loader(spec["workers"])
    elif spec["kind"] == "train":
        result = bench_train(spec["channels"], spec["res_units"], spec["size"], spec["iterations"], spec["device"],
                             spec["amp"], spec.get("channels_last", False), spec.get("compiled", False),
                             spec.get("batch", 1))
    else:
        result = bench_convert(spec["channels"], spec["res_units"], spec["device"], spec["amp"], spec["batch_size"],
                               spec.get("mirror"), spec.get("fuse_planes", True), spec.get("files", 1))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if spec["device"].startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:  # a row that fails is reported with its error; the others still run
        error = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        print(out.stderr[-3000:], file=sys.stderr)
        return {**spec, "error": error}
    return {**spec, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="where the rows go (default: docs/<section_name>.json)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="'' to skip")
    parser.add_argument("--part", choices=("all", "speed", "training", "convert", "data"), default="all",
                        help="speed: training, loader and convert rows; training: the training and loader rows; "
                             "convert: the convert rows")
    parser.add_argument("--generator", choices=("", "default", "light"), default="",
                        help="only this generator's rows (default: both)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="which speed rows: cpu, cuda (AMP on/off, channels_last, torch.compile) or both")
    parser.add_argument("--render", metavar="JSON", help="only write the docs section of a saved --json (e.g. one "
                                                           "brought back from a GPU machine) and stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if args.render:
        write_speed_section(Path(args.render), args.markdown)
        return
    import torch

    from mri_translate.runtime import INFERENCE_BATCH, cpu_has_bf16

    if args.part in ("all", "data"):
        bench_data_memory(args.markdown)
    if args.part == "data":
        return
    # on the CPU, AMP is bf16 (training and translation) where the CPU computes bf16 natively, else off (the
    # same as AMP off: measured once)
    devices = ([("cpu", True)] + ([("cpu", False)] if cpu_has_bf16() else []) if args.device != "cuda" else []) + \
        ([("cuda", True), ("cuda", False)] if torch.cuda.is_available() and args.device != "cpu" else [])
    if not devices:
        parser.error("--device cuda: no CUDA device here")
    specs = []
    for name, (channels, res_units) in GENERATORS.items():
        if not name.startswith(args.generator):
            continue
        for device, amp in devices:
            # batches of 1, 8 and 32 slabs (128 px on the CPU, 256 on a GPU) with AMP, 1 and 8 without; with AMP
            # also NHWC memory format at batch 8, and on the GPU (for the shipped light generator) torch.compile
            size = 128 if device == "cpu" else 256
            variants = [{"batch": batch} for batch in ((1, 8, 32) if amp else (1, 8))]
            if amp:
                variants += [{"batch": 8, "channels_last": True}] + (
                    [{"batch": 8, "compiled": True}] if device == "cuda" and name.startswith("light") else [])
            for variant in variants if args.part != "convert" else ():
                specs.append({"kind": "train", "generator": name, "channels": channels, "res_units": res_units,
                              "size": size, "iterations": args.iterations, "device": device, "amp": amp, **variant})
            if args.part == "training":
                continue
            batch_size = INFERENCE_BATCH[device]  # convert's default on this device
            for mirror, fuse in ([(None, True), (None, False), (False, False)] if device == "cpu"
                                 else [(None, True), (False, False)]):  # None: the shipped model's own
                specs.append({"kind": "convert", "generator": name, "channels": channels, "res_units": res_units,
                              "device": device, "amp": amp, "batch_size": batch_size, "mirror": mirror,
                              "fuse_planes": fuse})
            if amp:  # a cohort: 10 files in a batch, default settings
                specs.append({"kind": "convert", "generator": name, "channels": channels, "res_units": res_units,
                              "device": device, "amp": amp, "batch_size": batch_size,
                              "mirror": None, "fuse_planes": True, "files": 10})
    if REAL.is_dir() and args.device != "cuda" and args.part != "convert":  # the loader alone, in the main process and in workers
        specs += [{"kind": "loader", "workers": workers, "device": "cpu", "amp": False} for workers in (0, 2, 4)]
    # the JSON is rewritten after every row, so a run stopped by a time limit keeps what it measured
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cpu_bf16": cpu_has_bf16(), "date": time.strftime("%Y-%m-%d")}
    args.json = args.json or str(ROOT / "docs" / f"{section_name(machine, specs)}.json")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in specs:
        results.append(run(spec))
        print(json.dumps(results[-1]))
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    write_speed_section(Path(args.json), args.markdown)


def section_name(machine: dict, rows: list[dict]) -> str:
    """The docs section (and default JSON name) of a run's rows: ``bench_speed``, with ``_gpu`` for GPU rows,
    ``_cpu_fp32`` for CPU rows of a machine without bf16 (``machine["cpu_bf16"]``; runs saved before it existed had
    bf16) and ``_training`` for training and loader rows only, so one kind of run never erases another's table."""
    gpu = any(r["device"].startswith("cuda") for r in rows)
    training = all(r["kind"] in ("train", "loader") for r in rows)
    return "bench_speed" + ("_gpu" if gpu else "" if machine.get("cpu_bf16", True) else "_cpu_fp32") + \
        ("_training" if training else "")


def write_speed_section(saved: Path, markdown: str) -> None:
    """The speed table of a saved ``--json`` in its own docs section (:func:`section_name`)."""
    data = json.loads(saved.read_text())
    machine, results = data["machine"], data["results"]
    lines = ["| generator | what | device | result | peak RSS (MB) | peak GPU (MB) |", "|---|---|---|---|---|---|"]
    for r in results:
        # rows saved before fuse_planes existed translated one plane
        flags = ("" if r.get("fuse_planes", False) else ", --single-plane") + \
            ("" if r.get("mirror") is not False else ", --no-mirror")
        what = f"train {r['size']}x{r['size']}, batch {r.get('batch', 1)}" if r["kind"] == "train" else \
            f"the training loader alone, batch 8, {r['workers']} workers" if r["kind"] == "loader" else \
            f"convert 256x256x150 file to file, batch {r['batch_size']}{flags}" + (
                f", a batch of {r['files']} files" if r.get("files", 1) > 1 else "")
        result = (f"failed: {r['error']}" if "error" in r else
                  f"{r['slabs_per_s']} slabs/s" if r["kind"] == "loader" else
                  f"{r['s_per_iteration']} s/it, {r.get('slabs_per_s', r['iterations_per_s'])} slabs/s"
                  + (f", {r['precision']}" if "precision" in r else "") if r["kind"] == "train"
                  else f"{r['wall_s']} s ({r['volumes_per_min']} volumes/min), {r['precision']}" if "volumes_per_min" in r
                  else f"{r['wall_s']} s ({r['slices_per_s']} slices/s)" + (
                      f", median of {r['repeats']} runs ({r['wall_s_range'][0]}-{r['wall_s_range'][1]} s)"
                      if "repeats" in r else "") + (
                      f", {r['precision']}; " + ", ".join(f"{k} {v}" for k, v in r["stages_s"].items())
                      if "stages_s" in r else ""))
        device = r["device"] + (" AMP" if r["amp"] and r["device"] != "cpu" else "") + \
            (", channels_last" if r.get("channels_last") else "") + \
            (f", torch.compile ({r['warmup_s']} s to compile)" if r.get("compiled") else "")
        lines.append(f"| {r.get('generator', '-')} | {what} | {device} | {result} | {r.get('peak_rss_mb', '')} | "
                     f"{r.get('peak_gpu_mb', '')} |")
    section = section_name(machine, results)
    gpu, training = "_gpu" in section, section.endswith("_training")
    fp32 = " on a CPU without bf16" if "_cpu_fp32" in section else ""
    text = (f"## {'Training speed' if training else 'Speed'}{' on GPU' if gpu else fp32} (scripts/bench_speed.py"
            f"{' --part training' if training else ''}, {machine.get('date', saved.name)})\n\n"
            f"Machine: {describe_machine(machine)}. "
            "A training iteration updates both generators and both discriminators (k = 3); slabs/s counts one "
            "domain's slabs, what each direction's generator sees.\n\n" + "\n".join(lines)
            + "\n")
    print(text)
    if markdown:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmarks_doc import replace_section

        replace_section(section, text, Path(markdown))


def describe_machine(machine: dict) -> str:
    """The saved ``machine`` dict as one line of prose (what a run saved before a key existed leaves out)."""
    parts = [machine.get("platform"), f"{machine['cpus']} CPU cores" if "cpus" in machine else None,
             f"torch {machine['torch']}" if "torch" in machine else None,
             (machine["gpu"] or "no GPU") if "gpu" in machine else None,
             {True: "CPU with bf16", False: "CPU without bf16"}.get(machine.get("cpu_bf16"))]
    return ", ".join(str(part) for part in parts if part) or "not recorded"


def bench_data_memory(markdown: str) -> None:
    """Peak RSS and load time of the training data for 5, 10 and 21 real volumes; its own docs section."""
    if not REAL.is_dir():
        print(f"{REAL} not found: data memory benchmark skipped")
        return
    results = [run({"kind": "data", "t1": n_t1, "t2": n_t2, "device": "cpu", "planes": planes})
               for planes, sizes in ((False, DATA_SIZES), (True, DATA_SIZES_PLANES)) for n_t1, n_t2 in sizes]
    lines = ["| volumes (T1w + T2w) | planes | sources as float32 (MB) | load | 50 batches | usable slices A / B | "
             "stored slices (MB) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['volumes']} ({r['t1']} + {r['t2']}) | {'three' if r['planes'] else 'one'} | "
                     f"{r['sources_mb']} | {r['load_s']} s | "
                     f"{r['batches_s']} s | "
                     f"{r['slices_A']} / {r['slices_B']} | {r['stored_mb']} | {r['peak_rss_mb']} |")
    kept = ", ".join(f"{name.replace('.nii.gz', '')} {n}" for name, n in results[-1]["kept"].items())
    text = (f"## Training data memory (scripts/bench_speed.py --part data, {time.strftime('%Y-%m-%d')})\n\n"
            f"`load_slices` of the first volumes of `../shared/data/volumes/train_real` (sorted by name; RAS, 1 mm "
            "in-plane, k = 3, each stored once as float16 cropped to the head; `planes` three: `data.planes` on, "
            "near-isotropic volumes stored along all three axes), then 50 batches of augmented "
            f"128x128 slabs from `make_loader`, in one process per row ({os.cpu_count()} CPUs, "
            f"{results[-1]['torch_threads']} torch threads).\n\n" + "\n".join(lines) +
            f"\n\nUsable slices per volume (all 21, three planes): {kept}. Before slabs were cut lazily (every "
            "slab of every volume padded to the largest slice and stored k times), training on all 21 was killed at "
            "24 GB.\n")
    print(text)
    if markdown:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmarks_doc import replace_section

        replace_section("bench_data_memory", text, Path(markdown))


if __name__ == "__main__":
    main()
