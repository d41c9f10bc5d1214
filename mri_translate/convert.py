"""The ``convert`` verb: one scan, a folder, a glob or a BIDS dataset in; translated NIfTI (or 2D images)
out, each with the input's geometry, a JSON sidecar and optionally a GIF sweep.

Outputs are written atomically, the sidecar last, so a file counts as finished only when both exist: an
interrupted batch restarted with the same command skips finished files and redoes the rest.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.transforms import MapTransform

from . import __version__
from .contrast_check import contrast_record, judge_domain, model_checks
from .errors import InputError, MriTranslateError
from .inference import CheckedTranslation, Translator, translate_checked
from .io import (IMAGE_SUFFIXES, NIFTI_SUFFIXES, atomic_path, atomic_paths, dicom_series, is_dicom_file, json_text,
                 list_images_2d, load_volume, remove_stale_temporaries, save_image_2d, save_volume, suffix,
                 voxel_spacing)
from .model_file import CONTRASTS, sha256
from .pairing import same_grid
from .slabs import PLANES

def sidecar_path(output) -> Path:
    """``x.nii.gz`` -> ``x.json`` (BIDS style); a DICOM series folder ``x`` -> ``x.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name[: len(output.name) - len(suffix(output))] + ".json")


def _versions() -> dict:
    import monai
    import nibabel
    import numpy
    import torch

    return {"mri-translate": __version__, "monai": monai.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "nibabel": nibabel.__version__, "python": platform.python_version()}


