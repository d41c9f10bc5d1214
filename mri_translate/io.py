"""Reading and writing scans: NIfTI, DICOM (series folder, single or multi-frame file) and 2D images.

One contract, borrowed from nnU-Net's reader/writer: :func:`load_volume` returns a channel-first MONAI
``MetaTensor`` ``(1, X, Y, Z)`` float32 whose ``affine`` maps voxels to RAS world millimetres, and
:func:`save_volume` writes such a tensor back so that a loaded-then-saved volume keeps its shape, affine and
voxel values. Every file is validated before it is read and every output is written to a temporary file in
the same folder, then renamed, so an interrupted run never leaves half a file behind.

2D images (PNG/JPEG/TIFF) become a one-slice volume. Their pixel grid has no patient orientation, so we
state one: columns run toward the patient's left and rows toward posterior (how a radiologist looks at an
axial slice), i.e. the affine is ``diag(-1, -1, 1, 1)`` with 1 mm pixels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
IMAGE_2D_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Refuse inputs whose float32 copy would need more than this many bytes (override: MRI_TRANSLATE_MAX_BYTES).
MAX_VOLUME_BYTES = int(os.environ.get("MRI_TRANSLATE_MAX_BYTES", 8 * 1024**3))

# MONAI's optional GPU DICOM codec announces on every run that it is missing; that is expected here.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def suffix(path) -> str:
    """Lower-case file suffix, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def voxel_spacing(affine) -> np.ndarray:
    """Voxel size (mm) along each array axis: the lengths of the columns of the affine's 3x3 part."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def is_dicom_file(path) -> bool:
    """True for a ``.dcm``-like name or a file with the ``DICM`` marker at byte 128."""
    path = Path(path)
    if suffix(path) in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def list_images_2d(folder) -> list[Path]:
    """Sorted 2D image files (PNG/JPEG/TIFF) directly inside ``folder``."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and suffix(p) in IMAGE_SUFFIXES)


def dicom_series(folder) -> dict[str, list[str]]:
    """Map each DICOM SeriesInstanceUID in ``folder`` to its files, sorted by slice position (GDCM)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on stderr for every non-DICOM folder
    reader = sitk.ImageSeriesReader()
    return {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))}


def _check_readable(path: Path) -> None:
    if not path.exists():
        if path.is_symlink():
            raise InputError(path, "is a broken symbolic link or a symbolic link loop")
        raise InputError(path, "no such file or folder")
    if path.is_file():
        try:  # opening is the true test (os.access asks for the real user, not this process's rights)
            path.open("rb").close()
        except PermissionError as err:
            raise InputError(path, "permission denied (file is not readable)") from err
        if path.stat().st_size == 0:
            raise InputError(path, "file is empty (0 bytes)")


def _check_size(path, shape) -> None:
    if any(int(s) <= 0 for s in shape):
        raise InputError(path, f"has a zero-sized dimension: shape {tuple(int(s) for s in shape)}")
    needed = int(np.prod([int(s) for s in shape], dtype=np.float64)) * 4
    if needed > MAX_VOLUME_BYTES:
        raise InputError(path, f"shape {tuple(int(s) for s in shape)} would need {needed / 1024**3:.1f} GiB as "
                               f"float32, above the {MAX_VOLUME_BYTES / 1024**3:.1f} GiB limit "
                               "(MRI_TRANSLATE_MAX_BYTES)")


def _check_nifti_header(path: Path) -> tuple[tuple[int, ...], str]:
    """Validate a NIfTI header before any voxel is read; returns the spatial shape and the stored dtype."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape)
        dtype = image.get_data_dtype()
    except Exception as err:
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})".replace("\n", " ")) from err
    if dtype.kind == "c":
        raise InputError(path, f"has complex voxels ({dtype}); save the magnitude image instead")
    if dtype.names is not None or dtype.kind == "V":
        raise InputError(path, f"has RGB/structured voxels ({dtype}); convert it to a greyscale volume")
    if len(shape) < 3:
        shape = shape + (1,) * (3 - len(shape))
    _check_size(path, shape)
    volumes = int(np.prod(shape[3:], dtype=np.int64))
    if volumes > 1:
        dims = "the 4th (time/volume) dimension" if len(shape) == 4 else f"dimensions 4-{len(shape)}"
        raise InputError(path, f"is {len(shape)}D with {volumes} volumes along {dims} (shape {shape}); pick one "
                               f"volume first, e.g. nibabel: nib.save(img.slicer[..., 0], 'vol0.nii.gz') or FSL: "
                               f"fslroi in out 0 1")
    return shape[:3], str(dtype)


