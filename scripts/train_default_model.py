"""Train the model that ships in bundles/mri_cyclegan/models/model.pt, and the recipes it is made of.

The shipped model (0.6.0) averages the translations of two models (``bundle.average_models``; docs/benchmarks.md):

- ``brains-batched`` (configs/brains-batched.yaml): one run, both directions, on every shippable pair as brains
  (the clinical whole-head visits registered and skull-stripped by scripts/strip_pairs.py) with the supervised L1 on
  half the items, and the 10 BraTS 2018 T1w unpaired; batches of 8, 30,000 slabs per direction, weights averaged.
  Composed with itself with the refit and the mirrored pass off (``--settings``): the generator alone.
- 0.5.0, composed of two runs, one recipe per direction:
  ``t1-to-t2`` (G_AB, configs/default-model.yaml): skull-stripped scans only: the 10 BraTS 2018 T1w and the pairs
  brats23_gli_00000 and tcga_du_7294, batch 1; ``t2-to-t1`` (G_BA, configs/default-model-t2-to-t1.yaml): the same
  plus the whole-head T1w seg3d_mr, uih and nichart_trio and the whole-head pairs adi_brain and tcga_fg_6692
  (registered). At inference each direction refits its translation on the inverted input
  (``model.guided_radius_mm``, ``model.inverted_weight`` of its preset, written into the composed file by
  ``--compose``).

``all-subjects`` (configs/all-subjects.yaml): one run, both directions, on every shippable real subject with the
whole-head visits left whole, plus 13 unpaired T1w and the T2w-only MSLUB visit p03s1; batches of 8 in bf16, 2500
iterations = 20,000 slabs per direction. Leave-one-out it scored below 0.5.0 (docs/benchmarks.md): not shipped.

Data: ../shared/data/volumes; sources and licences in its README and in the bundle's docs/data_license.txt. MSLUB:
CC BY, Lesjak et al. 2016 and 2017. Whole-head pairs (one session on two grids) are registered once, rigidly
(mutual information; the values are printed and kept in ``runs/registered/<pair>``, with a checkerboard PNG).
Never used: chris_rorden (CC BY-NC), brainix, arc_m2208 and niivue_register (licence not stated), and the
avg152 template (evaluation).

Leave-one-subject-out: ``--hold-out SUBJECT ...`` trains without those people (a patient's visits go together)
and ``scripts/bench_quality.py --model RUN`` scores them as unseen. ``--init RUN`` starts a run from an earlier run's
generators with a fresh learning-rate cycle (docs/benchmarks.md: "A second learning-rate cycle").

    python scripts/train_default_model.py --recipe brains-batched --out runs/brains-batched-all
    python scripts/train_default_model.py --compose runs/brains-batched-all runs/brains-batched-all \\
        --settings '{"t1-to-t2": {"inverted_weight": 0, "guided_radius_mm": 0, "mirror": false},
                     "t2-to-t1": {"inverted_weight": 0, "guided_radius_mm": 0, "mirror": false}}' \\
        --average-with runs/model-050.pt --out runs/default-model [--install]
    python scripts/train_default_model.py --recipe brains-batched --out runs/loo-b --hold-out tcga_du_7294 mslub_p07 mslub_p12

0.5.0's file (``runs/model-050.pt`` above): ``git show b465ca0:bundles/mri_cyclegan/models/model.pt``, or rebuilt
with ``--recipe t1-to-t2 --iterations 2500``, ``--recipe t2-to-t1`` and ``--compose`` of the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "volumes"
REAL = SHARED / "train_real"
REGISTERED = ROOT / "runs" / "registered"
STRIPPED = ROOT / "runs" / "stripped-pairs"
BRATS18_T1W = sorted(REAL.glob("brats18_*_T1w.nii.gz"))
WHOLE_HEAD_T1W = [REAL / "seg3d_mr_T1w.nii.gz", REAL / "uih_T1w.nii.gz", REAL / "nichart_trio_T1w.nii.gz"]
#: pair name -> (T1w, T2w): skull-stripped, co-registered on one grid
PAIRS = {name: (SHARED / name / "t1.nii.gz", SHARED / name / "t2.nii.gz")
         for name in ("brats23_gli_00000", "tcga_du_7294", "mslub_p07", "mslub_p19")}
#: pair name -> (T1w, T2w): whole head, one session on two grids (registered once into REGISTERED)
WHOLE_HEAD_PAIRS = {"adi_brain": (REAL / "adi_brain_T1w.nii.gz", REAL / "adi_brain_T2w.nii.gz"),
                    "tcga_fg_6692": (SHARED / "tcga_fg_6692_native" / "t1_ax_se.nii.gz",
                                     SHARED / "tcga_fg_6692_native" / "t2_ax_tse.nii.gz"),
                    **{f"mslub_{visit}": (REAL / f"mslub_{visit}_T1w.nii.gz", REAL / f"mslub_{visit}_T2w.nii.gz")
                       for visit in ("p01s1", "p01s2", "p03s2", "p04s1", "p12s1", "p12s2")}}
#: T2w scans without a T1w of their session (MSLUB p03's first visit)
UNPAIRED_T2W = [REAL / "mslub_p03s1_T2w.nii.gz"]


@dataclass
class Recipe:
    """One run's training: preset, unpaired T1w, the pairs it trains on (names of PAIRS / WHOLE_HEAD_PAIRS) and
    unpaired T2w; ``strip``: the whole-head pairs skull-stripped (scripts/strip_pairs.py) rather than whole."""

    config: Path
    t1: list
    pairs: list
    t2: list = field(default_factory=list)
    strip: bool = False


RECIPES = {"t1-to-t2": Recipe(ROOT / "configs" / "default-model.yaml", BRATS18_T1W,
                              ["brats23_gli_00000", "tcga_du_7294"]),
           "t2-to-t1": Recipe(ROOT / "configs" / "default-model-t2-to-t1.yaml", BRATS18_T1W + WHOLE_HEAD_T1W,
                              ["brats23_gli_00000", "tcga_du_7294", "adi_brain", "tcga_fg_6692"]),
           # 0.5.0's T1w -> T2w recipe with the skull-stripped MSLUB pairs added (multiple-sclerosis lesions)
           "t1-to-t2-mslub": Recipe(ROOT / "configs" / "default-model.yaml", BRATS18_T1W, [*PAIRS]),
           # every shippable pair, brains only: the whole-head visits skull-stripped as for evaluation
           "stripped-subjects": Recipe(ROOT / "configs" / "default-model.yaml", BRATS18_T1W,
                                       [*PAIRS, *WHOLE_HEAD_PAIRS], strip=True),
           "all-subjects": Recipe(ROOT / "configs" / "all-subjects.yaml", BRATS18_T1W + WHOLE_HEAD_T1W,
                                  [*PAIRS, *WHOLE_HEAD_PAIRS], UNPAIRED_T2W)}
# brains only, batched: 30,000 slabs per direction in batches of 8, weights averaged (configs/brains-batched.yaml)
RECIPES["brains-batched"] = replace(RECIPES["stripped-subjects"], config=ROOT / "configs" / "brains-batched.yaml")


def subject_of(name: str) -> str:
    """The person a pair or file name belongs to (``mslub_p01s2``, ``mslub_p01s2_T2w.nii.gz`` -> ``mslub_p01``)."""
    return name[:9] if name.startswith("mslub_") else name


#: the people of the pairs, the names ``--hold-out`` takes
SUBJECTS = sorted({subject_of(name) for name in {**PAIRS, **WHOLE_HEAD_PAIRS}})


def registered(pair: str) -> tuple[Path, Path]:
    """The whole-head ``pair`` on one grid: registered into ``REGISTERED/<pair>`` the first time (the T1w resampled
    onto the thicker-sliced T2w), read from there afterwards."""
    from mri_translate import pairing

    folder = REGISTERED / pair
    record = next(folder.glob("*_registration.json"), None) if folder.is_dir() else None
    if record is None:
        folder.mkdir(parents=True, exist_ok=True)
        pairing.register(*WHOLE_HEAD_PAIRS[pair], folder)
        record = next(folder.glob("*_registration.json"))
    done = json.loads(record.read_text())
    print(f"{pair}: registered ({done['moved']} moved), mutual information {done['metric_initial']:.3f} -> "
          f"{done['metric_final']:.3f}; {done['checkerboard']}")
    return Path(done["t1"]), Path(done["t2"])


#: the least intracranial volume (ml) a skull-stripped whole-head pair keeps when its mask worked
MIN_BRAIN_ML = 800.0


def stripped(pair: str) -> tuple[Path, Path] | None:
    """The whole-head ``pair`` registered and skull-stripped into ``STRIPPED`` (scripts/strip_pairs.py; kept there);
    ``None`` (said) when the mask kept less than :data:`MIN_BRAIN_ML` (it failed, e.g. on MSLUB p01's visits)."""
    from strip_pairs import kept_ml, stripped_pair

    done = stripped_pair(pair, *WHOLE_HEAD_PAIRS[pair], STRIPPED)
    kept = kept_ml(done["t2"])
    if kept < MIN_BRAIN_ML:
        print(f"{pair}: left out, its skull-stripping mask kept {kept:.0f} ml (< {MIN_BRAIN_ML:.0f} ml)")
        return None
    return Path(done["t1"]), Path(done["t2"])


def sources(folder: Path, hold_out=(), recipe: Recipe = RECIPES["all-subjects"]) -> tuple[list[Path], list[Path]]:
    """The T1w and T2w lists of ``recipe`` without the ``hold_out`` people; each pair linked into ``folder`` as
    ``<pair>_T1w/_T2w`` (whole-head ones registered) so that ``--paired`` matches them by name, and a pair's expert
    lesion mask (MSLUB p07, p19) as ``<pair>_lesions`` (:func:`lesion_masks`)."""
    folder.mkdir(parents=True, exist_ok=True)
    t1 = list(recipe.t1)
    t2 = [path for path in recipe.t2 if subject_of(path.name) not in hold_out]
    for pair in recipe.pairs:
        if subject_of(pair) in hold_out:
            continue
        files = PAIRS[pair] if pair in PAIRS else stripped(pair) if recipe.strip else registered(pair)
        if files is None:
            continue
        for original, contrast, domain in zip(files, ("T1w", "T2w"), (t1, t2)):
            domain.append(_link(original, folder / f"{pair}_{contrast}.nii.gz"))
        if pair in PAIRS and (PAIRS[pair][0].parent / "lesions.nii.gz").is_file():
            _link(PAIRS[pair][0].parent / "lesions.nii.gz", folder / f"{pair}_lesions.nii.gz")
    return t1, t2


def lesion_masks(folder: Path) -> list[Path]:
    """The lesion masks :func:`sources` linked into ``folder`` (``train --region-masks``)."""
    return sorted(folder.glob("*_lesions.nii.gz"))


def _link(original: Path, link: Path) -> Path:
    """``link``, a symbolic link to ``original`` (made once)."""
    if not link.exists():
        os.symlink(original.resolve(), link)
    return link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default-model")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="t1-to-t2",
                        help="which recipe to train (data and preset)")
    parser.add_argument("--config", help="another preset for the recipe's data")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--init", metavar="RUN", help="train.init: start from this run's (or model file's) "
                        "generators, a second learning-rate cycle on the same data (the discriminators start fresh)")
    parser.add_argument("--seed", type=int, help="train.seed (the preset uses 0): a second seed shows run-to-run spread")
    parser.add_argument("--threads", type=int, help="torch threads (two runs side by side on two cores: 1 each)")
    parser.add_argument("--hold-out", nargs="*", default=[], choices=SUBJECTS,
                        help="leave these people out (leave-one-subject-out evaluation); never with --install")
    parser.add_argument("--compose", nargs=2, metavar=("T1_TO_T2_RUN", "T2_TO_T1_RUN"),
                        help="write --out as one model whose directions come from these runs, and stop")
    parser.add_argument("--settings", type=json.loads, help="with --compose: inference settings per direction "
                        "(default: each recipe preset's), e.g. '{\"t1-to-t2\": {\"guided_radius_mm\": 6}}'")
    parser.add_argument("--average-with", nargs="+", metavar="MODEL",
                        help="with --compose: average the composed model's translations with these models' "
                        "(bundle.average_models), e.g. a model file of an earlier release")
    parser.add_argument("--install", action="store_true", help="copy models/model.pt into the bundle template")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--install-only", action="store_true", help="install an already trained --out and stop")
    args = parser.parse_args()

    out = Path(args.out)
    if args.install_only:
        install(out)
        return
    if args.average_with and not args.compose:
        parser.error("--average-with needs --compose")
    if args.compose:
        compose(*map(Path, args.compose), out, args.settings, args.average_with)
    else:
        if args.hold_out and args.install:
            parser.error("a model trained with --hold-out is for evaluation, not for shipping")
        train_run(RECIPES[args.recipe], out, args)
    if args.install:
        install(out)


