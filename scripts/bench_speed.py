"""Speed and memory: training iterations/s and whole-file conversion of a 256x256x150 volume.

    python scripts/bench_speed.py [--json docs/bench_speed.json] [--iterations 10]

Each measurement runs in its own subprocess so peak memory (max RSS; on GPU also torch's peak allocated) is
the measurement's own. On a GPU the training and conversion run with AMP on and off.
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
GENERATORS = {"default (32-64-128-256, 2 res units)": [[32, 64, 128, 256], 2],
              "light (16-32-64-128, 2 res units)": [[16, 32, 64, 128], 2]}


def bench_train(channels, res_units, size, iterations, device, amp) -> dict:
    """Full CycleGAN iterations (both generators, both discriminators) at size x size, batch 1, k=3."""
    import torch

    from mri_translate.config import RunConfig
    from mri_translate.cyclegan import CycleGANLoss, ImagePool, cyclegan_step
    from mri_translate.networks import build_networks
    from mri_translate.runtime import precision_for

    config = RunConfig.from_dict({"model": {"channels": channels, "res_units": res_units}})
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in build_networks(config.model).items()}
    adam = dict(lr=2e-4, betas=(0.5, 0.999))
    optimizers = {"G": torch.optim.Adam([*nets["G_AB"].parameters(), *nets["G_BA"].parameters()], **adam),
                  "D": torch.optim.Adam([*nets["D_A"].parameters(), *nets["D_B"].parameters()], **adam)}
    precision = precision_for(torch.device(device), amp)
    autocast, scaler = precision.autocast, precision.grad_scaler()
    pools = {"A": ImagePool(), "B": ImagePool()}
    a = torch.rand(1, 3, size, size, device=device) * 2 - 1
    b = torch.rand(1, 3, size, size, device=device) * 2 - 1
    loss = CycleGANLoss()
    for _ in range(2):
        cyclegan_step(nets, optimizers, a, b, loss, pools, autocast, scaler)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        cyclegan_step(nets, optimizers, a, b, loss, pools, autocast, scaler)
    _sync(device)
    seconds = (time.perf_counter() - start) / iterations
    return {"s_per_iteration": round(seconds, 4), "iterations_per_s": round(1 / seconds, 2)}


def bench_convert(channels, res_units, device, amp, batch_size) -> dict:
    """``convert`` of a 256x256x150 NIfTI, file in to file out (load, translate, save, sidecar)."""
    import nibabel as nib
    import numpy as np
    import torch

    from mri_translate.config import RunConfig
    from mri_translate.convert import convert_file
    from mri_translate.inference import Translator
    from mri_translate.networks import ModifiedUNet

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = np.zeros((256, 256, 150), np.float32)
        volume[40:216, 30:226, 10:140] = rng.uniform(100, 1000, (176, 196, 130))
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp / "in.nii.gz"))
        config = RunConfig.from_dict({"model": {"channels": channels, "res_units": res_units}})
        generator = ModifiedUNet(3, channels, res_units)
        torch.save({"G_AB": generator.state_dict(), "G_BA": generator.state_dict(), "config": config.to_dict(),
                    "normalization": {"A": [0.0, 1000.0], "B": [0.0, 1000.0]}}, tmp / "model.pt")
        translator = Translator.from_run(tmp / "model.pt", device=device, batch_size=batch_size, amp=amp)
        convert_file(translator, tmp / "in.nii.gz", tmp / "warm.nii.gz")  # warm-up (lazy imports, cuDNN)
        _sync(device)
        start = time.perf_counter()
        convert_file(translator, tmp / "in.nii.gz", tmp / "out.nii.gz")
        _sync(device)
        seconds = time.perf_counter() - start
    return {"wall_s": round(seconds, 3), "slices_per_s": round(150 / seconds, 1)}


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _child(spec: dict) -> None:
    """Run one measurement and print it as JSON with its peak memory."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if spec["kind"] == "train":
        result = bench_train(spec["channels"], spec["res_units"], spec["size"], spec["iterations"], spec["device"],
                             spec["amp"])
    else:
        result = bench_convert(spec["channels"], spec["res_units"], spec["device"], spec["amp"], spec["batch_size"])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if spec["device"].startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True)
    return {**spec, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench_speed.json"))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="'' to skip")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    import torch

    devices = [("cpu", False)] + ([("cuda", True), ("cuda", False)] if torch.cuda.is_available() else [])
    results = []
    for name, (channels, res_units) in GENERATORS.items():
        for device, amp in devices:
            for size in (128, 256):
                spec = {"kind": "train", "generator": name, "channels": channels, "res_units": res_units,
                        "size": size, "iterations": args.iterations, "device": device, "amp": amp}
                results.append(run(spec))
                print(json.dumps(results[-1]))
            for batch_size in ([1, 8] if device == "cpu" else [8, 64]):
                spec = {"kind": "convert", "generator": name, "channels": channels, "res_units": res_units,
                        "device": device, "amp": amp, "batch_size": batch_size}
                results.append(run(spec))
                print(json.dumps(results[-1]))
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = ["| generator | what | device | result | peak RSS (MB) | peak GPU (MB) |", "|---|---|---|---|---|---|"]
    for r in results:
        what = f"train {r['size']}x{r['size']}, batch 1" if r["kind"] == "train" else \
            f"convert 256x256x150 file to file, batch {r['batch_size']}"
        result = (f"{r['s_per_iteration']} s/it ({r['iterations_per_s']} it/s)" if r["kind"] == "train"
                  else f"{r['wall_s']} s ({r['slices_per_s']} slices/s)")
        device = r["device"] + (" AMP" if r["amp"] and r["device"] != "cpu" else "")
        lines.append(f"| {r['generator']} | {what} | {device} | {result} | {r['peak_rss_mb']} | "
                     f"{r.get('peak_gpu_mb', '')} |")
    text = (f"## Speed (scripts/bench_speed.py, {time.strftime('%Y-%m-%d')})\n\nMachine: {machine}. A training "
            "iteration updates both generators and both discriminators (k = 3).\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.markdown:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmarks_doc import replace_section

        replace_section("bench_speed", text, Path(args.markdown))


if __name__ == "__main__":
    main()