def convert_file(translator: Translator, source, output, dtype: str = "float32", bits: int = 8, gif=None,
                 reference=None, overwrite: bool = False, series_uid: str | None = None,
                 cycle: Translator | None = None, dicom: bool = False, force: bool = False, strict: bool = False,
                 checks: tuple[dict, str] | None = None, mask=None, links: dict | None = None,
                 anonymize=False, profile: bool = False, loaded=None) -> dict:
    """Translate one scan and write it with its sidecar (and GIF).

    Args:
        translator: the loaded model.
        source: NIfTI, DICOM series folder, DICOM file or 2D image.
        output: ``.nii``/``.nii.gz``, or a 2D image suffix for a 2D input (``bits`` 8 or 16).
        dtype: stored NIfTI dtype (``float32`` or ``int16``).
        gif: optional GIF path: input | translated (| reference) sweep.
        reference: optional volume shown beside them in the GIF.
        overwrite: replace an existing output.
        series_uid: DICOM series to read when a folder holds several.
        cycle: the reverse translator; when given, reference-free checks go into the sidecar (``QC``) and a
            voxel-wise cycle-error map is written beside the output (``*_cycle-error.nii.gz``).
        dicom: write ``output`` as a derived DICOM series folder (see :mod:`mri_translate.dicom`); ``source``
            must be a DICOM series (or single-frame file).
        force: skip the contrast check (:func:`~mri_translate.contrast_check.check_direction`).
        strict: refuse a whole-head scan for a model trained on skull-stripped brains only
            (:func:`~mri_translate.contrast_check.check_skull_stripping`) and, with ``cycle``, a translation out
            of the model's domain, instead of warning.
        checks: ``(thresholds, source)`` of the out-of-domain flag (default: read from the model file).
        mask: a brain mask on the input's grid (:func:`apply_brain_mask`): the scan is translated as the brain
            it outlines, the rest is background in the output.
        links: the ``DatasetLinks`` ``{name: dataset root}`` of the BIDS derivative being written
            (:func:`write_derivative_description`): ``Sources`` inside them are named by BIDS URIs
            (:func:`source_uri`); ``None``: by their paths.
        anonymize: with ``dicom``, also remove the patient's identity from the series (research export; see
            :mod:`mri_translate.dicom`); a :class:`~mri_translate.dicom.Pseudonyms` shares pseudonyms and new
            UIDs across the files of one call. The sidecar's ``DICOM.Anonymized`` says which.

        profile: print the wall time of each stage (:class:`~mri_translate.inference.StageClock`) to stderr.
        loaded: returns ``source`` already being read (``load_volume(source, series_uid)``; a batch's prefetch,
            whose errors it raises); ``None``: read here.

    Returns:
        The sidecar dictionary.

    Raises:
        InputError: bad input, output equal to input, output exists without ``overwrite``, unwritable output;
            ``ContrastMismatchError`` / ``OutOfDomainError`` (see :mod:`mri_translate.contrast_check`).
    """
    start = time.perf_counter()
    translator.clock.reset()
    source, output = Path(source), Path(output)
    if os.path.realpath(output) == os.path.realpath(source):
        raise InputError(output, "output path equals the input; refusing to overwrite an input")
    if output.exists() and not overwrite:
        raise InputError(output, "already exists (use --overwrite to replace it)")
    kind = suffix(output)
    if anonymize and not dicom:
        raise InputError(output, "--anonymize applies to a DICOM series output (--dicom) only")
    if dicom:
        from .dicom import source_files, write_series

        source_files(source, series_uid)  # refuses a non-DICOM or multi-frame input before any work
    elif kind not in NIFTI_SUFFIXES + IMAGE_SUFFIXES:
        raise InputError(output, f"unsupported output type '{kind}' (use .nii.gz, .nii or, for 2D input, .png)")
    if dtype not in ("float32", "int16"):
        raise InputError(output, f"unsupported --dtype {dtype} (float32 or int16)")
    with translator.clock("load"):
        volume = loaded() if loaded is not None else load_volume(source, series_uid)
    if mask is not None:
        volume = apply_brain_mask(volume, mask, source)
    if kind in IMAGE_SUFFIXES and volume.shape[-1] != 1:
        raise InputError(output, f"a 2D image output needs a 2D input, but {source.name} has "
                                 f"{volume.shape[-1]} slices; write .nii.gz instead")
    reference_volume = load_volume(reference) if reference is not None else None
    if reference_volume is not None and reference_volume.shape != volume.shape:
        raise InputError(reference, f"reference shape {tuple(reference_volume.shape[1:])} differs from the "
                                    f"input's {tuple(volume.shape[1:])}; the GIF shows them on one grid")
    checked = translate_checked(translator, volume, source, force, strict)
    translated = checked.translated
    a, b = CONTRASTS[translator.direction]
    with translator.clock("quality checks"):
        qc, error_map = quality_checks(translator, cycle, checked, volume) if cycle else (None, None)
    if qc is not None:
        domain = judge_domain(qc, checks or model_checks(translator.model_path, translator.direction), source, strict)
    with translator.clock("sidecar"):
        sidecar = {
            "Description": f"SYNTHETIC {b} image translated from {a} by mri-translate; not for diagnosis",
            "Direction": translator.direction,
            "Sources": [source_uri(path, links) for path in (source, mask) if path is not None],
            "InputSHA256": sha256(source),
            **({"BrainMask": str(mask), "BrainMaskSHA256": sha256(mask)} if mask is not None else {}),
            "Model": str(translator.model_path) if translator.model_path else None,
            "ModelSHA256": translator.model_sha256(),
            "Parameters": {"k": translator.k, "planes": [PLANES[axis] for axis in translator.axes(
                               voxel_spacing(checked.canonical.affine), checked.canonical.shape[1:])],
                           "batch_size": translator.batch_size, "mirror": translator.mirror,
                           "standardize_output": translator.standardizes_output,
                           "inverted_weight": translator.inverted_weight,
                           "guided_radius_mm": translator.guided_radius_mm,
                           "averaged_models": 1 + len(translator.members),
                           "dtype": "uint16" if dicom else dtype if kind in NIFTI_SUFFIXES else f"uint{bits}",
                           "input_intensity_range": list(translated.meta["intensity_range"]),
                           "output_intensity_range": list(translator.target_range), "device": str(translator.device),
                           "precision": translator.precision.describe()},
            "ContrastCheck": contrast_record(checked.contrast),
            **({"SkullStripping": checked.skull} if checked.skull is not None else {}),
            **({"QC": qc, "InDomain": domain.pop("InDomain"), "DomainCheck": domain} if qc is not None else {}),
            "Software": _versions(),
        }
    # Every output goes to a temporary file first; all are renamed only when each was written, the sidecar
    # last, so a failure leaves none of them and a finished output always has its sidecar.
    error_path = sidecar_path(output).with_name(sidecar_path(output).stem + "_cycle-error.nii.gz")
    extras = ([gif] if gif is not None else []) + ([error_path] if error_map is not None else [])
    with translator.clock("write"), atomic_paths(*extras, output, sidecar_path(output)) as temporaries:
        *tmp_extras, tmp_output, tmp_sidecar = temporaries
        if dicom:
            sidecar["DICOM"] = write_series(translated, volume.meta["original_affine"], source, tmp_output,
                                            translator.direction, sidecar["ModelSHA256"], series_uid,
                                            anonymize=anonymize)
        elif kind in IMAGE_SUFFIXES:
            save_image_2d(translated, tmp_output, bits)
        else:
            save_volume(translated, tmp_output, volume.meta["original_affine"], dtype,
                        descrip=f"SYNTHETIC {b} from {a} by mri-translate {__version__}")
        if gif is not None:
            from .visualize import write_volumes_gif

            write_volumes_gif([volume, translated] + ([reference_volume] if reference else []), tmp_extras[0],
                              labels=[f"input {a}", f"synthetic {b}"] + (["reference"] if reference else []))
        if error_map is not None:
            save_volume(error_map, tmp_extras[-1], volume.meta["original_affine"],
                        descrip="mri-translate cycle error |x - G_BA(G_AB(x))|, [-1,1] units")
        sidecar["ElapsedSeconds"] = round(time.perf_counter() - start, 3)
        tmp_sidecar.write_text(json_text(sidecar))
    if profile:
        print(profile_line(source, translator.clock.seconds, time.perf_counter() - start), file=sys.stderr)
    return sidecar


