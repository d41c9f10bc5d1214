"""Train the model that ships in bundles/mri_cyclegan/models/model.pt on REAL scans whose licence allows it.

The shipped model is composed of two runs, one recipe per direction, chosen by leave-one-out on the two
skull-stripped pairs (docs/benchmarks.md):

- ``t1-to-t2`` (G_AB, configs/default-model.yaml): skull-stripped scans only, so the generator never learns to
  add a skull and the T2w landmarks are those of brain tissue alone. Adding the whole-head scans cost 3 dB
  in-brain on the unseen skull-stripped tcga_du_7294 T1w -> T2w.
- ``t2-to-t1`` (G_BA, configs/default-model-t2-to-t1.yaml): the same plus the whole-head T1w and the two
  whole-head pairs (registered), with the original adversarial weight. With a single skull-stripped T2w subject
  left in leave-one-out, the skull-stripped recipe fell below the no-learning baseline on T2w -> T1w; the extra
  T2w subjects lifted it by 1.6 dB on average over both unseen pairs.

Data (../shared/data/volumes; sources and licences in its README and in the bundle's docs/data_license.txt):
- skull-stripped: the 10 BraTS 2018 T1w (the MONAI model zoo ships BraTS 2018-trained models) and the pairs
  brats23_gli_00000 (CC BY 4.0) and tcga_du_7294 (CC BY 3.0), co-registered at 1 mm;
- whole head (t2-to-t1 recipe only): the T1w seg3d_mr (MIT), uih (BSD-2) and nichart_trio (NITRC sample data),
  and the pairs adi_brain (Apache-2.0) and TCGA-FG-6692 (CC BY 3.0), one session each on two grids, aligned
  by ``--register``;
- every pair adds the supervised L1 (mixed mode, ``--paired``); never used: chris_rorden (CC BY-NC), brainix,
  arc_m2208 and niivue_register (licence not stated), and the avg152 template (evaluation).

At inference the T1w -> T2w direction refits its translation on the inverted input and averages some of it in
(``model.guided_radius_mm`` and ``model.inverted_weight`` of its preset, written into the composed file by
``--compose``; inference settings, so changing them needs no retraining).

No skull-stripped volume is left for a blind validation, so each run's last checkpoint is used; quality on
unseen scans is measured by leave-one-out: ``--hold-out tcga_du_7294`` (or ``brats23_gli_00000``) trains a
recipe without that pair, and ``scripts/bench_quality.py --model RUN`` scores it as unseen.

    python scripts/train_default_model.py --recipe t1-to-t2 --out runs/default-t1-to-t2 [--iterations N]
    python scripts/train_default_model.py --recipe t2-to-t1 --out runs/default-t2-to-t1
    python scripts/train_default_model.py --compose runs/default-t1-to-t2 runs/default-t2-to-t1 \\
                                          --out runs/default-model [--install]
    python scripts/train_default_model.py --out runs/loo-tcga --hold-out tcga_du_7294 [--validate --val-every 500]
                                          [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "volumes"
REAL = SHARED / "train_real"
BRATS18_T1W = sorted(REAL.glob("brats18_*_T1w.nii.gz"))
WHOLE_HEAD_T1W = [REAL / "seg3d_mr_T1w.nii.gz", REAL / "uih_T1w.nii.gz", REAL / "nichart_trio_T1w.nii.gz"]
#: subject -> (T1w, T2w): skull-stripped, co-registered on one grid
PAIRS = {"brats23_gli_00000": (SHARED / "brats23_gli_00000" / "t1.nii.gz", SHARED / "brats23_gli_00000" / "t2.nii.gz"),
         "tcga_du_7294": (SHARED / "tcga_du_7294" / "t1.nii.gz", SHARED / "tcga_du_7294" / "t2.nii.gz")}
#: subject -> (T1w, T2w): whole head, one session on two grids (``--register`` aligns them)
WHOLE_HEAD_PAIRS = {"adi_brain": (REAL / "adi_brain_T1w.nii.gz", REAL / "adi_brain_T2w.nii.gz"),
                    "tcga_fg_6692": (SHARED / "tcga_fg_6692_native" / "t1_ax_se.nii.gz",
                                     SHARED / "tcga_fg_6692_native" / "t2_ax_tse.nii.gz")}


@dataclass
class Recipe:
    """One direction's training: preset, unpaired T1w and pairs (the T2w all come from pairs)."""

    config: Path
    t1: list
    pairs: dict


RECIPES = {"t1-to-t2": Recipe(ROOT / "configs" / "default-model.yaml", BRATS18_T1W, PAIRS),
           "t2-to-t1": Recipe(ROOT / "configs" / "default-model-t2-to-t1.yaml", BRATS18_T1W + WHOLE_HEAD_T1W,
                              {**PAIRS, **WHOLE_HEAD_PAIRS})}


