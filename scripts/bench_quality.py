"""Translation quality on paired volumes NOT used for training, for 2D (k=1) and 2.5D (k=3, k=5) models
trained with the same iteration budget, beside the no-learning baselines.

    python scripts/bench_quality.py [--iterations 2000] [--ks 1 3 5] [--model RUN ...] [--markdown docs/benchmarks.md]

Training data: the unpaired sources of scripts/train_default_model.py (synthetic subjects; T1w and T2w
from different subjects) plus the native TCGA-FG-6692 scans when ../shared/data is present. Held out:
synthetic subjects with seeds 1000 and 1001 (1 mm), and, when present, ../shared/data/volumes/avg152 and
tcga_du_7294 (real, co-registered T1w/T2w). Metrics inside the brain/foreground mask of the reference
(each image scaled by its own 99.5th percentile in the mask), whole-slice SSIM, inter-slice consistency;
baselines: identity and the inverted input histogram-matched to ANOTHER subject's target contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = ROOT.parent / "shared" / "data" / "volumes"


def held_out_pairs(work: Path) -> list[dict]:
    """Paired test volumes: name, T1w, T2w, and a target-contrast example from another subject per direction."""
    from mri_translate.synthetic import write_dataset

    data = write_dataset(work / "held-out", n_subjects=2, resolution=1.0, seed=1000)
    pairs = [{"name": f"synthetic seed {1000 + i} (1 mm)", "t1": data["t1"][i], "t2": data["t2"][i],
              "example_t1": data["t1"][1 - i], "example_t2": data["t2"][1 - i]} for i in range(2)]
    avg, tcga = SHARED / "avg152", SHARED / "tcga_du_7294"
    if avg.is_dir() and tcga.is_dir():
        pairs.append({"name": "avg152 (2 mm, LAS, skull on)", "t1": avg / "avg152T1.nii", "t2": avg / "avg152T2.nii",
                      "example_t1": tcga / "t1.nii.gz", "example_t2": tcga / "t2.nii.gz"})
        pairs.append({"name": "tcga_du_7294 (1 mm, LPS, skull-stripped)", "t1": tcga / "t1.nii.gz",
                      "t2": tcga / "t2.nii.gz", "example_t1": avg / "avg152T1.nii", "example_t2": avg / "avg152T2.nii"})
    return pairs


def evaluate_model(run: Path, pairs: list[dict], work: Path) -> list[dict]:
    """Translate every held-out pair both ways and score it (and the baselines) against the truth."""
    from mri_translate.convert import convert_file
    from mri_translate.evaluate import evaluate
    from mri_translate.inference import Translator

    rows = []
    for direction, source, target in (("t1-to-t2", "t1", "t2"), ("t2-to-t1", "t2", "t1")):
        translator = Translator.from_run(run, direction, device="auto")
        for pair in pairs:
            output = work / f"{run.name}-{direction}-{Path(pair[source]).name.split('.')[0]}-{len(rows)}.nii.gz"
            start = time.perf_counter()
            convert_file(translator, pair[source], output, overwrite=True)
            seconds = time.perf_counter() - start
            report = evaluate(output, pair[target], source=pair[source], baselines=True,
                              target_example=pair[f"example_{target}"])
            rows.append({"model": run.name, "direction": direction, "volume": pair["name"], "convert_s": seconds,
                         "model_scores": report["model"], "consistency": report["interslice_consistency"],
                         "identity": report["baselines"]["identity"],
                         "baseline": report["baselines"]["inverted_histogram_matched"]})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    lines = ["| model | direction | held-out volume | PSNR mask (dB) | SSIM mask | MAE mask | SSIM whole | "
             "inter-slice | baseline PSNR / SSIM mask | identity PSNR / SSIM mask |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, b, i = r["model_scores"]["mask"], r["baseline"]["mask"], r["identity"]["mask"]
        lines.append(f"| {r['model']} | {r['direction']} | {r['volume']} | {m['psnr']:.2f} | {m['ssim_3d']:.3f} | "
                     f"{m['mae']:.3f} | {r['model_scores']['whole']['ssim_3d']:.3f} | {r['consistency']:.2f} | "
                     f"{b['psnr']:.2f} / {b['ssim_3d']:.3f} | {i['psnr']:.2f} / {i['ssim_3d']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="training budget per model")
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 3, 5], help="slab sizes to train")
    parser.add_argument("--model", nargs="*", default=[], help="also evaluate these existing run directories")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-quality"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()

    import torch

    from mri_translate.train import train
    from benchmarks_doc import replace_section
    from train_default_model import unpaired_sources

    work = Path(args.work)
    t1, t2 = unpaired_sources(work / "train-data", subjects=6, tcga=(SHARED / "tcga_fg_6692_native").is_dir())
    runs, train_seconds = [Path(m) for m in args.model], {}
    for k in args.ks:
        start = time.perf_counter()
        run = train(t1, t2, work / f"k{k}", config=ROOT / "configs" / "default-model.yaml",
                    overrides={"model": {"k": k}, "train": {"iterations": args.iterations}}, overwrite=True,
                    progress_bar=False).run_dir
        train_seconds[run.name] = time.perf_counter() - start
        runs.append(run)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = held_out_pairs(Path(tmp))
        rows = [row for run in runs for row in evaluate_model(run, pairs, Path(tmp))]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    budget = ", ".join(f"{name}: {seconds / 60:.1f} min" for name, seconds in train_seconds.items())
    text = (f"## Quality (scripts/bench_quality.py, {time.strftime('%Y-%m-%d')})\n\n"
            f"Machine: {machine}. Training: {args.iterations} iterations per model ({budget or 'existing runs'}),"
            f" configs/default-model.yaml (loss defaults: contrast prior on, identity off), unpaired synthetic "
            f"subjects + native TCGA-FG-6692. Held-out volumes "
            f"were never trained on. Baseline = inverted input histogram-matched to another subject's target "
            f"contrast; identity = the input itself.\n\n" + table(rows) + "\n")
    print(text)
    Path(args.work, "quality.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    replace_section("bench_quality", text, Path(args.markdown))


if __name__ == "__main__":
    main()
