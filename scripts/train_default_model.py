"""Train the model that ships in bundles/mri_cyclegan/models/model.pt, from data whose licence allows it.

Domain A (T1w) and domain B (T2w) come from DIFFERENT synthetic subjects (unpaired, as in real use), at
1, 1.5 and 2 mm so the model sees several scales; with --tcga, the native TCGA-FG-6692 T1/T2 scans in
../shared/data (CC BY 3.0, attributed in the bundle's docs/data_license.txt) are added. Held-out subjects
for evaluation use seeds >= 1000 (scripts/bench_quality.py).

    python scripts/train_default_model.py --out runs/default-model [--iterations 8000] [--tcga] [--install]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mri_translate.synthetic import write_dataset
from mri_translate.train import train

ROOT = Path(__file__).resolve().parents[1]
TCGA = ROOT.parent / "shared" / "data" / "volumes" / "tcga_fg_6692_native"


def unpaired_sources(folder: Path, subjects: int = 6, tcga: bool = False) -> tuple[list[Path], list[Path]]:
    """T1w and T2w training sources: synthetic subjects at 1, 1.5 and 2 mm, even seeds giving the T1w and odd
    seeds the T2w (so the two domains never share anatomy), plus the native TCGA-FG-6692 scans if asked."""
    t1, t2 = [], []
    for i in range(subjects):
        resolution = (1.0, 1.5, 2.0)[i % 3]
        t1 += write_dataset(folder / f"a{i}", 1, resolution, seed=2 * i)["t1"]
        t2 += write_dataset(folder / f"b{i}", 1, resolution, seed=2 * i + 1)["t2"]
    if tcga:
        t1.append(TCGA / "t1_ax_se.nii.gz")
        t2.append(TCGA / "t2_ax_tse.nii.gz")
    return t1, t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default-model")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--subjects", type=int, default=6, help="synthetic subjects per domain")
    parser.add_argument("--tcga", action="store_true", help="add the native TCGA-FG-6692 scans (CC BY 3.0)")
    parser.add_argument("--install", action="store_true", help="copy models/model.pt into the bundle template")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--install-only", action="store_true", help="install an already trained --out and stop")
    args = parser.parse_args()

    out = Path(args.out)
    if args.install_only:
        install(out)
        return
    t1, t2 = unpaired_sources(out.parent / f"{out.name}-data", args.subjects, args.tcga)
    overrides = {"train": {"iterations": args.iterations}}
    train(t1, t2, out, config=ROOT / "configs" / "default-model.yaml", overrides=overrides, resume=args.resume,
          overwrite=not args.resume, progress_bar=False)
    if args.install:
        install(out)


def install(run: Path) -> None:
    """Copy the run's model and the configs that describe its network into the bundle template."""
    template = ROOT / "bundles" / "mri_cyclegan"
    shutil.copyfile(run / "models" / "model.pt", template / "models" / "model.pt")
    for name in ("inference.json", "metadata.json"):
        shutil.copyfile(run / "configs" / name, template / "configs" / name)
    print(f"installed {run / 'models' / 'model.pt'} and its configs into {template}")


if __name__ == "__main__":
    main()
