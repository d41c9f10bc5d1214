"""Calibrate the out-of-domain thresholds of a model and store them in its model.pt under "checks".

    python scripts/calibrate_checks.py --model bundles/mri_cyclegan/models/model.pt \
        [--exclude tcga_fg_6692_native ...] [--subjects 4] [--margin 1.25] [--from-rows docs/bench_checks.json]
        [--rows rows.json] [--dry-run]

Calibration set: volumes the model was NOT trained on, in the contrast their direction expects:
synthetic subjects with seeds 1000.. (1, 1.5 and 2 mm; the shipped model trains on seeds < 100) and every
real T1w/T2w volume in ../shared/data (the DICOM series too) whose path matches none of ``--exclude`` (pass
the model's own training scans there; the default excludes TCGA-FG-6692, which the shipped model trains on)
and whose contrast check agrees with its file name. Each of them is translated in its direction and cycled
back (convert --qc); for each direction and check the threshold is ``margin`` x the largest value seen.
``--from-rows`` reuses the measurements that scripts/bench_checks.py saved instead of translating again.
The thresholds go into the model file atomically as plain floats (``weights_only=True`` loads them);
``mri_translate.contrast_check.DEFAULT_CHECKS`` applies to models without them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DIRECTION_OF = {"T1w": "t1-to-t2", "T2w": "t2-to-t1"}
CHECKS = ("CycleErrorMAE", "HistogramDistance", "InterSliceConsistency")


def real_volumes(exclude=()) -> list[dict]:
    """Every real T1w/T2w in ../shared/data: ``{"name", "path", "label"}`` (none when the folder is absent)."""
    volumes = SHARED / "volumes"
    found = [(volumes / "avg152" / "avg152T1.nii", "T1w"), (volumes / "avg152" / "avg152T2.nii", "T2w")]
    for case in ("tcga_du_7294", "brats23_gli_00000"):
        found += [(volumes / case / "t1.nii.gz", "T1w"), (volumes / case / "t2.nii.gz", "T2w")]
    found += [(volumes / "tcga_fg_6692_native" / "t1_ax_se.nii.gz", "T1w"),
              (volumes / "tcga_fg_6692_native" / "t2_ax_tse.nii.gz", "T2w")]
    found += [(path, re.search(r"_(T[12]w)\.nii", path.name).group(1))
              for path in sorted((volumes / "train_real").glob("*_T[12]w.nii*"))]
    found.append((SHARED / "dicom" / "mr_t1_mprage_series", "T1w"))
    return [{"name": str(path.relative_to(SHARED)), "path": path, "label": label} for path, label in found
            if path.exists() and not any(pattern in str(path) for pattern in exclude)]


def synthetic_volumes(folder: Path, subjects: int = 4) -> list[dict]:
    """Held-out synthetic subjects (seeds 1000..), resolutions cycling through 1, 1.5 and 2 mm."""
    from mri_translate.synthetic import write_dataset

    items = []
    for i in range(subjects):
        resolution = (1.0, 1.5, 2.0)[i % 3]
        data = write_dataset(folder / f"synthetic-{i}", 1, resolution, seed=1000 + i)
        items += [{"name": f"synthetic seed {1000 + i} {label} ({resolution:g} mm)", "path": data[key][0],
                   "label": label} for key, label in (("t1", "T1w"), ("t2", "T2w"))]
    return items


def measure(model, items: list[dict], both: bool = False, device: str = "auto") -> list[dict]:
    """The contrast check and the reference-free checks of each item translated in its own direction (and in
    the other one too with ``both``; items that are neither T1w nor T2w always go both ways). No output.

    Returns:
        One row per (item, direction): ``name``, ``label``, ``contrast`` (the contrast check's label),
        ``direction``, ``right`` (the label is the direction's source contrast), ``seconds`` (translation
        and cycle) and the :data:`CHECKS`.
    """
    import time

    from mri_translate.contrast_check import classify_contrast
    from mri_translate.convert import quality_checks
    from mri_translate.inference import Translator, translate_checked
    from mri_translate.io import load_volume

    translators = {direction: Translator.from_run(model, direction, device) for direction in DIRECTION_OF.values()}
    rows = []
    for item in items:
        volume = load_volume(item["path"])
        contrast = classify_contrast(volume).label
        own = DIRECTION_OF.get(item["label"])
        for direction in [d for d in DIRECTION_OF.values() if d == own or both or own is None]:
            translator = translators[direction]
            cycle = translators["t2-to-t1" if direction == "t1-to-t2" else "t1-to-t2"]
            start = time.perf_counter()
            checked = translate_checked(translator, volume, item["path"], force=True)
            qc, _ = quality_checks(translator, cycle, checked, volume)
            rows.append({"name": item["name"], "label": item["label"], "contrast": contrast, "direction": direction,
                         "right": own == direction, "seconds": round(time.perf_counter() - start, 2),
                         **{key: qc[key] for key in CHECKS}})
            print(f"{direction} {item['name']}: " + ", ".join(f"{key} {qc[key]:.3f}" for key in CHECKS
                                                              if qc[key] is not None), file=sys.stderr, flush=True)
    return rows


def calibration_rows(rows: list[dict], exclude=()) -> list[dict]:
    """The rows to calibrate on: right direction, not a training scan (``exclude``: path fragments), and the
    contrast check agrees with the file's label (a file named T2w that looks like FLAIR is no T2w)."""
    return [row for row in rows if row["right"] and row["contrast"] == row["label"]
            and not any(pattern in row["name"] for pattern in exclude)]


def thresholds(rows: list[dict], margin: float = 1.25) -> dict:
    """``{direction: {check: margin x max over the right-contrast rows}}`` (checks without values skipped)."""
    result = {}
    for direction in DIRECTION_OF.values():
        right = [row for row in rows if row["direction"] == direction and row["right"]]
        result[direction] = {key: round(margin * max(row[key] for row in right), 4) for key in CHECKS
                             if right and all(row[key] is not None for row in right)}
    return result


def store(model_path: Path, checks: dict) -> None:
    """Write ``checks`` into ``model_path`` under ``contrast_check.CHECKS_KEY``, atomically."""
    import torch

    from mri_translate.contrast_check import CHECKS_KEY
    from mri_translate.io import atomic_path
    from mri_translate.runtime import read_checkpoint

    state = read_checkpoint(model_path)
    state[CHECKS_KEY] = checks
    with atomic_path(model_path) as tmp:
        torch.save(state, tmp)


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model.pt to calibrate (rewritten in place)")
    parser.add_argument("--exclude", nargs="*", default=["tcga_fg_6692_native"],
                        help="path fragments of the model's training scans (never calibrate on them)")
    parser.add_argument("--subjects", type=int, default=4, help="held-out synthetic subjects")
    parser.add_argument("--margin", type=float, default=1.25, help="threshold = margin x largest held-out value")
    parser.add_argument("--rows", type=Path, help="also write the calibration rows here (JSON)")
    parser.add_argument("--from-rows", type=Path, help="take the rows measured by scripts/bench_checks.py (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="print the thresholds, leave the model alone")
    args = parser.parse_args()

    if args.from_rows:
        rows = json.loads(args.from_rows.read_text())
    else:
        with tempfile.TemporaryDirectory() as work:
            rows = measure(args.model, synthetic_volumes(Path(work), args.subjects) + real_volumes(args.exclude))
    rows = calibration_rows(rows, args.exclude)
    checks = thresholds(rows, args.margin)
    synthetic = sum(row["name"].startswith("synthetic") for row in rows)
    checks["Calibration"] = (f"{args.margin:g} x the largest value on held-out right-contrast volumes ({synthetic} "
                             f"synthetic, {len(rows) - synthetic} real); scripts/calibrate_checks.py")
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(checks, indent=2))
    if not args.dry_run:
        store(args.model, checks)
        print(f"stored in {args.model}")


if __name__ == "__main__":
    main()
