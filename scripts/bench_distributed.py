"""Data-parallel scaling: training samples/s with 1 and N processes launched by torchrun.

    python scripts/bench_distributed.py [--nproc 2] [--iterations 40] [--device cpu|cuda]

On CPU (gloo) this checks correctness and overhead only: N processes share the same cores. On a machine
with N GPUs it reports the scaling efficiency (N-process samples/s) / (N x 1-process samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESET = """
model: {{k: 3, channels: [16, 32, 64, 128], res_units: 2}}
data: {{crop: 128, batch_size: {batch}}}
train: {{iterations: {iterations}, epoch_length: {iterations}, checkpoint_every: 100000, progress_every: 100000,
         device: {device}}}
"""


def run(nproc: int, work: Path, args) -> float:
    """Samples/s of one training run with ``nproc`` processes (time of the whole run minus start-up)."""
    from mri_translate.synthetic import write_dataset

    data = write_dataset(work / "data", n_subjects=2, resolution=2.0)
    preset = work / "bench.yaml"
    preset.write_text(PRESET.format(batch=args.batch_size, iterations=args.iterations, device=args.device))
    timings = {}
    for iterations in (2, args.iterations):  # the 2-iteration run measures start-up (imports, data, rendezvous)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   "-m", "mri_translate.cli", "train", "--t1", str(data["t1"][0]), "--t2", str(data["t2"][1]),
                   "--out", str(work / f"run{nproc}"), "--config", str(preset), "--iterations", str(iterations),
                   "--overwrite", "--no-progress"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        timings[iterations] = time.perf_counter() - start
    seconds = timings[args.iterations] - timings[2]
    return (args.iterations - 2) * args.batch_size * nproc / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, Path(tmp), args)
        many = run(args.nproc, Path(tmp), args)
    result = {"device": args.device, "samples_per_s_1": round(one, 2), f"samples_per_s_{args.nproc}": round(many, 2),
              "scaling_efficiency": round(many / (args.nproc * one), 3)}
    print(json.dumps(result))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmarks_doc import replace_section

    replace_section("bench_distributed", (
        f"## Data-parallel training (scripts/bench_distributed.py, {time.strftime('%Y-%m-%d')})\n\n"
        f"{args.device}, {os.cpu_count()} cores, torchrun --standalone, generator 16-32-64-128, crop 128, batch "
        f"{args.batch_size} per process, {args.iterations} iterations (start-up subtracted).\n\n"
        f"| processes | samples/s | scaling efficiency |\n|---|---|---|\n| 1 | {one:.2f} | 1 |\n"
        f"| {args.nproc} | {many:.2f} | {result['scaling_efficiency']} |\n\n"
        "On CPU the processes share the same cores, so this checks correctness and overhead, not speed-up."))


if __name__ == "__main__":
    main()
