"""How well convert's two input checks work: the contrast check (refuse a scan whose contrast does not match
--direction) and the out-of-domain flag (convert --qc / --strict), on every real volume in ../shared/data,
held-out synthetic subjects, made-up FLAIR-like, PD-like, CT-like and non-brain volumes, and 2D slices.

    python scripts/bench_checks.py [--model bundles/mri_cyclegan/models/model.pt] [--subjects 4]
        [--rows docs/bench_checks.json] [--reuse] [--markdown docs/benchmarks.md]

Prints the tables and rewrites the "bench_checks" section of docs/benchmarks.md. The translations of the
out-of-domain part are saved in --rows (scripts/calibrate_checks.py --from-rows calibrates on them); --reuse
renders from that file without translating again (e.g. after calibrating).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from calibrate_checks import (DIRECTION_OF, SHARED, calibration_rows, measure, real_volumes,  # noqa: E402
                              synthetic_volumes, thresholds)

SOURCE = {"t1-to-t2": "T1w", "t2-to-t1": "T2w"}


def _signal(maps: dict, tr: float, te: float, ti: float | None = None) -> np.ndarray:
    """Spin-echo (or, with ``ti``, inversion-recovery) signal of the synthetic tissues, 2 % Rician-like noise."""
    from mri_translate.synthetic import TISSUES

    clean = 0.0
    for name in ("gm", "wm", "csf"):
        t1, t2, pd = TISSUES[name]
        recovery = abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)) if ti else 1 - np.exp(-tr / t1)
        clean = clean + pd * recovery * np.exp(-te / t2) * maps[name]
    noise = 0.02 * clean.max() * np.random.default_rng(0).standard_normal((2,) + clean.shape)
    return np.hypot(clean + noise[0], noise[1]).astype(np.float32)


def made_up_volumes(folder: Path) -> list[dict]:
    """Inputs that are neither T1w nor T2w (label ``other``), written as NIfTI under ``folder``: FLAIR-like
    (inversion recovery nulling CSF: TR 9000, TI 1780, TE 120 ms) and PD-like (TR 4000, TE 15 ms) from the
    synthetic tissue maps, a CT-like head (brain 5-40 HU, a bone shell at 1000 HU, air -1000), a brain mask,
    uniform noise, a body-like phantom (an elliptic trunk with organs of random brightness) and, when
    ../shared/data is present, a PD-like mix of the co-registered real T1w and T2w of tcga_du_7294."""
    import nibabel as nib
    from scipy import ndimage

    from mri_translate import synthetic
    from mri_translate.io import load_volume

    maps, affine = synthetic.tissue_maps(2.0, 1000), synthetic._prior(2.0)[1]
    brain = maps["mask"]
    ct = np.full(brain.shape, -1000.0, np.float32)
    ct[brain] = (40 * maps["gm"] + 30 * maps["wm"] + 5 * maps["csf"])[brain]
    ct[ndimage.binary_dilation(brain, iterations=4) & ~brain] = 1000.0
    rng = np.random.default_rng(0)
    grid = np.indices((120, 90, 60), dtype=np.float32)
    body = (((grid[0] - 60) / 55) ** 2 + ((grid[1] - 45) / 35) ** 2 <= 1).astype(np.float32) * 0.4
    for _ in range(6):
        centre, radius = rng.uniform((30, 20, 10), (90, 70, 50)), rng.uniform(6, 15)
        body[((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2] = rng.uniform(0.1, 1.0)
    volumes = {"FLAIR-like (synthetic)": (_signal(maps, 9000, 120, 1780), affine),
               "PD-like (synthetic)": (_signal(maps, 4000, 15), affine),
               "CT-like head": (ct + rng.normal(0, 5, ct.shape).astype(np.float32), affine),
               "brain mask": (brain.astype(np.float32), affine),
               "uniform noise": (rng.random((100, 100, 80), dtype=np.float32), np.eye(4)),
               "body-like phantom": (ndimage.gaussian_filter(body, 1.0) + 0.01 * rng.random(body.shape), np.eye(4))}
    tcga = SHARED / "volumes" / "tcga_du_7294"
    if tcga.is_dir():
        t1, t2 = (load_volume(tcga / name)[0].numpy() for name in ("t1.nii.gz", "t2.nii.gz"))
        mix = t1 / np.percentile(t1, 99) + t2 / np.percentile(t2, 99)
        volumes["PD-like (tcga_du_7294 T1w + T2w)"] = (mix.astype(np.float32), load_volume(tcga / "t1.nii.gz").affine)
    items = []
    for i, (name, (data, grid_affine)) in enumerate(volumes.items()):
        path = folder / f"other{i}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.asarray(grid_affine, dtype=np.float64)), str(path))
        items.append({"name": name, "path": path, "label": "other"})
    return items


def slices_2d() -> list[dict]:
    """The 2D PNG slices of ../shared/data/seed_2d (label from the folder)."""
    folder = SHARED / "seed_2d"
    return [{"name": f"seed_2d/{sub}/{path.name}", "path": path, "label": label}
            for sub, label in (("TrainT1", "T1w"), ("TrainT2", "T2w")) for path in sorted((folder / sub).glob("*.png"))]


def contrast_rows(items: list[dict]) -> list[dict]:
    """The contrast check of every item, timed (load excluded)."""
    from mri_translate.contrast_check import classify_contrast
    from mri_translate.io import load_volume

    rows = []
    for item in items:
        volume = load_volume(item["path"])
        start = time.perf_counter()
        verdict = classify_contrast(volume)
        rows.append({"name": item["name"], "label": item["label"], "verdict": verdict.label,
                     "seconds": time.perf_counter() - start, "shape": tuple(volume.shape[1:]), **verdict.scores})
    return rows


def refused(verdict: str, direction: str) -> bool:
    """What convert does with a verdict: refuse unless it is the direction's source contrast or ``unknown``."""
    return verdict not in (SOURCE[direction], "unknown")


