"""How a model answers white-matter lesions that the T1w only hints at: lesions painted into a held-out MS pair.

    python scripts/bench_lesion_response.py --model runs/A [runs/B ...] [--volume mslub_p07] [--count 40]
                                            [--t1-factor 0.75] [--t2-factor 1.8] [--seed 0]

``--count`` soft ellipsoids (radii 2.5-5 mm, :func:`mri_translate.lesion_synthesis.soft_ellipsoid`) are centred
in the white matter of one MSLUB pair (../shared/data/volumes/<volume>: skull-stripped, co-registered; 4 mm clear
of its expert lesions and of other tissue) and painted into both contrasts
(:func:`~mri_translate.lesion_synthesis.paint`: the T1w times ``--t1-factor``, the T2w times ``--t2-factor`` at
their middles). Each model translates the T1w with and without them (T1w -> T2w, the model's own inference
settings); ``evaluate`` measures the painted region's contrast (its mean over the median of the brain around it) in
the translation and in the truth, and the same for the no-learning baseline (the inverted input matched to the
other MSLUB patient's T2w histogram). Printed per model: the contrast before and after painting, the truth's, the
ratio (1 = faithful), the response (the translation's change of contrast over the truth's: 1 = the model adds all
that the lesions add, 0 = it ignores them), and the ratio on the pair's real expert-masked lesions. Skips (exit 0)
without ../shared/data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "volumes"
MSLUB = ("mslub_p07", "mslub_p19")
RADIUS_MM = (2.5, 5.0)
#: painted lesions are centred this far (mm) inside the white matter and from the pair's own lesions
CLEARANCE_MM = 4.0


def paint_pair(folder: Path, out: Path, count: int, t1_factor: float, t2_factor: float, seed: int) -> dict:
    """Write ``folder``'s T1w and T2w with ``count`` lesions painted, their mask (weight > 0.5) and the brain
    (both scans' foreground, :func:`~mri_translate.metrics.auto_mask`) into ``out``; returns the paths."""
    from mri_translate.lesion_synthesis import paint, soft_ellipsoid, white_matter
    from mri_translate.metrics import auto_mask

    t1_image, t2_image = nib.load(folder / "t1.nii.gz"), nib.load(folder / "t2.nii.gz")
    t1, t2 = (torch.from_numpy(np.asarray(i.get_fdata(), np.float32)) for i in (t1_image, t2_image))
    spacing = np.asarray(t1_image.header.get_zooms()[:3], float)
    brain = torch.from_numpy(auto_mask(t1.numpy()) & auto_mask(t2.numpy()))
    real = nib.load(folder / "lesions.nii.gz").get_fdata() > 0
    steps = max(1, round(CLEARANCE_MM / float(spacing.min())))  # voxels to stay clear of lesions and other tissue
    wm = white_matter(t1, t2, brain).numpy() & ~ndimage.binary_dilation(real, iterations=steps)
    wm = ndimage.binary_erosion(wm, iterations=steps)
    rng = torch.Generator().manual_seed(seed)
    candidates = np.argwhere(wm)[torch.randperm(int(wm.sum()), generator=rng)[:count].numpy()]
    weight = torch.zeros(t1.shape)
    for centre in candidates:
        radii = RADIUS_MM[0] + (RADIUS_MM[1] - RADIUS_MM[0]) * torch.rand(3, generator=rng).numpy()
        half = np.ceil(1.5 * radii / spacing).astype(int)  # the ellipsoid's box: beyond 1.5 radii its weight is < 0.01
        low, high = np.maximum(centre - half, 0), np.minimum(centre + half + 1, t1.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        ellipsoid = soft_ellipsoid(tuple(high - low), centre - low, radii / spacing)
        weight[box] = torch.maximum(weight[box], ellipsoid)
    weight = weight * brain
    painted = paint(t1, t2, weight, t1_factor, t2_factor, float(t2[torch.from_numpy(wm)].median()))
    paths = {name: out / f"{name}.nii.gz" for name in ("t1", "t2", "mask", "brain")}
    for name, array, image in (("t1", painted[0], t1_image), ("t2", painted[1], t2_image),
                               ("mask", (weight > 0.5).to(torch.uint8), t1_image), ("brain", brain.to(torch.uint8),
                                                                                     t1_image)):
        nib.save(nib.Nifti1Image(array.numpy(), image.affine), paths[name])
    return paths


def contrasts(pred: Path, truth: Path, source: Path, brain: Path, region: Path, example: Path) -> dict:
    """``{"model": (contrast, reference contrast), "baseline": (...)}`` of ``region`` (see evaluate)."""
    from mri_translate.evaluate import evaluate

    report = evaluate(pred, truth, mask=brain, source=source, baselines=True, target_example=example, region=region)
    found = {"model": report["region"]["model"],
             "baseline": report["region"]["baselines"]["inverted_histogram_matched"]}
    return {who: (r["contrast"], r["reference_contrast"]) for who, r in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="run directories or model files")
    parser.add_argument("--volume", choices=MSLUB, default=MSLUB[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--t1-factor", type=float, default=0.75)
    parser.add_argument("--t2-factor", type=float, default=1.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder, other = SHARED / args.volume, SHARED / next(name for name in MSLUB if name != args.volume)
    if not (folder.is_dir() and other.is_dir()):
        print(f"skipped: {folder} or {other} not found (../shared/data is not here)")
        return
    from mri_translate.convert import convert_file
    from mri_translate.inference import Translator

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        painted = paint_pair(folder, work, args.count, args.t1_factor, args.t2_factor, args.seed)
        print(f"{args.volume}: {args.count} lesions painted ({int(nib.load(painted['mask']).get_fdata().sum())} "
              f"voxels, T1w x {args.t1_factor}, T2w x {args.t2_factor}, seed {args.seed})\n")
        print("| model | painted: contrast before / after (truth before / after) | ratio | response "
              "| real lesions: ratio |\n|---|---|---:|---:|---:|")
        example, baseline = other / "t2.nii.gz", ""
        for index, model in enumerate(args.model):
            translator = Translator.from_run(Path(model), "t1-to-t2", device="auto")
            found = {}
            for name, source, truth in (("before", folder / "t1.nii.gz", folder / "t2.nii.gz"),
                                        ("after", painted["t1"], painted["t2"])):
                pred = work / f"{index}-{name}.nii.gz"
                convert_file(translator, source, pred, overwrite=True)
                found[name] = contrasts(pred, truth, source, painted["brain"], painted["mask"], example)
            real = contrasts(work / f"{index}-before.nii.gz", folder / "t2.nii.gz", folder / "t1.nii.gz",
                             painted["brain"], folder / "lesions.nii.gz", example)
            for who in ("model", "baseline"):
                (before, truth_before), (after, truth_after) = found["before"][who], found["after"][who]
                response = (after - before) / (truth_after - truth_before)
                name = Path(model).name if who == "model" else "no-learning baseline"
                line = (f"| {name} | {before:.2f} / {after:.2f} ({truth_before:.2f} / {truth_after:.2f}) | "
                        f"{after / truth_after:.2f} | {response:.2f} | {real[who][0] / real[who][1]:.2f} |")
                if who == "model":
                    print(line)
                else:  # the same for every model: printed once, last
                    baseline = line
        print(baseline)


if __name__ == "__main__":
    main()
