"""Train the model that ships in bundles/mri_cyclegan/models/model.pt on REAL scans whose licence allows it.

The shipped model is for skull-stripped brain MRI (BraTS-style preprocessing): both domains are skull-stripped,
so the generators never learn to add or remove a skull, and the target domain's intensity landmarks are those of
brain tissue alone. Training it with the whole-head pairs as well (adi_brain, TCGA-FG-6692, registered) cost
3 dB in-brain on the unseen skull-stripped tcga_du_7294 T1w -> T2w (docs/benchmarks.md).

Data (../shared/data/volumes; sources and licences in its README and in the bundle's docs/data_license.txt):
- domain A (T1w): the 10 BraTS 2018 T1w (skull-stripped; the MONAI model zoo ships BraTS 2018-trained models)
  and the T1w of every pair;
- domain B (T2w): the T2w of every pair;
- pairs (mixed mode, ``--paired``): brats23_gli_00000 (CC BY 4.0) and tcga_du_7294 (CC BY 3.0), skull-stripped
  and co-registered at 1 mm, each adding the supervised L1 term;
- never used: chris_rorden (CC BY-NC), brainix, arc_m2208 and niivue_register (licence not stated), the
  whole-head scans, and the avg152 template (evaluation).

No skull-stripped volume is left for a blind validation, so the last checkpoint ships; its quality on unseen
scans is measured by leave-one-out: ``--hold-out tcga_du_7294`` (or ``brats23_gli_00000``) trains the same
recipe without that pair, and ``scripts/bench_quality.py --model RUN`` scores it as unseen.

    python scripts/train_default_model.py --out runs/default-model [--iterations 1500] [--install]
    python scripts/train_default_model.py --out runs/loo-tcga --hold-out tcga_du_7294 [--validate --val-every 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "volumes"
REAL = SHARED / "train_real"
T1W = sorted(REAL.glob("brats18_*_T1w.nii.gz"))  # besides the pairs' T1w; the T2w all come from the pairs
#: subject -> (T1w, T2w), co-registered on one grid
PAIRS = {"brats23_gli_00000": (SHARED / "brats23_gli_00000" / "t1.nii.gz", SHARED / "brats23_gli_00000" / "t2.nii.gz"),
         "tcga_du_7294": (SHARED / "tcga_du_7294" / "t1.nii.gz", SHARED / "tcga_du_7294" / "t2.nii.gz")}


def sources(folder: Path, hold_out=()) -> tuple[list[Path], list[Path]]:
    """The T1w and T2w lists without the ``hold_out`` subjects; each pair linked into ``folder`` as
    ``<subject>_T1w/_T2w`` so that ``--paired`` matches them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    t1, t2 = list(T1W), []
    for subject, (a, b) in PAIRS.items():
        if subject in hold_out:
            continue
        for original, contrast, domain in ((a, "T1w", t1), (b, "T2w", t2)):
            link = folder / f"{subject}_{contrast}.nii.gz"
            if not link.exists():
                os.symlink(original, link)
            domain.append(link)
    return t1, t2


def main() -> None:
    from mri_translate.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default-model")
    parser.add_argument("--config", default=str(ROOT / "configs" / "default-model.yaml"),
                        help="the recipe (default: configs/default-model.yaml)")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--hold-out", nargs="*", default=[], choices=sorted(PAIRS),
                        help="leave these pairs out (leave-one-out evaluation); never with --install")
    parser.add_argument("--validate", action="store_true",
                        help="with --hold-out: score the held-out pairs every train.val_every iterations and export "
                             "the best checkpoint (train --val), which shows how quality moves with training length")
    parser.add_argument("--val-every", type=int, help="train.val_every (iterations between validations)")
    parser.add_argument("--install", action="store_true", help="copy models/model.pt into the bundle template")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--install-only", action="store_true", help="install an already trained --out and stop")
    args = parser.parse_args()

    out = Path(args.out)
    if args.install_only:
        install(out)
        return
    if args.hold_out and args.install:
        parser.error("a model trained with --hold-out is for evaluation, not for shipping")
    if args.validate and not args.hold_out:
        parser.error("--validate scores the --hold-out pairs; name at least one")
    t1, t2 = sources(out.parent / f"{out.name}-pairs", args.hold_out)
    train(t1, t2, out, config=args.config,
          overrides={"train": {"iterations": args.iterations, "val_every": args.val_every}}, resume=args.resume,
          overwrite=not args.resume, progress_bar=False, paired=True,
          val=[PAIRS[subject] for subject in args.hold_out] if args.validate else None)
    if args.install:
        install(out)


def install(run: Path) -> None:
    """Copy the run's chosen model and its metadata into the bundle template."""
    template = ROOT / "bundles" / "mri_cyclegan"
    shutil.copyfile(run / "models" / "model.pt", template / "models" / "model.pt")
    shutil.copyfile(run / "configs" / "metadata.json", template / "configs" / "metadata.json")
    print(f"installed {run / 'models' / 'model.pt'} into {template}")


if __name__ == "__main__":
    main()