def contrast_report(rows: list[dict]) -> list[str]:
    """Markdown: summary counts per kind of input and direction, margins, the per-volume table."""
    from mri_translate import contrast_check as cc

    lines = ["| input | direction | inputs | refused |", "|---|---|---|---|"]
    kinds = (("real 3D", lambda r: not r["name"].startswith(("synthetic", "seed_2d")) and r["label"] != "other"),
             ("synthetic 3D", lambda r: r["name"].startswith("synthetic")),
             ("2D PNG slices", lambda r: r["name"].startswith("seed_2d")))
    for kind, select in kinds:
        for label in ("T1w", "T2w"):
            group = [r for r in rows if select(r) and r["label"] == label]
            for direction in DIRECTION_OF.values():
                right = SOURCE[direction] == label
                n = sum(refused(r["verdict"], direction) for r in group)
                lines.append(f"| {kind} {label} | {direction} ({'right' if right else 'WRONG'} contrast) | "
                             f"{len(group)} | {n} |")
    others = [r for r in rows if r["label"] == "other"]
    lines.append(f"| made-up non-T1w/T2w | either | {len(others)} | "
                 f"{sum(refused(r['verdict'], 't1-to-t2') and refused(r['verdict'], 't2-to-t1') for r in others)} |")
    volumes = [r for r in rows if not r["name"].startswith("seed_2d")]
    slowest = max(volumes, key=lambda r: r["seconds"])
    t1 = [r for r in rows if r["verdict"] == "T1w"]
    t2 = [r for r in rows if r["verdict"] == "T2w"]
    lines += ["", f"Margins: highest `tail` of a T1w verdict {max(r['tail'] for r in t1):.2f} (threshold "
              f"< {cc.T1W_MAX_TAIL}), lowest of a T2w {min(r['tail'] for r in t2):.2f} (> {cc.T2W_MIN_TAIL}); "
              f"lowest `contrast` of a T2w {min(r['contrast'] for r in t2):.2f} (PD-like below "
              f"{cc.T2W_MIN_CONTRAST}); highest `rim` of a T1w {max(r['rim'] for r in t1):.2f} (FLAIR-like above "
              f"{cc.T1W_MAX_RIM}); lowest `contrast` of a T1w/T2w {min(r['contrast'] for r in t1 + t2):.2f} "
              f"(PD/CT-like below {cc.MIN_CONTRAST}).",
              f"Time of the check (load excluded): 3D volumes median "
              f"{np.median([r['seconds'] for r in volumes]):.2f} s, "
              f"largest {slowest['seconds']:.2f} s ({' x '.join(map(str, slowest['shape']))}); 2D slices median "
              f"{np.median([r['seconds'] for r in rows if r not in volumes]):.3f} s.", "",
              "| volume | voxels | file says | verdict | tail | contrast | rim | s |", "|---" * 8 + "|"]
    for r in volumes:
        lines.append(f"| {r['name']} | {' x '.join(map(str, r['shape']))} | {r['label']} | {r['verdict']} | "
                     f"{r['tail']:.2f} | {r['contrast']:.2f} | {r['rim']:.2f} | {r['seconds']:.2f} |")
    return lines