def profile_line(source, seconds: dict[str, float], total: float) -> str:
    """``convert --profile``'s line for one file: each stage's wall time (s) in the order they ran, and the total."""
    stages = " | ".join(f"{name} {value:.3f}" for name, value in seconds.items())
    return f"profile {Path(source).name}: {stages} | total {total:.3f} s (stages {sum(seconds.values()):.3f} s)"


def apply_brain_mask(volume, mask, source):
    """``volume`` ``(1, X, Y, Z)`` with every voxel outside the brain mask set to the volume's minimum (its
    background), so a whole-head scan reaches a model trained on skull-stripped brains as one (e.g. a SynthStrip
    or HD-BET mask). ``mask``: a NIfTI (or any :func:`~mri_translate.io.load_volume` input) on the same grid,
    > 0 inside.

    Raises:
        InputError: the mask is unreadable, on another grid (shape or affine) than ``source``, or empty.
    """
    brain = load_volume(mask)
    differs = same_grid(volume, brain)
    if differs:
        raise InputError(mask, f"brain mask is not on the grid of {Path(source).name} ({differs}); resample it onto "
                               "the scan first")
    inside = brain > 0
    if not bool(inside.any()):
        raise InputError(mask, "brain mask is empty (no voxel > 0)")
    masked = volume.clone()
    masked[~inside] = float(volume.min())
    return masked


