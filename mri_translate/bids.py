"""The BIDS App entry point: ``mri-translate bids BIDS_DIR OUTPUT_DIR participant|group [options]``.

It follows the BIDS Apps conventions (Gorgolewski et al., PLoS Comput Biol 2017): the dataset, the output
folder and the analysis level are positional; ``--participant-label`` (with or without ``sub-``) and
``--session-label`` pick what to process, so a cluster array runs one participant per task. The
participant level translates every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` (``*_T2w`` for ``t2-to-t1``) into
``OUTPUT_DIR/sub-*/[ses-*/]anat/*_desc-synthetic_T2w.nii.gz`` with a JSON sidecar (``Sources`` as BIDS URIs,
``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``; model SHA-256, software versions) and writes
``dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy``, ``DatasetLinks`` naming ``raw``):
:func:`mri_translate.convert.plan_batch` is the index, :func:`~mri_translate.convert.convert_batch` does the
work, so finished files are skipped on a rerun. The group level has nothing to aggregate and says so.
``--brain-masks DIR`` takes each scan's brain mask from a derivative dataset (e.g. fMRIPrep's or a skull
stripper's, on the scan's own grid) by the BIDS Derivatives name :func:`brain_mask_path` gives, so a whole-head
scan is translated as the skull-stripped brain the shipped model expects.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .errors import InputError
from .model_file import CONTRASTS

ANALYSIS_LEVELS = ("participant", "group")
GROUP_LEVEL_NOTE = "group level: nothing to do (mri-translate writes every output at the participant level)"


def _labels(values, prefix: str) -> list[str] | None:
    """``["sub-01", "02"]`` -> ``["01", "02"]``; ``None`` stays ``None`` (= all)."""
    return None if not values else [v[len(prefix):] if v.startswith(prefix) else v for v in map(str, values)]


def _entity(path: Path, root: Path, prefix: str) -> str | None:
    """The label of the ``sub-``/``ses-`` folder that holds ``path`` below ``root``, or ``None``."""
    return next((part[len(prefix):] for part in path.relative_to(root).parts[:-1] if part.startswith(prefix)), None)


def select(pairs, root, participants=None, sessions=None) -> list[tuple[Path, Path]]:
    """Keep the ``(input, output)`` pairs whose input lies under ``sub-<label>`` for a label in
    ``participants`` and, when ``sessions`` is given, under ``ses-<label>`` for a label in ``sessions``.

    Raises:
        InputError: a requested participant has no folder in the dataset.
    """
    root = Path(root)
    participants, sessions = _labels(participants, "sub-"), _labels(sessions, "ses-")
    if participants is not None:
        present = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
        missing = [label for label in participants if label not in present]
        if missing:
            raise InputError(root, f"no participant {', '.join(missing)} (found: {', '.join(present) or 'none'})")
    return [(source, output) for source, output in pairs
            if (participants is None or _entity(source, root, "sub-") in participants)
            and (sessions is None or _entity(source, root, "ses-") in sessions)]


def brain_mask_path(source: Path, bids_dir, masks_dir) -> Path:
    """The brain mask of ``source`` in the derivative dataset ``masks_dir``: the same ``sub-*/[ses-*/]anat``
    folder and entities, the suffix replaced by ``desc-brain_mask`` (``sub-01_T1w.nii.gz`` ->
    ``sub-01_desc-brain_mask.nii.gz``; ``.nii`` too).

    Raises:
        InputError: no such mask (named, with the scan it is for).
    """
    relative = Path(source).relative_to(bids_dir)
    stem = relative.name.split(".")[0].rsplit("_", 1)[0]
    candidates = [Path(masks_dir) / relative.parent / f"{stem}_desc-brain_mask{ext}" for ext in (".nii.gz", ".nii")]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise InputError(candidates[0], f"no brain mask for {relative} (expected this file in --brain-masks)")
    return found


def run_bids_app(bids_dir, output_dir, analysis_level: str = "participant", participant_labels=None,
                 session_labels=None, model=None, direction: str = "t1-to-t2", device: str = "auto",
                 batch_size: int | None = None, overwrite: bool = False, progress: bool = True, force: bool = False,
                 qc: bool = False, strict: bool = False, brain_masks=None):
    """Run the BIDS App at one analysis level.

    Args:
        bids_dir: a BIDS dataset (``dataset_description.json`` and ``sub-*`` folders).
        output_dir: the derivative dataset to write (e.g. ``BIDS_DIR/derivatives/mri-translate``).
        analysis_level: ``participant`` (translate) or ``group`` (nothing to do: returns ``None``).
        participant_labels: e.g. ``["01", "sub-02"]``; ``None`` = every participant.
        session_labels: e.g. ``["pre"]``; ``None`` = every session (and files outside sessions).
        model, direction, device, batch_size: see :meth:`~mri_translate.inference.Translator.from_run`.
        overwrite: redo finished outputs.
        progress: progress bar.
        force: skip the contrast check of each input (see :mod:`mri_translate.contrast_check`).
        qc, strict: reference-free checks in each sidecar; ``strict`` also refuses a translation outside the
            model's training domain or a whole-head scan for a brain-only model (that file fails, the others go on).
        brain_masks: a derivative dataset holding each scan's brain mask (:func:`brain_mask_path`): every scan
            is translated within its mask (``convert --mask``), named ``bids:masks:...`` in ``Sources`` (linked as
            ``masks`` in ``DatasetLinks``); a scan without one fails, the others go on.

    Returns:
        The :class:`~mri_translate.convert.BatchReport` of the participant level, ``None`` for the group level.

    Raises:
        InputError: not a BIDS dataset, output folder equal to the dataset, unknown level or participant,
            nothing to translate, ``brain_masks`` not a folder.
    """
    from .convert import convert_batch, domain_check_options, plan_batch, write_derivative_description
    from .inference import Translator

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not (bids_dir / "dataset_description.json").is_file() or not any(bids_dir.glob("sub-*")):
        raise InputError(bids_dir, "not a BIDS dataset (expected dataset_description.json and sub-* folders)")
    if analysis_level not in ANALYSIS_LEVELS:
        raise InputError(analysis_level, f"unknown analysis level (expected {' or '.join(ANALYSIS_LEVELS)})")
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError(output_dir, "the output folder must differ from the BIDS dataset (e.g. "
                                     f"{bids_dir / 'derivatives' / 'mri-translate'})")
    if brain_masks is not None and not Path(brain_masks).is_dir():
        raise InputError(brain_masks, "--brain-masks is not a folder (a derivative dataset of *_desc-brain_mask)")
    if analysis_level == "group":
        return None
    pairs = select(plan_batch(bids_dir, output_dir, direction), bids_dir, participant_labels, session_labels)
    if not pairs:
        raise InputError(bids_dir, f"no sub-*/[ses-*/]anat/*_{CONTRASTS[direction][0]}.nii[.gz] for the selected "
                                   "participants and sessions")
    translator = Translator.from_run(model, direction, device, batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    links = write_derivative_description(output_dir, direction, bids_dir,
                                         **({} if brain_masks is None else {"masks": brain_masks}))
    mask_for = None if brain_masks is None else partial(brain_mask_path, bids_dir=bids_dir, masks_dir=brain_masks)
    return convert_batch(translator, pairs, overwrite=overwrite, progress=progress, force=force, mask_for=mask_for,
                         links=links, **domain_check_options(translator, qc, strict))