def _flagged(row: dict, limits: dict) -> bool:
    return any(row[key] is not None and row[key] > limit for key, limit in limits.items())


def domain_report(rows: list[dict], checks: dict, source: str, exclude, margin: float) -> list[str]:
    """Markdown: how often the out-of-domain flag fires, per kind of input and direction, with the model's
    thresholds; and the leave-one-out false-alarm rate of the calibration."""
    shown = "; ".join(f"{d}: " + ", ".join(f"{k} {v:g}" for k, v in checks[d].items()) for d in DIRECTION_OF.values())
    lines = [f"Thresholds ({source}): {shown}", "",
             "| input | direction | translations | flagged out of domain |", "|---|---|---|---|"]
    calibration = calibration_rows(rows, exclude)
    groups = (("held-out right contrast", lambda r: r in calibration),
              ("right contrast, training scan or contrast check disagrees",
               lambda r: r["right"] and r not in calibration),
              ("WRONG contrast (forced)", lambda r: r["label"] in DIRECTION_OF and not r["right"]),
              ("made-up non-T1w/T2w (forced)", lambda r: r["label"] == "other"))
    for kind, select in groups:
        for direction in DIRECTION_OF.values():
            group = [r for r in rows if select(r) and r["direction"] == direction]
            if group:
                flagged = [r["name"] for r in group if _flagged(r, checks[direction])]
                named = f" ({', '.join(flagged)})" if flagged and "right" in kind else ""
                lines.append(f"| {kind} | {direction} | {len(group)} | {len(flagged)}{named} |")
    alarms = sum(_flagged(r, thresholds([o for o in calibration if o is not r], margin)[r["direction"]])
                 for r in calibration)
    lines += ["", f"Leave-one-out false alarms (thresholds = {margin:g} x max of the other held-out right-contrast "
                  f"volumes): {alarms} of {len(calibration)}.", "",
              "| volume | file says | direction | CycleErrorMAE | HistogramDistance | InterSliceConsistency | s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        values = " | ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in checks["t1-to-t2"])
        lines.append(f"| {r['name']} | {r['label']} | {r['direction']}{'' if r['right'] else ' (forced)'} | "
                     f"{values} | {r['seconds']:.1f} |")
    return lines


def main() -> None:
    import torch

    from mri_translate.contrast_check import model_checks
    from mri_translate.model_file import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run directory or model.pt (default: the shipped model)")
    parser.add_argument("--subjects", type=int, default=4, help="held-out synthetic subjects")
    parser.add_argument("--exclude", nargs="*", default=["tcga_fg_6692_native"], help="the model's training scans")
    parser.add_argument("--margin", type=float, default=1.25, help="as in scripts/calibrate_checks.py")
    parser.add_argument("--rows", type=Path, default=ROOT / "docs" / "bench_checks.json")
    parser.add_argument("--reuse", action="store_true", help="take the translations' checks from --rows")
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="'' to skip")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        volumes = synthetic_volumes(work, args.subjects) + real_volumes() + made_up_volumes(work)
        contrast = contrast_rows(volumes + slices_2d())
        if args.reuse:
            rows = json.loads(args.rows.read_text())
        else:
            rows = measure(args.model, volumes, both=True)
            args.rows.write_text(json.dumps(rows, indent=1) + "\n")
    model = resolve_model_path(args.model)
    checks = {d: model_checks(model, d)[0] for d in DIRECTION_OF.values()}
    text = "\n".join(
        ["## Input checks: contrast and out of domain (scripts/bench_checks.py)", "",
         f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}; "
         f"model {model.relative_to(ROOT) if model.is_relative_to(ROOT) else model}.", "",
         "### Contrast check (convert, on by default; --force skips it)", ""] + contrast_report(contrast)
        + ["", "### Out-of-domain flag (convert --qc / --strict)", ""]
        + domain_report(rows, checks, model_checks(model, "t1-to-t2")[1], args.exclude, args.margin))
    print(text)
    from benchmarks_doc import replace_section

    if args.markdown:
        replace_section("bench_checks", text, Path(args.markdown))


if __name__ == "__main__":
    main()
