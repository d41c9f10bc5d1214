"""``mri-translate demo``: the main job on a fresh machine, offline, in a few minutes on 2 CPU cores.

Synthetic paired subjects are generated; a CycleGAN trains on T1w of some subjects and T2w of OTHER
subjects (unpaired); a held-out subject's T1w is translated by that model and by the default model that
ships with the package, and both are compared with its true T2w inside the brain, beside the no-learning
baseline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import load_config
from .convert import convert_file
from .errors import InputError
from .inference import Translator
from .synthetic import write_dataset
from .train import train

PRESET = Path(__file__).resolve().parents[1] / "configs" / "cpu-quick.yaml"


def run_demo(out="demo_output", iterations: int = 1000, overwrite: bool = False):
    """Run the demo; yields the lines it reports (paths and in-brain scores).

    Raises:
        InputError: ``out`` holds an earlier demo and ``overwrite`` is False.
    """
    import nibabel as nib

    from . import metrics

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "already holds files; use --overwrite or another --out")
        shutil.rmtree(out)
    data = write_dataset(out / "data", n_subjects=5, resolution=2.0, seed=0)
    yield f"synthetic subjects (T1w, T2w, brain mask): {data['root']}"
    t1, t2 = data["t1"][:2], data["t2"][2:4]          # unpaired: T1w of sub-01/02, T2w of sub-03/04
    config = load_config(PRESET if PRESET.exists() else None, {"train": {"iterations": iterations}})
    run = train(t1, t2, out / "run", config=config, progress_bar=False).run_dir
    yield f"trained {iterations} iterations: run bundle {run} (progress.gif, losses.png, models/model.pt)"
    held_out_t1, held_out_t2, mask = data["t1"][4], data["t2"][4], data["mask"][4]
    brain = nib.load(str(mask)).get_fdata() > 0
    truth = nib.load(str(held_out_t2)).get_fdata()
    baseline = metrics.baseline_inverted_histogram_matched(
        nib.load(str(held_out_t1)).get_fdata(), brain, nib.load(str(t2[0])).get_fdata(),
        nib.load(str(data["mask"][2])).get_fdata() > 0)
    scores = {"no-learning baseline": metrics.paired_metrics(baseline, truth, brain)["mask"]}
    for name, model in (("this demo's model", run), ("the shipped default model", None)):
        translated = out / f"sub-05_desc-synthetic_T2w_{'demo' if model else 'default'}.nii.gz"
        gif = out / f"sub-05_sweep_{'demo' if model else 'default'}.gif"
        convert_file(Translator.from_run(model, device="cpu"), held_out_t1, translated, gif=gif, reference=held_out_t2)
        yield f"held-out sub-05 translated by {name}: {translated} and {gif}"
        scores[name] = metrics.paired_metrics(nib.load(str(translated)).get_fdata(), truth, brain)["mask"]
    for name, score in scores.items():
        yield f"inside the brain, {name}: PSNR {score['psnr']:.2f} dB, SSIM {score['ssim_3d']:.3f}"