def quality_checks(translator: Translator, cycle: Translator, checked: CheckedTranslation, volume):
    """Reference-free checks of one translation (all inside the input's foreground, in RAS):

    - ``CycleErrorMAE``: mean |x - G_BA(G_AB(x))| in normalised units (the [-1, 1] scale; 0 = perfect cycle), with
      the generators alone both ways (:meth:`~mri_translate.inference.Translator.run_network`): the refit on the
      inverted input would make two translations in a row close to the identity whatever the network does;
    - ``InterSliceConsistency``: the output's slice-to-slice change over the input's (1 = as smooth; ``None``
      when the input does not change between slices, see :func:`~mri_translate.metrics.interslice_consistency`);
    - ``HistogramDistance``: Wasserstein distance between the output's intensity histogram and the target
      domain's training histogram (data-range units; ``None`` for models saved without it).

    Args:
        translator, cycle: the translator and the reverse one (same model).
        checked: the translation of ``volume`` (:func:`~mri_translate.inference.translate_checked`).
        volume: the loaded input ``(1, X, Y, Z)``.

    Returns:
        The checks and the voxel-wise cycle-error map ``(1, X, Y, Z)`` in the input's voxel order.
    """
    from monai.data import MetaTensor

    from . import metrics
    from .transforms import from_canonical

    canonical = checked.canonical
    x, y = canonical[0].numpy(), checked.normalized[0].numpy()
    cycled = cycle.run_network(checked.network)[0].numpy()
    mask = metrics.auto_mask((x + 1) / 2)
    axis = translator.axes(voxel_spacing(canonical.affine), canonical.shape[1:])[0]  # the through-plane one first
    error = MetaTensor(torch.from_numpy(metrics.cycle_error_map(x, cycled))[None], meta=dict(canonical.meta))
    error = from_canonical(error, volume.meta["original_axcodes"], volume.meta["original_affine"])
    histogram = translator.target_histogram
    checks = {
        "CycleErrorMAE": metrics.cycle_error(x, cycled, mask),
        "InterSliceConsistency": metrics.interslice_consistency((y + 1) / 2, (x + 1) / 2, mask, axis),
        "HistogramDistance": None if histogram is None else metrics.histogram_distance_to((y + 1) / 2, mask, histogram),
        "Cycle": "generators alone both ways (no refit on the inverted input)",
        "Units": "cycle error in normalised [-1, 1] units; histogram distance in data-range units",
    }
    return checks, error


