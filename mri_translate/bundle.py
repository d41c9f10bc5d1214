"""A run directory is a MONAI bundle: this module writes it (configs, docs, ``models/model.pt``) from the
template in ``bundles/mri_cyclegan/`` and finds the two domains in a bundle ``dataset_dir``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from . import __version__
from .config import RunConfig
from .errors import InputError, ModelError
from .io import NIFTI_SUFFIXES, atomic_path, list_images_2d, suffix
from .model_file import (DIRECTIONS, MEMBERS_KEY, MODEL_FORMAT, TEMPLATE, direction_state, resolve_model_path,
                         sha256)



def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_run_bundle(run_dir: Path, config: RunConfig, sources: dict, normalization: dict) -> None:
    """Write ``configs/`` (metadata, train, inference, logging) and ``docs/README.md`` of a run.

    ``configs/train.json`` is the template's with this run's resolved configuration and sources filled in,
    so the bundle reproduces the run; ``metadata.json`` states the 2.5D input/output format: this run's k
    channels, and the template's ``spatial_shape`` (``"16*(n+1)"``: the network takes any multiple of 16 from
    32 on, not only the training crop).
    """
    configs = run_dir / "configs"
    metadata = json.loads((TEMPLATE / "configs" / "metadata.json").read_text())
    k, crop = config.model.k, config.data.crop
    for part, key, what in (("inputs", "image", "slice"), ("outputs", "pred", "translated slice")):
        entry = metadata["network_data_format"][part][key]
        entry["num_channels"] = k
        entry["channel_def"] = {str(c): f"{what} i{c - k // 2:+d}" if c != k // 2 else f"{what} i"
                                for c in range(k)}
    import monai
    import numpy

    metadata["version"] = __version__
    metadata.update(monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
                    numpy_version=numpy.__version__)
    metadata["eval_metrics"] = {}  # the template's are the shipped model's scores, not this run's
    _write_text(configs / "metadata.json", json.dumps(metadata, indent=2, allow_nan=False) + "\n")
    train_config = json.loads((TEMPLATE / "configs" / "train.json").read_text())
    train_config["config"] = config.to_dict()
    train_config["sources"] = sources  # train_bundle trains on these when no dataset_dir is given
    _write_text(configs / "train.json", json.dumps(train_config, indent=2, allow_nan=False) + "\n")
    for name in ("inference.json", "logging.conf"):  # inference rebuilds the network from models/model.pt
        _write_text(configs / name, (TEMPLATE / "configs" / name).read_text())
    license_file = TEMPLATE / "docs" / "data_license.txt"
    text = (TEMPLATE / "docs" / "README.md").read_text()
    loss = config.loss
    text += "\n## This run\n\n" + "\n".join([
        f"- T1w sources (domain A): {', '.join(sources['t1'])}",
        f"- T2w sources (domain B): {', '.join(sources['t2'])}",
        f"- k = {k} slices per slab, crop {crop} px, {config.train.iterations} iterations",
        f"- intensity ranges mapped to [-1, 1]: A {normalization['A']}, B {normalization['B']}",
        f"- loss weights: adversarial {loss.adversarial}, cycle {loss.lambda_cycle}, contrast prior {loss.prior} "
        f"({'constant' if math.isinf(loss.prior_fraction) else f'fading to 0 over {loss.prior_fraction} of the run'}), "
        f"supervised L1 {loss.paired}; generator weight average (train.ema): {config.train.ema or 'off'}",
        "- configuration: `configs/train.json` (`config`); pictures: `progress.gif`, `losses.png`",
    ]) + "\n"
    _write_text(run_dir / "docs" / "README.md", text)
    if license_file.exists():
        shutil.copyfile(license_file, run_dir / "docs" / "data_license.txt")
    shutil.copyfile(TEMPLATE / "LICENSE", run_dir / "LICENSE")  # a bundle's licence, at its root (model zoo)


def export_state(normalization: dict, spacing: float | None = None, standardizers=(None, None),
                 skull_stripped: dict | None = None) -> dict:
    """What a model file and a checkpoint carry besides weights and configuration: how inference must prepare
    a scan and map its translation back, exactly as in training.

    - ``normalization``: the percentiles of :class:`~mri_translate.transforms.RobustNormalize` and, per domain,
      the intensity range ``A``/``B`` outputs are mapped back to and the histogram ``histogram_A``/``histogram_B``;
    - ``spacing``: the in-plane pixel size (mm) scans are resampled to (``None``: none);
    - ``standardize``: ``{"A": ..., "B": ...}`` landmark standardisers
      (:meth:`~mri_translate.standardize.LandmarkStandardizer.to_dict`), or ``None``;
    - ``skull_stripped``: ``{"A": bool, "B": bool}``, whether every training scan of a domain was skull-stripped
      (convert warns when a whole-head scan meets a model that only saw brains), or ``None``.
    """
    from .transforms import RobustNormalize

    defaults = RobustNormalize()
    a, b = standardizers
    return {"normalization": {"lower": defaults.lower, "upper": defaults.upper,
                              **{k: list(v) for k, v in normalization.items()}},
            "spacing": spacing,
            "standardize": {"A": a.to_dict(), "B": b.to_dict()} if a is not None and b is not None else None,
            "skull_stripped": dict(skull_stripped) if skull_stripped is not None else None}


#: what a model file holds per direction besides the weights: laid over the top level by :func:`direction_state`
DIRECTION_KEYS = ("config", "normalization", "spacing", "standardize", "skull_stripped")
#: ``model`` settings used at inference only, with their types (chosen after training, set per direction by
#: :func:`compose_model`)
INFERENCE_SETTINGS = {"inverted_weight": float, "guided_radius_mm": float, "mirror": bool}


def compose_model(t1_to_t2, t2_to_t1, out, inference_settings: dict | None = None) -> Path:
    """One model file whose two directions come from two runs: ``G_AB`` and the top level (configuration,
    normalisation, standardisers, skull-stripping record, iteration) from the run or model file ``t1_to_t2``,
    ``G_BA`` from ``t2_to_t1`` with that run's own :data:`DIRECTION_KEYS` under ``directions["t2-to-t1"]``, and
    both files' SHA-256 under ``composed_from``, stamped with this package's version. For when one recipe suits
    each direction best.
    ``inference_settings`` (``{direction: {key: value}}``, keys of ``model`` used at inference only:
    ``inverted_weight``, ``guided_radius_mm``, ``mirror``) sets them for a direction, chosen after training (e.g. by
    leave-one-out); the weights are untouched.

    Raises:
        InputError: a path that is no run or model file. ModelError: not an mri-translate model.
    """
    from .contrast_check import CHECKS_KEY
    from .runtime import read_checkpoint

    paths = {"t1-to-t2": resolve_model_path(t1_to_t2), "t2-to-t1": resolve_model_path(t2_to_t1)}
    first, second = (read_checkpoint(path) for path in paths.values())
    state = {k: v for k, v in first.items()
             if k not in ("directions", "composed_from", CHECKS_KEY, MEMBERS_KEY, "averaged_with")}
    reverse = direction_state(second, "t2-to-t1")
    state["G_BA"] = reverse["G_BA"]
    state["directions"] = {"t2-to-t1": {k: v for k, v in reverse.items() if k in DIRECTION_KEYS}}
    state["composed_from"] = {direction: sha256(path) for direction, path in paths.items()}
    state["version"] = __version__
    configs = {"t1-to-t2": state["config"], "t2-to-t1": state["directions"]["t2-to-t1"]["config"]}
    for direction, settings in (inference_settings or {}).items():
        unknown = set(settings) - set(INFERENCE_SETTINGS)
        if unknown:
            raise ValueError(f"not inference settings of a model: {sorted(unknown)}")
        configs[direction]["model"].update({key: INFERENCE_SETTINGS[key](value) for key, value in settings.items()})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def average_models(model, others, out) -> Path:
    """The model file ``model`` (a run or model file) written to ``out`` with ``others`` as its members in both
    directions: each direction's generator and :data:`DIRECTION_KEYS` of each other model (its own inference
    settings included) under :data:`~mri_translate.model_file.MEMBERS_KEY`, the files' SHA-256 under
    ``averaged_with``, and this package's version. :class:`~mri_translate.inference.Translator` then averages
    their translations with this model's (:meth:`~mri_translate.inference.Translator.average_members`): two models
    trained on different data err in different places. The weights are untouched.

    Raises:
        InputError: a path that is no run or model file. ModelError: not an mri-translate model, or a model
        that has members itself.
    """
    from .runtime import read_checkpoint

    state = read_checkpoint(resolve_model_path(model))
    members, checksums = dict(state.get(MEMBERS_KEY) or {}), list(state.get("averaged_with") or [])
    for other in others:
        path = resolve_model_path(other)
        member = read_checkpoint(path)
        if member.get(MEMBERS_KEY):
            raise ModelError(f"{path}: has members of its own; average with the models it was made of")
        for direction, generator in DIRECTIONS.items():
            own = direction_state(member, direction)
            members.setdefault(direction, []).append(
                {generator: own[generator], **{k: own[k] for k in DIRECTION_KEYS if k in own}})
        checksums.append(sha256(path))
    state.update({MEMBERS_KEY: members, "averaged_with": checksums, "version": __version__})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def export_model(trainer, run_dir: Path) -> Path:
    """Write ``models/model.pt``: both generators' weights, the configuration, the trainer's
    :attr:`~mri_translate.engine.CycleGANTrainer.export_state` (:func:`export_state`) and the iteration; plain
    tensors and numbers only (loads with ``weights_only=True``)."""
    state = {
        "format": MODEL_FORMAT,
        **{name: net.state_dict() for name, net in trainer.generators.items()},
        "config": trainer.config.to_dict(),
        **trainer.export_state,
        "iteration": int(trainer.state.iteration),
        "version": __version__,
    }
    path = run_dir / "models" / "model.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def find_domains(dataset_dir) -> tuple[list[Path], list[Path]]:
    """T1w and T2w sources in a bundle ``dataset_dir``.

    Accepted layouts: two sub-folders named like the case study (``TrainT1``/``TrainT2``, or ``T1``/``T2``),
    or a BIDS-like tree with ``*_T1w.nii[.gz]`` and ``*_T2w.nii[.gz]`` files.

    Raises:
        InputError: the folder is missing or neither layout is found.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(root, "dataset_dir is not a folder")
    for a, b in (("TrainT1", "TrainT2"), ("T1", "T2"), ("t1", "t2")):
        if (root / a).is_dir() and (root / b).is_dir():
            return [root / a], [root / b]
    found = {}
    for contrast in ("T1w", "T2w"):
        found[contrast] = sorted(p for p in root.rglob(f"*_{contrast}.nii*")
                                 if suffix(p) in NIFTI_SUFFIXES and not p.name.startswith("."))
    if found["T1w"] and found["T2w"]:
        return found["T1w"], found["T2w"]
    if list_images_2d(root):
        raise InputError(root, "holds 2D images directly; put T1w and T2w images in sub-folders TrainT1/ and TrainT2/")
    raise InputError(root, "found neither TrainT1/ + TrainT2/ folders nor *_T1w.nii.gz + *_T2w.nii.gz files")