def _grey(image):
    """PIL converter: RGB/palette/alpha images to 8-bit greyscale, 16-bit and float images kept as they are."""
    return image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1") else image


def _reader_for(path: Path, series_uid: str | None):
    """Pick the MONAI reader for ``path``; returns (reader, path to read, format name, first DICOM file)."""
    from monai.data import ITKReader, NibabelReader, PILReader

    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise InputError(path, "folder is empty")
        series = dicom_series(path)
        if not series:
            if list_images_2d(path):
                raise InputError(path, "is a folder of 2D images: a dataset of slices, not one volume "
                                       "(train on it with --t1/--t2, or convert it as a batch)")
            raise InputError(path, "folder holds no DICOM series and no 2D images")
        if series_uid is None and len(series) > 1:
            listing = "; ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
            raise InputError(path, f"holds {len(series)} DICOM series, pick one with --series UID: {listing}")
        if series_uid is not None and series_uid not in series:
            raise InputError(path, f"has no DICOM series {series_uid}; it holds: {', '.join(series)}")
        uid = series_uid or next(iter(series))
        import itk

        itk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on stderr while scanning the folder
        return ITKReader(series_name=uid), str(path), "dicom", series[uid][0]
    kind = suffix(path)
    if kind in NIFTI_SUFFIXES:
        return NibabelReader(), str(path), "nifti", None
    if kind in IMAGE_SUFFIXES:
        return PILReader(converter=_grey), str(path), "image", None
    if is_dicom_file(path):
        return ITKReader(), str(path), "dicom", path
    raise InputError(path, f"unknown file type '{kind or path.name}' (expected .nii/.nii.gz, DICOM (.dcm or a "
                           f"series folder) or a 2D image {'/'.join(IMAGE_SUFFIXES)})")


def _dicom_facts(dicom_file) -> tuple[str | None, str | None]:
    """Series description and stored pixel type (e.g. ``uint16``) of a DICOM file; informative only, so a
    header that cannot be parsed gives ``(None, None)`` and reading the pixels reports the real problem."""
    import pydicom

    try:
        header = pydicom.dcmread(str(dicom_file), stop_before_pixels=True)
        dtype = f"{'int' if header.get('PixelRepresentation', 0) else 'uint'}{header.get('BitsAllocated', 16)}"
        return str(header.get("SeriesDescription", "")) or None, dtype
    except Exception:
        return None, None


def load_volume(path, series_uid: str | None = None):
    """Load one scan as a channel-first volume in its own voxel order.

    Args:
        path: NIfTI file, DICOM series folder, single or multi-frame DICOM file, or 2D image.
        series_uid: which series to read when a DICOM folder holds several.

    Returns:
        ``MetaTensor`` ``(1, X, Y, Z)`` float32 (scl_slope/inter applied). Meta: ``affine`` (voxel -> RAS mm),
        ``original_affine``, ``spacing`` (mm), ``original_axcodes`` (e.g. ``"LPS"``), ``source_format``,
        ``original_dtype`` and, for DICOM, ``series_description``. No patient identifiers are kept.

    Raises:
        InputError: missing/unreadable/empty/truncated file, unknown type, several DICOM series, 4D data,
            complex or RGB voxels, absurd dimensions, NaN or Inf voxels.
    """
    path = Path(path)
    _check_readable(path)
    import nibabel as nib
    import torch
    from monai.data import MetaTensor
    from monai.transforms import LoadImage

    reader, target, source_format, first_dicom = _reader_for(path, series_uid)
    description, original_dtype = _dicom_facts(first_dicom) if first_dicom else (None, None)
    if source_format == "nifti":
        shape, original_dtype = _check_nifti_header(path)
    try:
        image = LoadImage(reader=reader, image_only=True, ensure_channel_first=False, dtype=None)(target)
    except InputError:
        raise
    except Exception as err:
        problem = f"cannot read the {source_format} data ({type(err).__name__}: {err})"
        raise InputError(path, problem.replace("\n", " ")) from err
    if original_dtype is None:
        original_dtype = str(image.dtype).replace("torch.", "")
    array = image.as_tensor().to(torch.float32)
    affine = np.asarray(image.affine, dtype=np.float64)
    if source_format == "nifti":
        array = array.reshape(shape)
    elif source_format == "image":
        if array.ndim != 2:
            raise InputError(path, f"expected a greyscale or RGB 2D image, got array shape {tuple(array.shape)}")
        array = array[..., None]
        affine = IMAGE_2D_AFFINE.copy()
    elif array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {tuple(array.shape)}")
    _check_size(path, array.shape)
    finite = torch.isfinite(array)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(path, f"contains {bad} NaN/Inf voxels; fix or mask them before use")
    spacing = voxel_spacing(affine)
    meta = {
        "affine": torch.as_tensor(affine),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape),
        "filename_or_obj": str(path),
        "spacing": spacing,
        "original_axcodes": "".join(nib.aff2axcodes(affine)),
        "source_format": source_format,
        "original_dtype": original_dtype,
    }
    if description:
        meta["series_description"] = description
    return MetaTensor(array[None], meta=meta)


