"""A user's own run on the case study's folders, scored against the truth: ``../shared/data/seed_2d/TrainT1`` and
``TrainT2`` (43 T1 and 46 T2 axial slices of one simulated, BrainWeb-style head, unpaired folders).

    python scripts/bench_case_study.py --model runs/case-default [--settings '{"guided_radius_mm": 6}' ...]
                                       [--directions t1-to-t2 t2-to-t1]

The run is what ``mri-translate train --t1 TrainT1 --t2 TrainT2 --out RUN`` makes with its defaults. Every T1
slice has a T2 slice of the same position in the other folder: :func:`slice_pairs` finds it by normalised mutual
information (the true partner stands out: about 1.47-1.50 against 1.32-1.35 for the next best), so the folders,
unpaired for training, are paired for scoring. Each T1 slice (T2 slice for ``t2-to-t1``) is translated with
``convert`` (the run's own settings, or each ``--settings`` JSON in turn) and the stack is scored by ``evaluate``
inside the head of the real partner (each image scaled by its own 99.5th percentile; SSIM per slice, in 2D), beside
the no-learning baseline (the input inverted and histogram-matched to the real partners: optimistic, it borrows the
answer's histogram).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED_2D = ROOT.parent / "shared" / "data" / "seed_2d"


def _nmi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Normalised mutual information (H(a) + H(b)) / H(a, b) of two uint8 images of one shape."""
    joint = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 256], [0, 256]])[0]
    p = joint / joint.sum()

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p)


def slice_pairs(t1_folder: Path, t2_folder: Path) -> list[tuple[Path, Path, float, float]]:
    """Each T1 image with the T2 image of highest normalised mutual information: ``(t1, t2, best, second best)``."""
    from PIL import Image

    t1, t2 = sorted(t1_folder.glob("*.png")), sorted(t2_folder.glob("*.png"))
    images = {path: np.asarray(Image.open(path).convert("L")) for path in t1 + t2}
    pairs = []
    for a in t1:
        scores = sorted(((_nmi(images[a], images[b]), b) for b in t2), reverse=True)
        pairs.append((a, scores[0][1], scores[0][0], scores[1][0]))
    return pairs


def score(model: Path, pairs, work: Path, settings: dict, direction: str = "t1-to-t2") -> dict:
    """Translate the input of every pair (the T1 for ``t1-to-t2``, else the T2) with ``model`` (``settings``:
    Translator options) and score the stack against the partners."""
    from mri_translate.convert import convert
    from mri_translate.evaluate import evaluate

    source, target, out = (work / name for name in ("source", "target", "out"))
    for folder in (source, target):
        folder.mkdir(parents=True, exist_ok=True)
    for index, (t1, t2, _, _) in enumerate(pairs):  # one name per pair in all three folders
        for folder, path in zip((source, target), (t1, t2) if direction == "t1-to-t2" else (t2, t1)):
            os.symlink(path.resolve(), folder / f"slice{index:03d}.png")
    convert(source, out, model, direction, progress=False, overwrite=True, **settings)
    report = evaluate(out, target, source=source, baselines=True)
    return {"model": report["model"]["mask"], "baseline": report["baselines"]["inverted_histogram_matched"]["mask"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the run trained on the case study's folders")
    parser.add_argument("--settings", nargs="*", type=json.loads, default=[{}],
                        help="Translator options per scoring, e.g. '{\"guided_radius_mm\": 6}' ({}: the run's own)")
    parser.add_argument("--directions", nargs="*", default=["t1-to-t2"], choices=["t1-to-t2", "t2-to-t1"])
    args = parser.parse_args()
    if not SEED_2D.is_dir():
        raise SystemExit(f"{SEED_2D} is absent: nothing to score")
    pairs = slice_pairs(SEED_2D / "TrainT1", SEED_2D / "TrainT2")
    margin = min(best - second for _, _, best, second in pairs)
    print(f"{len(pairs)} slice pairs by mutual information (smallest margin over the next best: {margin:.3f})")
    print("| direction | settings | PSNR (dB) / SSIM in the head | baseline |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for direction in args.directions:
            for number, settings in enumerate(args.settings):
                result = score(Path(args.model), pairs, Path(tmp) / f"{direction}-{number}", settings, direction)
                m, b = result["model"], result["baseline"]
                label = json.dumps(settings) if settings else "the run's own"
                print(f"| {direction} | {label} | {m['psnr']:.2f} / "
                      f"{m['ssim_2d']:.3f} | {b['psnr']:.2f} / {b['ssim_2d']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
