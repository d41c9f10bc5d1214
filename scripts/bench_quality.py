"""Translation quality on paired volumes, both directions, beside the no-learning baselines: any trained run
(--model) and short ablations trained with one budget, each row marked by whether the model saw that volume.

    python scripts/bench_quality.py --model runs/default-model runs/loo-tcga_du_7294 [--ablations default unpaired
                                    no-prior k1] [--iterations 1000] [--average-with RUN]
                                    [--append [--csv docs/quality.csv]]

Prints the rows as a markdown table and keeps them in WORK/quality.csv; ``--append`` adds them to
docs/quality.csv, the record of every model variant scored (one row per model, direction and volume, with the
date it was scored), which docs/benchmarks.md summarises.

Volumes: synthetic subjects with seeds 1000 and 1001 (1 mm) and, when ../shared/data is present, the real
co-registered pairs tcga_du_7294 and brats23_gli_00000 (skull-stripped), avg152 (template, skull on), the MSLUB
multiple-sclerosis patients mslub_p07 and mslub_p19 (skull-stripped, CC BY; added 2026-12-02) and the
clinical pairs adi_brain, tcga_fg_6692 and brainix (whole head, 2D FSE/TSE T2w; registered and skull-stripped by
scripts/strip_pairs.py, fat left out since 2026-11-27: rows named "skull-stripped here" used the first mask, which
kept orbital fat; ``--volumes`` picks some by name). The shipped
recipe trains on tcga_du_7294 and brats23_gli_00000 as pairs; a run's ``configs/train.json`` says what it trained
on, so a row reads "unseen" only when neither scan of the volume was among its sources. Leave-one-out runs
(``scripts/train_default_model.py --hold-out NAME``) and the ablations (which hold out tcga_du_7294) give the
unseen figures on real skull-stripped pairs. Metrics inside the brain/foreground mask of the reference (each
image scaled by its own 99.5th percentile in the mask), whole-slice SSIM, inter-slice consistency; baselines:
identity and the inverted input histogram-matched to ANOTHER subject's target contrast. Ablations use the
training data and flags of scripts/train_default_model.py with one change each: ``unpaired`` (no pairs),
``no-prior`` (loss.prior 0), ``k1`` (2D), ``adversarial-1`` (the adversarial weight of the original CycleGAN),
``prior-residual`` (generators that start as the prior's map, model.prior_residual).
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


def held_out_pairs(work: Path, stripped: Path | None = None, only=None) -> list[dict]:
    """Paired test volumes: name, T1w, T2w, and a target-contrast example from another subject per direction;
    the clinical pairs (only those whose names start with one of ``only`` if given) are registered and
    skull-stripped into ``stripped`` (default ``work/stripped``) once and reused from there (registration is not
    exactly repeatable, so every model is scored on the same files)."""
    from mri_translate.io import load_volume, voxel_spacing
    from mri_translate.synthetic import write_dataset

    data = write_dataset(work / "held-out", n_subjects=2, resolution=1.0, seed=1000)
    pairs = [{"name": f"synthetic seed {1000 + i} (1 mm)", "t1": data["t1"][i], "t2": data["t2"][i],
              "example_t1": data["t1"][1 - i], "example_t2": data["t2"][1 - i]} for i in range(2)]
    avg, tcga, brats = SHARED / "avg152", SHARED / "tcga_du_7294", SHARED / "brats23_gli_00000"
    if avg.is_dir() and tcga.is_dir() and brats.is_dir():
        pairs.append({"name": "tcga_du_7294 (1 mm, LPS, skull-stripped)", "t1": tcga / "t1.nii.gz",
                      "t2": tcga / "t2.nii.gz", "example_t1": brats / "t1.nii.gz", "example_t2": brats / "t2.nii.gz"})
        pairs.append({"name": "brats23_gli_00000 (1 mm, skull-stripped)", "t1": brats / "t1.nii.gz",
                      "t2": brats / "t2.nii.gz", "example_t1": tcga / "t1.nii.gz", "example_t2": tcga / "t2.nii.gz"})
        pairs.append({"name": "avg152 (2 mm, LAS, skull on)", "t1": avg / "avg152T1.nii", "t2": avg / "avg152T2.nii",
                      "example_t1": tcga / "t1.nii.gz", "example_t2": tcga / "t2.nii.gz"})
        mslub = [SHARED / f"mslub_{p}" for p in ("p07", "p19")]
        if all(folder.is_dir() for folder in mslub):  # each patient's baseline takes the other's histogram
            for folder, other in zip(mslub, mslub[::-1]):
                pairs.append({"name": f"{folder.name} (MS lesions, 1 mm, LAS, skull-stripped)",
                              "t1": folder / "t1.nii.gz", "t2": folder / "t2.nii.gz",
                              "lesions": folder / "lesions.nii.gz",
                              "example_t1": other / "t1.nii.gz", "example_t2": other / "t2.nii.gz"})
        from strip_pairs import clinical_pairs

        # the baseline matches the histograms of a BraTS-style subject, as for tcga_du_7294
        for pair in clinical_pairs(stripped or work / "stripped", only):
            spacing = " x ".join(f"{s:.3g}" for s in voxel_spacing(load_volume(pair["t2"]).affine))
            pairs.append({**pair, "name": f"{pair['name']} (clinical, {spacing} mm, stripped here, fat out)",
                          "example_t1": brats / "t1.nii.gz", "example_t2": brats / "t2.nii.gz"})
    return pairs


def trained_on(run: Path) -> set[Path] | None:
    """The resolved source files a run trained on (from its ``configs/train.json``), ``None`` if not recorded."""
    recorded = run / "configs" / "train.json"
    sources = json.loads(recorded.read_text()).get("sources") if recorded.is_file() else None
    if not sources:
        return None
    return {Path(path).resolve() for domain in sources.values() for path in domain}


def seen(pair: dict, sources: set[Path] | None) -> str:
    """'unseen', 'trained on' or 'not recorded' for a pair and a run's sources (registered copies of a scan are
    named after it, so they count too, and so do the scans a pair was made ``from``)."""
    if sources is None:
        return "not recorded"
    stems = {Path(pair[c]).name.split(".")[0] for c in ("t1", "t2")}
    files = {Path(path).resolve() for path in [pair["t1"], pair["t2"], *pair.get("from", ())]}
    hit = any(path in files or path.name.split("_space-")[0] in stems for path in sources)
    return "trained on" if hit else "unseen"


#: inference variant name -> the Translator options it sets: steps turned off, or the refit on the inverted input
#: turned on for a model that ships without it (``refit``: 6 mm windows, as 0.5.0 shipped for T2w -> T1w;
#: ``refit-inverted``: and 30 % of the inverted input averaged in, as 0.5.0 shipped for T1w -> T2w)
VARIANTS = {"raw-output": {"standardize_output": False}, "single-plane": {"fuse_planes": False},
            "no-mirror": {"mirror": False}, "no-inverted": {"inverted_weight": 0.0},
            "no-guided": {"guided_radius_mm": 0.0}, "refit": {"guided_radius_mm": 6.0},
            "refit-inverted": {"guided_radius_mm": 6.0, "inverted_weight": 0.3},
            "network-alone": {"guided_radius_mm": 0.0, "inverted_weight": 0.0}}


DIRECTIONS = {"t1-to-t2": ("t1", "t2"), "t2-to-t1": ("t2", "t1")}


def evaluate_model(run: Path, pairs: list[dict], work: Path, variant: str | None = None,
                   directions=tuple(DIRECTIONS), average_with: Path | None = None) -> list[dict]:
    """Translate every held-out pair both ways and score it (and the baselines) against the truth; with a
    ``variant`` (an inference ablation of :data:`VARIANTS`) the rows are named ``<run> <variant>``, and a
    direction the variant does not change (e.g. no-inverted where the model's weight is 0) is skipped. With
    ``average_with`` (another run, at its own settings) the translation is the mean of the two
    (:func:`~mri_translate.bundle.average_models`, the variant applied to ``run``'s own), the rows are named
    ``<run>[ <variant>] + <other run>``, and a volume counts as seen when either trained on it."""
    from mri_translate.bundle import average_models
    from mri_translate.convert import convert_file
    from mri_translate.evaluate import evaluate
    from mri_translate.inference import Translator

    rows, name = [], run.name if variant is None else f"{run.name} {variant}"
    name += f" + {average_with.name}" if average_with else ""
    model = average_models(run, [average_with], work / f"{name.replace(' ', '-')}.pt") if average_with else run
    sources = [trained_on(member) for member in (run, average_with) if member is not None]  # read once, not per pair
    for direction in directions:
        source, target = DIRECTIONS[direction]
        translator = Translator.from_run(model, direction, device="auto", **VARIANTS.get(variant, {}))
        if variant and all(getattr(Translator.from_run(run, direction, device="cpu"), option, None) == value
                           for option, value in VARIANTS[variant].items()):
            continue
        for pair in pairs:
            stem = Path(pair[source]).name.split('.')[0]
            output = work / f"{name.replace(' ', '-')}-{direction}-{stem}-{len(rows)}.nii.gz"
            start = time.perf_counter()
            convert_file(translator, pair[source], output, overwrite=True)
            seconds = time.perf_counter() - start
            seen_by = {seen(pair, trained) for trained in sources}
            report = evaluate(output, pair[target], source=pair[source], baselines=True,
                              target_example=pair[f"example_{target}"], region=pair.get("lesions"))
            region = report.get("region", {})
            rows.append({"model": name, "direction": direction, "volume": pair["name"],
                         "seen": next(s for s in ("trained on", "not recorded", "unseen") if s in seen_by),
                         "convert_s": seconds,
                         "model_scores": report["model"], "consistency": report["interslice_consistency"],
                         "reference_consistency": report["reference_interslice_consistency"],
                         "identity": report["baselines"]["identity"],
                         "baseline": report["baselines"]["inverted_histogram_matched"],
                         "lesions": {"model": region.get("model"),
                                     "baseline": region.get("baselines", {}).get("inverted_histogram_matched")}})
    return rows


def _lesions(r: dict, who: str) -> dict | None:
    """The lesion-region scores of ``who`` (``model`` or ``baseline``) in a row, ``None`` without a lesion mask."""
    return (r.get("lesions") or {}).get(who)


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    lines = ["| model | direction | volume | seen | PSNR mask (dB) | SSIM mask | MAE mask | SSIM whole | BraSyn SSIM | "
             "inter-slice (truth) | baseline PSNR / SSIM mask (BraSyn) | identity PSNR / SSIM mask | "
             "lesions PSNR / SSIM / contrast ratio (baseline) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, b, i = r["model_scores"]["mask"], r["baseline"]["mask"], r["identity"]["mask"]
        lesion, lesion_base = _lesions(r, "model"), _lesions(r, "baseline")
        lesions = (f"{lesion['psnr']:.2f} / {lesion['ssim_3d']:.3f} / {lesion['contrast_ratio']:.2f} "
                   f"({lesion_base['psnr']:.2f} / {lesion_base['ssim_3d']:.3f} / {lesion_base['contrast_ratio']:.2f})"
                   if lesion else "")
        lines.append(f"| {r['model']} | {r['direction']} | {r['volume']} | {r.get('seen', '')} | {m['psnr']:.2f} | "
                     f"{m['ssim_3d']:.3f} | "
                     f"{m['mae']:.3f} | {r['model_scores']['whole']['ssim_3d']:.3f} | "
                     f"{_number(r['model_scores'].get('ssim_brasyn'), '.3f')} | {r['consistency']:.2f} "
                     f"({r.get('reference_consistency', float('nan')):.2f}) | "
                     f"{b['psnr']:.2f} / {b['ssim_3d']:.3f} ({_number(r['baseline'].get('ssim_brasyn'), '.3f')}) | "
                     f"{i['psnr']:.2f} / {i['ssim_3d']:.3f} | {lesions} |")
    return "\n".join(lines)


#: the columns of docs/quality.csv: what a row of :func:`table` shows, one value a column, and the date it was scored
#: (rows scored before a column existed leave it empty)
CSV_COLUMNS = ["model", "direction", "volume", "seen", "psnr_mask", "ssim_mask", "mae_mask", "ssim_whole",
               "interslice", "interslice_truth", "baseline_psnr_mask", "baseline_ssim_mask", "identity_psnr_mask",
               "identity_ssim_mask", "date", "ssim_brasyn", "baseline_ssim_brasyn", "lesion_psnr", "lesion_ssim",
               "lesion_contrast_ratio", "baseline_lesion_psnr", "baseline_lesion_ssim", "baseline_lesion_contrast_ratio"]
#: what a row scores: a new row replaces a kept one with the same values of these columns
CSV_KEY = ("model", "direction", "volume")
#: a lesion score's key -> (its CSV column without the ``lesion_`` / ``baseline_lesion_`` prefix, its format)
_LESION_COLUMNS = {"psnr": ("psnr", ".2f"), "ssim_3d": ("ssim", ".3f"), "contrast_ratio": ("contrast_ratio", ".2f")}


def record(row: dict, date: str = "") -> dict[str, str]:
    """A row as a docs/quality.csv record: the values :func:`table` prints, at its precision."""
    m, b, i = row["model_scores"]["mask"], row["baseline"]["mask"], row["identity"]["mask"]
    values = [row["model"], row["direction"], row["volume"], row.get("seen", ""), f"{m['psnr']:.2f}",
              f"{m['ssim_3d']:.3f}", f"{m['mae']:.3f}", f"{row['model_scores']['whole']['ssim_3d']:.3f}",
              f"{row['consistency']:.2f}", f"{row.get('reference_consistency', float('nan')):.2f}",
              f"{b['psnr']:.2f}", f"{b['ssim_3d']:.3f}", f"{i['psnr']:.2f}", f"{i['ssim_3d']:.3f}",
              row.get("date", date)]
    values += [_number(row["model_scores"].get("ssim_brasyn"), ".3f"), _number(row["baseline"].get("ssim_brasyn"), ".3f")]
    for who in ("model", "baseline"):
        lesion = _lesions(row, who) or {}
        values += [_number(lesion.get(key), spec) for key, (_, spec) in _LESION_COLUMNS.items()]
    return dict(zip(CSV_COLUMNS, values))


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def row_from_record(rec: dict[str, str]) -> dict:
    """A docs/quality.csv record back as a row (the fields :func:`table` and :func:`record` read)."""
    number = {k: float(v) if v else None for k, v in rec.items()
              if k not in ("model", "direction", "volume", "seen", "date")}
    lesions = {who: {key: number[f"{prefix}lesion_{column}"] for key, (column, _) in _LESION_COLUMNS.items()}
               for who, prefix in (("model", ""), ("baseline", "baseline_"))}
    return {"model": rec["model"], "direction": rec["direction"], "volume": rec["volume"], "seen": rec["seen"],
            "date": rec["date"],
            "model_scores": {"mask": {"psnr": number["psnr_mask"], "ssim_3d": number["ssim_mask"],
                                      "mae": number["mae_mask"]},
                             "whole": {"ssim_3d": number["ssim_whole"]}, "ssim_brasyn": number["ssim_brasyn"]},
            "consistency": number["interslice"], "reference_consistency": number["interslice_truth"],
            "baseline": {"mask": {"psnr": number["baseline_psnr_mask"], "ssim_3d": number["baseline_ssim_mask"]},
                         "ssim_brasyn": number["baseline_ssim_brasyn"]},
            "identity": {"mask": {"psnr": number["identity_psnr_mask"], "ssim_3d": number["identity_ssim_mask"]}},
            "lesions": {who: values if values["psnr"] is not None else None for who, values in lesions.items()}}


def write_rows(rows: list[dict], path: Path, append: bool = False, date: str = "") -> None:
    """Write ``rows`` to the CSV file ``path`` (:data:`CSV_COLUMNS`); with ``append`` the file's rows stay,
    except those of the same model, direction and volume as a new one, which it replaces."""
    from benchmarks_doc import write_csv

    write_csv(path, [record(row, date) for row in rows], CSV_COLUMNS, CSV_KEY, append)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file :func:`write_rows` wrote ([] when it is missing)."""
    from benchmarks_doc import read_csv

    return [row_from_record(rec) for rec in read_csv(path)]


#: ablation name -> (train() keyword changes, configuration overrides) against the shipped recipe
ABLATIONS = {"default": ({}, {}), "unpaired": ({"paired": False}, {}),
             "no-prior": ({}, {"loss": {"prior": 0.0}}), "k1": ({}, {"model": {"k": 1}}),
             "adversarial-1": ({}, {"loss": {"adversarial": 1.0}}),
             "prior-residual": ({}, {"model": {"prior_residual": True}})}
#: the pair every ablation leaves out, so that its rows on it are unseen
ABLATION_HOLD_OUT = ("tcga_du_7294",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000, help="training budget per ablation")
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS), help="variants to train")
    parser.add_argument("--model", nargs="*", default=[], help="also evaluate these existing run directories")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="also score each --model with these inference settings (VARIANTS): a step off, e.g. "
                             "raw-output (Translator's standardize_output), single-plane, no-mirror, or the refit on")
    parser.add_argument("--average-with", metavar="RUN",
                        help="score each --model (and variant) averaged with this run's translation, at its own "
                             "settings (e.g. bundles/mri_cyclegan: the shipped model)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-quality"))
    parser.add_argument("--csv", default=str(ROOT / "docs" / "quality.csv"),
                        help="the record of every row scored so far, which --append adds to")
    parser.add_argument("--volumes", nargs="*", help="score only the volumes whose names start with these")
    parser.add_argument("--directions", nargs="*", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    parser.add_argument("--append", action="store_true",
                        help="add these rows to --csv, replacing any of the same model, direction and volume "
                             "(without it they go to WORK/quality.csv and WORK/quality.json only)")
    args = parser.parse_args()

    import torch

    from mri_translate.train import train
    from train_default_model import RECIPES, sources

    work = Path(args.work)
    runs, train_seconds = [Path(m) for m in args.model], {}
    for name in args.ablations:
        flags, overrides = ABLATIONS[name]
        t1, t2 = sources(work / "pairs-links", ABLATION_HOLD_OUT, RECIPES["t1-to-t2"])
        start = time.perf_counter()
        run = train(t1, t2, work / name, config=ROOT / "configs" / "default-model.yaml",
                    overrides={**overrides, "train": {"iterations": args.iterations}},
                    overwrite=True, progress_bar=False, **{"paired": True, **flags}).run_dir
        train_seconds[run.name] = time.perf_counter() - start
        runs.append(run)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [pair for pair in held_out_pairs(Path(tmp), Path(args.work) / "stripped-pairs", only=args.volumes)
                 if not args.volumes or any(pair["name"].startswith(name) for name in args.volumes)]
        average_with = Path(args.average_with) if args.average_with else None
        rows = [row for run in runs for variant in [None, *args.variants]
                for row in evaluate_model(run, pairs, Path(tmp), variant, args.directions, average_with)]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    budget = ", ".join(f"{name}: {seconds / 60:.1f} min" for name, seconds in train_seconds.items())
    trained = (f"; ablations trained {args.iterations} iterations each ({budget}) on the data of "
               f"scripts/train_default_model.py without {', '.join(ABLATION_HOLD_OUT)}") if budget else ""
    print(f"Quality (scripts/bench_quality.py, {time.strftime('%Y-%m-%d')}). Machine: {machine}"
          f"{trained}. `seen` says whether the model trained on that volume (from its configs/train.json). "
          f"Baseline = inverted input histogram-matched to another subject's target contrast; identity = the "
          f"input itself.\n\n" + table(rows))
    work.mkdir(parents=True, exist_ok=True)
    Path(work, "quality.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    date = time.strftime("%Y-%m-%d")
    write_rows(rows, work / "quality.csv", date=date)
    if args.append and args.csv:
        write_rows(rows, Path(args.csv), append=True, date=date)
        print(f"{len(rows)} rows added to {args.csv}")


if __name__ == "__main__":
    main()