def train_run(recipe: Recipe, out: Path, args) -> None:
    """Train ``recipe`` without the held-out people into the run directory ``out``."""
    import torch

    from mri_translate.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = out.parent / f"{out.name}-pairs"
    t1, t2 = sources(folder, args.hold_out, recipe)
    train(t1, t2, out, config=args.config or recipe.config,
          overrides={"train": {"iterations": args.iterations, "seed": args.seed, "init": args.init}},
          resume=args.resume, overwrite=not args.resume, progress_bar=False, paired=True, register=True,
          regions=lesion_masks(folder))


def compose(t1_to_t2: Path, t2_to_t1: Path, out: Path, settings: dict | None = None,
            average_with: list | None = None) -> None:
    """``out`` as a run folder holding the composed ``models/model.pt`` (:func:`~mri_translate.bundle.compose_model`:
    G_AB from the first run, G_BA from the second, with the inference settings ``{direction: {setting: value}}``,
    by default those of each direction's recipe preset), the first run's ``configs/metadata.json`` and a
    ``configs/train.json`` whose sources are both runs' (so a benchmark marks a volume seen when either direction
    trained on it). ``average_with``: model files or runs whose translations the composed model averages with its
    own (:func:`~mri_translate.bundle.average_models`)."""
    from mri_translate.bundle import INFERENCE_SETTINGS, average_models, compose_model
    from mri_translate.config import load_config

    for run in (t1_to_t2, t2_to_t1):  # refused before anything is written
        if not (run / "configs" / "train.json").is_file():
            raise SystemExit(f"{run}: not a run folder (no configs/train.json); --compose takes run folders")
    if settings is None:
        models = {direction: load_config(RECIPES[direction].config).model for direction in ("t1-to-t2", "t2-to-t1")}
        settings = {direction: {key: getattr(model, key) for key in INFERENCE_SETTINGS}
                    for direction, model in models.items()}
    model = compose_model(t1_to_t2, t2_to_t1, out / "models" / "model.pt", inference_settings=settings)
    if average_with:
        average_models(model, average_with, model)
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
    print(f"composed {model}: G_AB from {t1_to_t2}, G_BA from {t2_to_t1}"
          + (f", averaged with {', '.join(map(str, average_with))}" if average_with else ""))


def install(run: Path) -> None:
    """Copy the run's chosen model into the bundle template. The template's ``configs/metadata.json`` (version,
    changelog, ``eval_metrics``, data source) is the release's own and is edited with it, not copied from a run."""
    template = ROOT / "bundles" / "mri_cyclegan"
    shutil.copyfile(run / "models" / "model.pt", template / "models" / "model.pt")
    print(f"installed {run / 'models' / 'model.pt'} into {template}")


if __name__ == "__main__":
    main()
