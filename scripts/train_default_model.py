"""Train the model that ships in bundles/mri_cyclegan/models/model.pt on REAL scans whose licence allows it.

Data (../shared/data/volumes; sources and licences in its README and in the bundle's docs/data_license.txt):
- domain A (T1w): the 10 BraTS 2018 T1w (skull-stripped; the MONAI model zoo ships BraTS 2018-trained models),
  seg3d_mr (MIT), uih (BSD-2), nichart_trio (NITRC sample data), adi_brain (Apache-2.0), TCGA-FG-6692 (CC BY 3.0);
- domain B (T2w): adi_brain (Apache-2.0), TCGA-FG-6692 (CC BY 3.0); torchio_fpg is left out: the contrast
  check (mri_translate.contrast_check) finds it FLAIR-like (dark CSF), not T2w;
- pairs (mixed mode, ``--paired --register``): adi_brain and TCGA-FG-6692, each subject's two scans aligned
  rigidly (mutual information) onto the grid of its thicker-sliced scan;
- never used: chris_rorden (CC BY-NC), brainix, arc_m2208 and niivue_register (licence not stated), and the
  evaluation volumes tcga_du_7294, brats23_gli_00000 and avg152;
- validation (model selection only, never trained on): brats23_gli_00000.

    python scripts/train_default_model.py --out runs/default-model [--iterations 4000] [--install]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "volumes"
REAL = SHARED / "train_real"
T1W = [*sorted(REAL.glob("brats18_*_T1w.nii.gz")), REAL / "seg3d_mr_T1w.nii.gz", REAL / "uih_T1w.nii.gz",
       REAL / "nichart_trio_T1w.nii.gz"]
T2W: list[Path] = []  # besides the pairs' T2w
#: subject -> (T1w, T2w) of one session, on different grids (registered before training)
PAIRS = {"adi_brain": (REAL / "adi_brain_T1w.nii.gz", REAL / "adi_brain_T2w.nii.gz"),
         "tcga_fg_6692": (SHARED / "tcga_fg_6692_native" / "t1_ax_se.nii.gz",
                          SHARED / "tcga_fg_6692_native" / "t2_ax_tse.nii.gz")}
VALIDATION = (SHARED / "brats23_gli_00000" / "t1.nii.gz", SHARED / "brats23_gli_00000" / "t2.nii.gz")


def sources(folder: Path) -> tuple[list[Path], list[Path]]:
    """The T1w and T2w lists; each pair linked into ``folder`` as ``<subject>_T1w/_T2w`` so that
    ``--paired`` matches them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    t1, t2 = list(T1W), list(T2W)
    for subject, (a, b) in PAIRS.items():
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
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--install", action="store_true", help="copy models/model.pt into the bundle template")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--install-only", action="store_true", help="install an already trained --out and stop")
    args = parser.parse_args()

    out = Path(args.out)
    if args.install_only:
        install(out)
        return
    t1, t2 = sources(out.parent / f"{out.name}-pairs")
    train(t1, t2, out, config=ROOT / "configs" / "default-model.yaml", overrides={"train": {"iterations": args.iterations}},
          resume=args.resume, overwrite=not args.resume, progress_bar=False, val=[VALIDATION], paired=True,
          register=True)
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
