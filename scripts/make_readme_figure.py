"""The README's picture: a model translating a real scan it never saw, beside the real image.

    python scripts/make_readme_figure.py [--case ../shared/data/volumes/mslub_p07] [--out docs/figures/...png]
                                         [--model RUN_OR_MODEL_FILE]

MSLUB patient 07 (the MSLUB cross-sectional dataset, Lesjak et al., Neuroinformatics 2017; CC BY): skull-stripped,
co-registered T1w and T2w with an expert consensus lesion mask. A model that never trained on the patient (``--model``:
a leave-one-subject-out run of the shipped recipe, as the README's figure uses; by default the shipped model
bundles/mri_cyclegan/models/model.pt) translates the T1w to T2w exactly as ``mri-translate convert`` does
(``convert_file``); the figure shows one axial slice (:data:`SLICE`, or ``--slice``), three panels titled input
T1w | synthetic T2w | real T2w, each image scaled by its own 99.5th percentile inside the brain (as ``evaluate``
scores). The scan itself never enters the repository, only this figure derived from it (with its attribution in
the README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT.parent / "shared" / "data" / "volumes" / "mslub_p07"
OUT = ROOT / "docs" / "figures" / "mslub_p07_t1_to_t2.png"
TITLES = ("input T1w", "synthetic T2w", "real T2w")
#: axial slice shown for mslub_p07: periventricular white-matter lesions beside the lateral ventricles, where MS
#: lesions are read on a T2w (65 lesion voxels, the second most of any slice; the most, 68 at slice 61, lie low
#: in the temporal lobes); ``--slice -1`` takes the slice with the most lesion voxels instead
SLICE = 96


def ras_array(path) -> np.ndarray:
    """A scan as a RAS array (X, Y, Z), the orientation ``visualize.display_slice`` expects."""
    from mri_translate.io import load_volume
    from mri_translate.transforms import to_canonical

    return to_canonical(load_volume(path))[0].numpy()


def make_figure(case: Path, out: Path, z: int = SLICE, model=None) -> Path:
    """Translate ``case/t1.nii.gz`` with ``model`` (a run or model file; ``None``: the shipped model) and write
    the three-panel PNG of axial slice ``z`` (RAS index; -1: the slice with the most lesion voxels) to ``out``."""
    from mri_translate import metrics
    from mri_translate.convert import convert_file
    from mri_translate.inference import Translator
    from mri_translate.visualize import display_slice, figure_pixels, labelled_montage, write_png

    translator = Translator.from_run(model, "t1-to-t2", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synthetic_T2w.nii.gz"
        sidecar = convert_file(translator, case / "t1.nii.gz", synthetic)
        volumes = [ras_array(case / "t1.nii.gz"), ras_array(synthetic), ras_array(case / "t2.nii.gz")]
    lesions = ras_array(case / "lesions.nii.gz") > 0.5
    brain = metrics.auto_mask(volumes[2])
    z = int(np.argmax(lesions.sum(axis=(0, 1)))) if z < 0 else z
    panels = [display_slice(metrics.scale_for_comparison(v, brain), z) for v in volumes]
    panels = [(np.clip(p, 0, 1) * 255).astype(np.uint8) for p in panels]
    figure = labelled_montage([panels], TITLES, [f"MSLUB p07, axial {z}"], min_size=400)
    write_png(figure_pixels(figure), out)
    print(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: axial slice {z} "
          f"({int(lesions[..., z].sum())} lesion voxels), model {sidecar.get('ModelSHA256', '')[:12]}, "
          f"precision {sidecar.get('Parameters', {}).get('precision')}, {sidecar.get('ElapsedSeconds')} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=str(CASE), help="folder with t1.nii.gz, t2.nii.gz and lesions.nii.gz")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--slice", type=int, default=SLICE, help="axial slice (-1: the most lesion voxels)")
    parser.add_argument("--model", help="run or model file (default: the shipped model)")
    args = parser.parse_args()
    if not Path(args.case, "t1.nii.gz").is_file():
        sys.exit(f"{args.case}: no t1.nii.gz (the MSLUB case lives in ../shared/data/volumes/mslub_p07)")
    make_figure(Path(args.case), Path(args.out), args.slice, args.model)


if __name__ == "__main__":
    main()