def json_text(value) -> str:
    """``value`` as strict JSON text (indent 2, trailing newline) for sidecars and reports that other tools
    read: NumPy scalars become numbers, NaN and infinities ``null`` (``json.dumps`` would write ``Infinity``)."""
    import json
    import math

    def plain(item):
        if isinstance(item, dict):
            return {key: plain(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [plain(v) for v in item]
        if isinstance(item, np.generic):
            item = item.item()
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item

    return json.dumps(plain(value), indent=2, allow_nan=False) + "\n"


@contextlib.contextmanager
def atomic_path(path, suffix_override: str | None = None):
    """Yield a hidden temporary path beside ``path`` (same suffix, e.g. ``.nii.gz``, so writers pick the
    format, or ``suffix_override``); rename it onto ``path`` only if the block succeeds, otherwise remove it
    and leave any existing ``path`` untouched. Missing parent folders are created.

    Raises:
        InputError: the output folder cannot be created or written, or the write fails (e.g. disk full).
    """
    with atomic_paths(path, suffixes=[suffix_override]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths, suffixes=None):
    """Like :func:`atomic_path` for several files that belong together: yield their temporary paths and
    rename them all only when the block succeeds, in the given order (so the last one, e.g. a sidecar, marks
    the set as complete). A temporary path may also be made a folder (e.g. a DICOM series): it replaces
    ``path`` whole, an existing folder included. Each existing output is kept aside (a hard link to a file, a
    folder moved) until every rename has succeeded, so when one fails (e.g. the sidecar's, the last) the files
    already renamed are removed and the previous outputs, if any, are put back as they were.

    Raises:
        InputError: a folder cannot be created or written, or a write or rename fails.
    """
    with contextlib.ExitStack() as stack:
        suffixes = suffixes or [None] * len(paths)
        temporaries = [stack.enter_context(_temporary(Path(p), ext)) for p, ext in zip(paths, suffixes)]
        try:
            yield temporaries
        except OSError as err:  # name the output whose temporary failed (else the first), never the temporary
            names = [str(t) for t in temporaries]
            failed = Path(paths[names.index(err.filename) if err.filename in names else 0])
            raise InputError(_target(failed), f"cannot write ({err.strerror or err})") from err
        kept, done = [], []  # (path, its previous version set aside or None), paths renamed
        try:
            for tmp, path in zip(temporaries, map(Path, paths)):
                kept.append((path, _set_aside(tmp, path)))
                os.replace(tmp, path)
                done.append(path)
        except OSError as err:
            for output, old in kept:
                moved = old is not None and (old.is_dir() or old.is_symlink())  # else a link to a file
                if output in done and (old is None or output.is_dir()):
                    _remove(output)
                if old is not None and output not in done and not moved:
                    _remove(old)  # the file it links to is still at ``output``
                elif old is not None:
                    with contextlib.suppress(OSError):  # (failing, ``old`` stays: the previous version's only copy)
                        os.replace(old, output)  # the previous version back (a file: atomically over the new one)
            raise InputError(path, f"cannot write ({err.strerror or err})") from err
        for _, old in kept:
            if old is not None:
                _remove(old)


@contextlib.contextmanager
def _temporary(path: Path, ext: str | None = None):
    """A hidden temporary path beside ``path`` with its suffix (or ``ext``), removed on exit if still there."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}{suffix(path) if ext is None else ext}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(_target(path), f"cannot write ({err.strerror or err})") from err
    try:
        yield tmp
    finally:
        _remove(tmp)


def _target(path: Path) -> Path:
    """The output a temporary path (``.NAME.tmp-PID[.ext]``, e.g. of a nested atomic write) stands for."""
    match = re.match(r"\.(.+)\.tmp-\d+", path.name)
    return path.with_name(match.group(1)) if match else path


def _set_aside(tmp: Path, path: Path) -> Path | None:
    """Keep the existing ``path`` as ``.NAME.tmp-PID-old`` beside it until the new version is committed: a hard
    link to a file (``path`` itself stays in place, so the rename over it stays atomic; a copy where links are
    not supported), a folder moved there (``os.replace`` cannot replace a folder by a folder). ``None`` when
    there is nothing to keep, or when ``tmp`` and ``path`` are not both files or both folders (the rename fails
    and nothing was moved)."""
    if not (path.exists() or path.is_symlink()) or tmp.is_dir() != path.is_dir():
        return None
    old = path.parent / f".{path.name}.tmp-{os.getpid()}-old"
    _remove(old)
    if path.is_dir() or path.is_symlink():
        os.replace(path, old)
        return old
    try:
        os.link(path, old)
    except OSError:
        try:
            shutil.copy2(path, old)
        except OSError:
            _remove(old)
            raise
    return old


def _remove(path: Path) -> None:
    """Delete a file or a folder tree if it is there; errors are ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_temporaries(folder) -> None:
    """Delete temporary files and folders (``.name.tmp-PID[.ext]``) a killed process left in ``folder`` and
    below."""
    for stale in sorted(Path(folder).rglob(".*.tmp-*"), reverse=True):
        _remove(stale)


def save_volume(volume, path, affine=None, dtype: str = "float32", descrip: str | None = None) -> Path:
    """Write a volume as NIfTI (atomically).

    Args:
        volume: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` tensor/array in the voxel order of ``affine``.
        path: output ``.nii`` or ``.nii.gz``.
        affine: voxel -> RAS mm; defaults to ``volume.affine`` for a MetaTensor.
        dtype: numpy dtype name of the stored voxels (``int16`` values are rounded and clipped).
        descrip: NIfTI ``descrip`` field (80 characters at most).

    Returns:
        The path written.
    """
    import nibabel as nib
    import torch

    path = Path(path)
    if suffix(path) not in NIFTI_SUFFIXES:
        raise InputError(path, "output must end in .nii or .nii.gz")
    if affine is None:
        affine = volume.affine
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    data = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if data.ndim == 4:
        data = data[0]
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        data = np.clip(np.rint(data), info.min, info.max)
    image = nib.Nifti1Image(data.astype(target), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if descrip:
        image.header["descrip"] = descrip[:79].encode("ascii", "replace")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def save_image_2d(volume, path, bits: int = 8) -> Path:
    """Write a one-slice volume ``(1, X, Y, 1)`` (pixel grid of :data:`IMAGE_2D_AFFINE`) as a 2D image.

    Values are clipped to the range of ``bits`` (8 or 16) and rounded; the image has the width X and height
    Y of the volume, so a 2D input comes back with exactly its size and orientation.
    """
    import torch
    from PIL import Image

    data = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    data = data.reshape(data.shape[-3:] if data.ndim == 4 else data.shape)
    if data.ndim != 3 or data.shape[2] != 1:
        raise InputError(path, f"only a one-slice volume can be written as a 2D image, got shape {data.shape}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.clip(np.rint(data[:, :, 0].T), 0, np.iinfo(dtype).max).astype(dtype)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp)
    return Path(path)


def describe(path, series_uid: str | None = None) -> dict:
    """Facts about a scan, as printed by ``mri-translate info``.

    Returns:
        ``path``, ``format``, ``shape`` (X, Y, Z), ``spacing`` (mm), ``axcodes`` (e.g. ``"LPS"``), ``dtype`` (as
        stored), ``min``, ``max`` and, for DICOM, ``series_description``.
    """
    volume = load_volume(path, series_uid)
    facts = {
        "path": str(path),
        "format": volume.meta["source_format"],
        "shape": [int(s) for s in volume.shape[1:]],
        "spacing": [round(float(s), 6) for s in volume.meta["spacing"]],
        "axcodes": volume.meta["original_axcodes"],
        "dtype": volume.meta["original_dtype"],
        "min": float(volume.min()),
        "max": float(volume.max()),
    }
    if "series_description" in volume.meta:
        facts["series_description"] = volume.meta["series_description"]
    return facts