def sources(folder: Path, hold_out=(), recipe: Recipe = RECIPES["t1-to-t2"]) -> tuple[list[Path], list[Path]]:
    """The T1w and T2w lists of ``recipe`` without the ``hold_out`` subjects; each pair linked into ``folder``
    as ``<subject>_T1w/_T2w`` so that ``--paired`` matches them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    t1, t2 = list(recipe.t1), []
    for subject, (a, b) in recipe.pairs.items():
        if subject in hold_out:
            continue
        for original, contrast, domain in ((a, "T1w", t1), (b, "T2w", t2)):
            link = folder / f"{subject}_{contrast}.nii.gz"
            if not link.exists():
                os.symlink(original, link)
            domain.append(link)
    return t1, t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default-model")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="t1-to-t2",
                        help="which direction's recipe to train (data and preset)")
    parser.add_argument("--config", help="another preset for the recipe's data")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--seed", type=int,
                        help="train.seed (the recipes use 0): a second seed shows run-to-run spread")
    parser.add_argument("--hold-out", nargs="*", default=[], choices=sorted(PAIRS),
                        help="leave these pairs out (leave-one-out evaluation); never with --install")
    parser.add_argument("--validate", action="store_true",
                        help="with --hold-out: score the held-out pairs every train.val_every iterations and export "
                             "the best checkpoint (train --val), which shows how quality moves with training length")
    parser.add_argument("--val-every", type=int, help="train.val_every (iterations between validations)")
    parser.add_argument("--compose", nargs=2, metavar=("T1_TO_T2_RUN", "T2_TO_T1_RUN"),
                        help="write --out as one model whose directions come from these two runs, and stop")
    parser.add_argument("--install", action="store_true", help="copy models/model.pt into the bundle template")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--install-only", action="store_true", help="install an already trained --out and stop")
    args = parser.parse_args()

    out = Path(args.out)
    if args.install_only:
        install(out)
        return
    if args.compose:
        compose(*map(Path, args.compose), out)
    else:
        if args.hold_out and args.install:
            parser.error("a model trained with --hold-out is for evaluation, not for shipping")
        if args.validate and not args.hold_out:
            parser.error("--validate scores the --hold-out pairs; name at least one")
        train_recipe(RECIPES[args.recipe], out, args)
    if args.install:
        install(out)


def train_recipe(recipe: Recipe, out: Path, args) -> None:
    """Train one recipe into the run directory ``out``."""
    from mri_translate.train import train

    t1, t2 = sources(out.parent / f"{out.name}-pairs", args.hold_out, recipe)
    train(t1, t2, out, config=args.config or recipe.config,
          overrides={"train": {"iterations": args.iterations, "val_every": args.val_every, "seed": args.seed}},
          resume=args.resume,
          overwrite=not args.resume, progress_bar=False, paired=True, register=True,
          val=[PAIRS[subject] for subject in args.hold_out] if args.validate else None)


def compose(t1_to_t2: Path, t2_to_t1: Path, out: Path) -> None:
    """``out`` as a run folder holding the composed ``models/model.pt``, the first run's
    ``configs/metadata.json`` and a ``configs/train.json`` whose sources are both runs' (so a benchmark marks a
    volume seen when either direction trained on it). Each direction's inference settings (``model.inverted_weight``,
    ``model.guided_radius_mm``) are its recipe preset's (chosen by leave-one-out after training)."""
    from mri_translate.bundle import INFERENCE_SETTINGS, compose_model
    from mri_translate.config import load_config

    models = {direction: load_config(recipe.config).model for direction, recipe in RECIPES.items()}
    settings = {direction: {key: getattr(model, key) for key in INFERENCE_SETTINGS}
                for direction, model in models.items()}
    compose_model(t1_to_t2, t2_to_t1, out / "models" / "model.pt", inference_settings=settings)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(t1_to_t2 / "configs" / "metadata.json", out / "configs" / "metadata.json")
    runs = {"t1-to-t2": t1_to_t2, "t2-to-t1": t2_to_t1}
    recorded = {direction: json.loads((run / "configs" / "train.json").read_text()) for direction, run in runs.items()}
    (out / "configs" / "train.json").write_text(json.dumps(
        {"composed_from": {direction: str(run) for direction, run in runs.items()},
         "configs": {direction: train_json["config"] for direction, train_json in recorded.items()},
         "sources": {domain: sorted({path for train_json in recorded.values()
                                     for path in train_json["sources"][domain]}) for domain in ("t1", "t2")}},
        indent=2) + "\n")
    print(f"composed {out / 'models' / 'model.pt'}: G_AB from {t1_to_t2}, G_BA from {t2_to_t1}")


def install(run: Path) -> None:
    """Copy the run's chosen model and its metadata into the bundle template."""
    template = ROOT / "bundles" / "mri_cyclegan"
    shutil.copyfile(run / "models" / "model.pt", template / "models" / "model.pt")
    shutil.copyfile(run / "configs" / "metadata.json", template / "configs" / "metadata.json")
    print(f"installed {run / 'models' / 'model.pt'} into {template}")


if __name__ == "__main__":
    main()
