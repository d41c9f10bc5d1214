"""``mri-translate demo``: the main job on a fresh machine, offline, in a few minutes on 2 CPU cores.

Synthetic paired subjects are generated with what a histogram trick cannot fake (deep grey nuclei that are
cortex-dark on the T1w but darker than white matter on the T2w, and white-matter lesions that are dark on the
T1w and bright on the T2w; :mod:`mri_translate.synthetic`); a CycleGAN trains on T1w of some subjects and T2w
of OTHER subjects (unpaired); a held-out subject's T1w is translated by that model and by the default model that
ships with the package. The demo ends with one table (``scores.md``: each translation and the no-learning
baseline against the true T2w, in the brain and inside the lesions, with the lesions' contrast ratio as
``evaluate --region`` measures it) and one picture (``sub-05_comparison.png``: input | demo model | shipped
model | truth).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from . import metrics
from .config import load_config
from .convert import convert_file
from .errors import InputError
from .inference import Translator
from .io import atomic_path
from .synthetic import write_dataset
from .train import train

PRESET = Path(__file__).resolve().parents[1] / "configs" / "cpu-quick.yaml"
BASELINE = "no-learning baseline (inverted T1w, histogram-matched)"
#: Pixels of the picture per panel side (at least; the 2 mm slices are enlarged to it).
PANEL_PIXELS = 320


def run_demo(out="demo_output", iterations: int = 1000, overwrite: bool = False):
    """Run the demo; yields the lines it reports (paths, then the table of scores).

    Raises:
        InputError: ``out`` holds an earlier demo and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "already holds files; use --overwrite or another --out")
        shutil.rmtree(out)
    data = write_dataset(out / "data", n_subjects=5, resolution=2.0, seed=0, deep_grey=True, lesions=True)
    yield f"synthetic subjects (T1w, T2w, brain and lesion masks; deep grey nuclei, lesions): {data['root']}"
    t1, t2 = data["t1"][:2], data["t2"][2:4]          # unpaired: T1w of sub-01/02, T2w of sub-03/04
    config = load_config(PRESET if PRESET.exists() else None, {"train": {"iterations": iterations}})
    run = train(t1, t2, out / "run", config=config, progress_bar=False).run_dir
    yield f"trained {iterations} iterations: run bundle {run} (progress.gif, losses.png, models/model.pt)"
    source, truth = _load(data["t1"][4]), _load(data["t2"][4])
    brain, lesions = _load(data["mask"][4]) > 0, _load(data["lesions"][4]) > 0
    baseline = metrics.baseline_inverted_histogram_matched(source, brain, _load(t2[0]), _load(data["mask"][2]) > 0)
    translations = {}
    for name, model, tag in ((f"this demo's model ({iterations} iterations)", run, "demo"),
                             ("the shipped model", None, "default")):
        translated = out / f"sub-05_desc-synthetic_T2w_{tag}.nii.gz"
        gif = out / f"sub-05_sweep_{tag}.gif"
        convert_file(Translator.from_run(model, device="cpu"), data["t1"][4], translated, gif=gif,
                     reference=data["t2"][4])
        yield f"held-out sub-05 translated by {name}: {translated} and {gif}"
        translations[name] = _load(translated)
    scores = {name: score(image, truth, brain, lesions)
              for name, image in {BASELINE: baseline, **translations}.items()}
    table = score_table(scores, metrics.region_contrast(truth, lesions, brain))
    with atomic_path(out / "scores.md") as tmp:
        tmp.write_text(table + "\n")
    picture = out / "sub-05_comparison.png"
    write_comparison(picture, source, translations, truth, brain, lesions, scores)
    yield f"the table: {out / 'scores.md'}; the picture (input | demo model | shipped model | truth): {picture}"
    yield from table.splitlines()


def _load(path) -> np.ndarray:
    import nibabel as nib

    return nib.load(str(path)).get_fdata()


def score(image, truth, brain, lesions) -> dict:
    """In-brain PSNR / SSIM and in-lesion PSNR / SSIM / contrast ratio of one translation (see :mod:`metrics`)."""
    inside = metrics.region_metrics(image, truth, brain, lesions)
    whole = metrics.paired_metrics(image, truth, brain)["mask"]
    return {"psnr": whole["psnr"], "ssim": whole["ssim_3d"], "lesion_psnr": inside["psnr"],
            "lesion_ssim": inside["ssim_3d"], "contrast_ratio": inside["contrast_ratio"]}


def score_table(scores: dict, truth_contrast: float) -> str:
    """The demo's table (Markdown): one row per translation of ``scores`` (:func:`score`), then how to read it."""
    lines = ["| sub-05 T1w -> T2w (held out) | brain PSNR dB | brain SSIM | lesions PSNR dB | lesions SSIM "
             "| lesion contrast ratio |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['lesion_psnr']:.2f} | {s['lesion_ssim']:.3f} "
              f"| {s['contrast_ratio']:.2f} |" for name, s in scores.items()]
    lines.append(f"\nEach image scaled by its own 99.5th percentile in the brain. Lesion contrast = the lesions' mean "
                 f"over the median of the brain around them (evaluate --region); ratio = translation's / truth's "
                 f"({truth_contrast:.2f}), 1 = faithful.")
    return "\n".join(lines)


def write_comparison(path, source, translations: dict, truth, brain, lesions, scores: dict) -> None:
    """One PNG: the axial slice with the most lesion voxels of input | each translation | truth, each panel
    :data:`PANEL_PIXELS` wide and titled, the lesions outlined in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .visualize import display_slice

    z = int(np.argmax(lesions.sum(axis=(0, 1))))
    panels = [("input T1w", source)] + [
        (f"{name}\nbrain {scores[name]['psnr']:.1f} dB, lesion contrast x{scores[name]['contrast_ratio']:.2f}", image)
        for name, image in translations.items()] + [("truth T2w", truth)]
    rows, cols = display_slice(truth, z).shape
    width = PANEL_PIXELS / 100
    figure = Figure(figsize=(width * len(panels), width * rows / cols + 0.9), dpi=100)
    FigureCanvasAgg(figure)
    outline = display_slice(lesions.astype(float), z)
    for i, (title, image) in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), i)
        axes.imshow(display_slice(metrics.scale_for_comparison(image, brain), z), cmap="gray", vmin=0, vmax=1,
                    interpolation="bilinear")
        axes.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
        axes.set_title(title, fontsize=9)
        axes.axis("off")
    figure.suptitle(f"sub-05 (held out), axial slice {z}: T1w -> T2w; red: lesions", fontsize=10)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82, wspace=0.03)
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, format="png")