@dataclass
class BatchReport:
    """What a batch run did: finished, skipped (already done) and failed ``(path, reason)``."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        return f"{len(self.done)} converted, {len(self.skipped)} skipped (already done), {len(self.failed)} failed"


def plan_batch(inputs, output_dir, direction: str = "t1-to-t2") -> list[tuple[Path, Path]]:
    """Pairs ``(input, output)`` for a folder, a glob or a BIDS dataset, sorted by input path.

    BIDS (``sub-*`` folders): ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` -> ``OUT/sub-*/.../*_desc-synthetic_T2w.nii.gz``.
    Other folders: every NIfTI, DICOM file, 2D image and DICOM series sub-folder directly inside; NIfTI and
    DICOM become ``.nii.gz``, 2D images keep their name and type.
    """
    a = CONTRASTS[direction][0]
    text = str(inputs)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        root, files = None, [Path(p) for p in glob.glob(text, recursive=True)]
    else:
        root = Path(inputs)
        if not root.is_dir():
            raise InputError(root, "no such folder")
        if any(root.glob("sub-*")):
            files = [p for p in root.glob(f"sub-*/**/anat/*_{a}.nii*")
                     if suffix(p) in NIFTI_SUFFIXES and not p.name.startswith(".")]
        else:
            files = [p for p in root.iterdir() if not p.name.startswith(".") and (
                suffix(p) in NIFTI_SUFFIXES + IMAGE_SUFFIXES or (p.is_file() and is_dicom_file(p))
                or (p.is_dir() and not list_images_2d(p) and dicom_series(p)))]
    return [(file, output_path(file, root, output_dir, direction)) for file in sorted(files)]


def output_path(source, root, output_dir, direction: str = "t1-to-t2") -> Path:
    """Where a batch writes the translation of ``source`` (found under ``root``, or by a glob when ``root`` is
    ``None``): 2D images keep name and type; ``*_T1w.nii.gz`` -> ``*_desc-synthetic_T2w.nii.gz`` (BIDS);
    anything else -> ``<name>_T2w.nii.gz``; sub-folders below ``root`` are kept."""
    a, b = CONTRASTS[direction]
    source = Path(source)
    kind = suffix(source)
    stem = source.name[: -len(kind)] if kind else source.name
    if kind in IMAGE_SUFFIXES:
        name = source.name
    elif stem.endswith(f"_{a}"):
        name = f"{stem[: -len(a) - 1]}_desc-synthetic_{b}.nii.gz"
    else:
        name = f"{stem}_{b}.nii.gz"
    relative = source.parent.relative_to(root) if root is not None else Path()
    return Path(output_dir) / relative / name


def shard(pairs: list, spec: str | None) -> list:
    """Every N-th item starting at I for ``spec = "I/N"`` (0 <= I < N); with ``spec`` None, the torchrun
    rank and world size when set, else everything. Deterministic, so N workers never overlap."""
    if spec is None:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    else:
        try:
            rank, world = (int(x) for x in spec.split("/"))
        except ValueError as err:
            raise InputError(spec, "--shard must be I/N with integers, e.g. 0/4") from err
    if not 0 <= rank < world:
        raise InputError(spec or f"{rank}/{world}", "--shard I/N needs 0 <= I < N")
    return pairs[rank::world]


def domain_check_options(translator: Translator, qc: bool = False, strict: bool = False) -> dict:
    """The :func:`convert_file` options of ``--qc`` / ``--strict``: the reverse translator (for the cycle error:
    the generator alone, with the same model, device, planes, mirroring and output standardisation), the model's
    out-of-domain thresholds and ``strict``; ``{}`` when neither is asked for."""
    if not (qc or strict):
        return {}
    reverse = "t2-to-t1" if translator.direction == "t1-to-t2" else "t1-to-t2"
    cycle = Translator.from_run(translator.model_path, reverse, translator.device, translator.batch_size,
                                axis=translator.axis, mirror=translator.mirror, amp=translator.inferer.amp,
                                standardize_output=translator.standardize_output,
                                fuse_planes=translator.fuse_planes, inverted_weight=0.0, guided_radius_mm=0.0)
    return {"cycle": cycle, "strict": strict, "checks": model_checks(translator.model_path, translator.direction)}


def convert_batch(translator: Translator, pairs, overwrite: bool = False, progress: bool = True,
                  mask_for=None, prefetch: bool | None = None, **options) -> BatchReport:
    """Convert every pair; a failing file is reported and the others carry on. Inputs are never
    overwritten; finished outputs (image and sidecar present) are skipped unless ``overwrite``. ``mask_for``:
    ``source -> brain mask path`` (raising :class:`~mri_translate.errors.InputError` when there is none), each
    scan then translated within its mask. With ``prefetch`` (``None``: on a GPU) the next scan is read in a
    background thread while one is translated, so a batch runs at the network's pace; on a CPU the reader would
    take cores from the network (2 cores, shipped model: 18.3 s per file with it, 16.4 s without)."""

    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    report = BatchReport()
    for folder in {output.parent for _, output in pairs if output.parent.is_dir()}:
        remove_stale_temporaries(folder)  # left by a killed run: that file is redone below
    todo = []
    for source, output in pairs:
        if output.exists() and sidecar_path(output).exists() and not overwrite:
            report.skipped.append(output)
        else:
            todo.append((source, output))
    series_uid = options.get("series_uid")
    prefetch = translator.device.type != "cpu" if prefetch is None else prefetch
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as reader:
        def read(index):  # the scan todo[index] read in the background, or None (read by convert_file)
            return reader.submit(load_volume, todo[index][0], series_uid) if prefetch and index < len(todo) else None

        upcoming = read(0)
        for index, (source, output) in enumerate(tqdm(todo, desc="convert", unit="file", disable=not progress)):
            loading, upcoming = upcoming, read(index + 1)  # this scan, read while the one before was translated
            try:
                mask = {"mask": mask_for(source)} if mask_for is not None else {}
                convert_file(translator, source, output, overwrite=True,
                             loaded=loading.result if loading is not None else None, **options, **mask)
                report.done.append(output)
            except MriTranslateError as err:
                report.failed.append((source, str(err)))
                tqdm.write(f"failed: {err}", file=sys.stderr)  # one line per failed file, as it happens
    return report


def write_derivative_description(output_dir, direction: str, raw, **others) -> dict[str, Path]:
    """``dataset_description.json`` of a BIDS derivative dataset translated from the BIDS dataset ``raw``.

    Args:
        output_dir: the derivative's root.
        direction: ``t1-to-t2`` or ``t2-to-t1``.
        raw: the root of the dataset translated.
        **others: further datasets the sidecars name, ``name=root`` (e.g. ``masks=`` a brain-mask derivative).

    Returns:
        The links ``{"raw": raw, **others}``: declared in ``DatasetLinks`` (each root relative to ``output_dir``),
        to be passed to :func:`convert_file` so that ``Sources`` are BIDS URIs ``bids:raw:sub-01/anat/...``.
    """
    links = {"raw": Path(raw), **{name: Path(root) for name, root in others.items()}}
    description = {"Name": f"mri-translate synthetic {CONTRASTS[direction][1]}", "BIDSVersion": "1.9.0",
                   "DatasetType": "derivative",
                   "DatasetLinks": {name: Path(os.path.relpath(os.path.abspath(root), os.path.abspath(output_dir)))
                                    .as_posix() for name, root in links.items()},
                   "GeneratedBy": [{"Name": "mri-translate", "Version": __version__,
                                    "Description": f"CycleGAN translation {direction}; images are SYNTHETIC"}]}
    with atomic_path(Path(output_dir) / "dataset_description.json") as tmp:
        tmp.write_text(json_text(description))
    return links


def source_uri(path, links: dict | None) -> str:
    """How a sidecar's ``Sources`` name an input: the BIDS URI ``bids:<name>:<path below that root>`` of the
    innermost dataset of ``links`` (``{name: root}``, see :func:`write_derivative_description`) that holds
    ``path`` (a mask derivative inside the raw dataset's ``derivatives/`` names its own files), else the path as
    given (a scan converted outside BIDS). Symbolic links are not followed (DataLad's annexed files are links
    into ``.git``)."""
    below = {name: Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
             for name, root in (links or {}).items()}
    inside = {name: relative for name, relative in below.items() if relative.parts[:1] != ("..",)}
    if not inside:
        return str(path)
    name = min(inside, key=lambda n: len(inside[n].parts))
    return f"bids:{name}:{inside[name].as_posix()}"


def is_batch_input(source) -> bool:
    """A glob, or a folder that is not itself one DICOM series."""
    path = Path(source)
    if not path.exists():
        return any(ch in str(source) for ch in "*?[")
    return path.is_dir() and not dicom_series(path)


def convert(source, output, model=None, direction: str = "t1-to-t2", device: str = "auto",
            batch_size: int | None = None, axis: int | None = None, overwrite: bool = False, shard_spec: str | None = None,
            progress: bool = True, qc: bool = False, strict: bool = False, mirror: bool | None = None,
            standardize_output: bool = True, fuse_planes: bool = True, inverted_weight: float | None = None,
            guided_radius_mm: float | None = None, amp: bool = True, **options) -> BatchReport:
    """Translate a scan (``output`` = file) or a batch (folder, glob or BIDS dataset; ``output`` = folder).

    Args:
        source: scan, folder, glob or BIDS root.
        output: output file, or folder for a batch.
        model: run directory or model file; ``None`` = the shipped default model.
        direction: ``t1-to-t2`` or ``t2-to-t1``.
        device, batch_size, amp, axis, mirror, standardize_output, fuse_planes, inverted_weight, guided_radius_mm:
            see :class:`~mri_translate.inference.Translator` (``None``: the model's own).
        overwrite: replace existing outputs.
        shard_spec: ``"I/N"``: this worker's share of a batch.
        qc: reference-free checks in each sidecar and a cycle-error map (see :func:`quality_checks`), judged
            against the model's out-of-domain thresholds (a warning line when exceeded).
        strict: like ``qc``, and an out-of-domain translation is refused (exit 2) instead of a warning.
        progress: progress bar for batches.
        **options: ``dtype``, ``bits``, ``gif``, ``reference``, ``series_uid``, ``dicom``, ``anonymize``,
            ``force``, ``mask``, ``profile`` of :func:`convert_file` (``gif``/``reference``/``mask`` for single scans only;
            ``anonymize``: one set of pseudonyms and new UIDs for the whole call).

    Returns:
        A :class:`BatchReport` (a single scan is a batch of one; its errors raise instead).
    """
    translator = Translator.from_run(model, direction, device, batch_size, amp=amp, axis=axis, mirror=mirror,
                                     standardize_output=standardize_output, fuse_planes=fuse_planes,
                                     inverted_weight=inverted_weight, guided_radius_mm=guided_radius_mm)
    options.update(domain_check_options(translator, qc, strict))
    if options.get("anonymize") is True:  # one patient or study -> one pseudonym or new UID in the whole batch
        from .dicom import Pseudonyms

        options["anonymize"] = Pseudonyms()
    if not is_batch_input(source):
        convert_file(translator, source, output, overwrite=overwrite, **options)
        return BatchReport(done=[Path(output)])
    if options.get("gif") or options.get("reference") or options.get("mask"):
        raise InputError(source, "--gif, --reference and --mask apply to a single scan, not to a batch")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(output, "a batch needs an output folder, but this is a file")
    pairs = shard(plan_batch(source, output, direction), shard_spec)
    if options.get("dicom"):  # each DICOM series becomes a series folder: OUT/<name>_T2w/
        pairs = [(file, sidecar_path(target).with_suffix("")) for file, target in pairs]
    if not pairs:
        raise InputError(source, "no convertible scans found (NIfTI, DICOM, 2D images or BIDS *_T1w/_T2w)")
    output.mkdir(parents=True, exist_ok=True)
    if Path(source).is_dir() and any(Path(source).glob("sub-*")):
        options["links"] = write_derivative_description(output, direction, source)
    return convert_batch(translator, pairs, overwrite=overwrite, progress=progress, **options)


class SaveTranslatedd(MapTransform):
    """Bundle post-processing: write ``d[key]`` (the translated volume, already back in the input's voxel
    order by ``Invertd``) where :func:`output_path` says, with the original affine of ``d[source_key]`` (the
    loaded input); 2D inputs are written as 2D images. Atomic, never over an input."""

    def __init__(self, keys, output_dir, dataset_dir=None, direction: str = "t1-to-t2", dtype: str = "float32",
                 source_key: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.output_dir, self.direction, self.dtype = Path(output_dir), direction, dtype
        self.root = Path(dataset_dir) if dataset_dir is not None and Path(dataset_dir).is_dir() else None

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            volume, meta = d[key], d[self.source_key].meta
            source = Path(meta["filename_or_obj"])
            output = output_path(source, self.root, self.output_dir, self.direction)
            if output.resolve() == source.resolve():
                raise InputError(output, "output path equals the input; refusing to overwrite an input")
            if suffix(output) in IMAGE_SUFFIXES:
                save_image_2d(volume, output)
            else:
                save_volume(volume, output, meta["original_affine"], self.dtype,
                            descrip=f"SYNTHETIC {CONTRASTS[self.direction][1]} by mri-translate {__version__}")
            d[f"{key}_path"] = str(output)
        return d
