"""Write a translated volume as a derived DICOM series, one file per source slice, built from the source
series' own headers, so a PACS or viewer files it beside the original.

Why pydicom (not highdicom): highdicom builds the *enhanced* multi-frame objects (Legacy Converted
Enhanced MR, segmentations, parametric maps); a classic MR Image Storage object per slice, copied from the
source slice's own header, is what every PACS, viewer and DICOM router accepts, keeps each slice's
geometry exactly as acquired, and needs nothing beyond pydicom, already a dependency.

What each file of the derived series holds (what to tell a PACS administrator):

- the source slice's header, so the same patient, study and frame of reference (PatientID,
  StudyInstanceUID, FrameOfReferenceUID, ...) and the same geometry (ImagePositionPatient,
  ImageOrientationPatient, PixelSpacing, SliceThickness, Rows, Columns, InstanceNumber);
- a new SeriesInstanceUID and new SOPInstanceUIDs (``pydicom.uid.generate_uid``, never reused);
  SeriesNumber = the source's + 1000; SeriesDescription ``synthetic T2w (mri-translate <version>)``;
- ImageType ``DERIVED\\SECONDARY\\OTHER``, a DerivationDescription saying it is synthetic and not for
  diagnosis, and a SourceImageSequence item pointing at the source slice (purpose DCM 121322, "Source
  image for image processing operation");
- unsigned 16-bit pixels; RescaleSlope/RescaleIntercept map them back to the translated intensities
  (``value = stored * slope + intercept``, the output's minimum at 0 and its maximum at 65535), and
  WindowCenter/WindowWidth span the output's minimum to its 99.5th percentile;
- a ContributingEquipmentSequence item (Manufacturer ``mri-translate``, SoftwareVersions, purpose DCM
  109102 "Processing Equipment", ContributionDescription with direction and model SHA-256), and the same
  facts in a private block of group 0x0011, private creator ``mri-translate``:
  ``(0011,xx01)`` LO direction (``t1-to-t2``), ``(0011,xx02)`` LO model SHA-256 (64 hex digits),
  ``(0011,xx03)`` LO mri-translate version;
- none of the source's private tags (e.g. Siemens CSA headers): they describe how the source pixels were
  acquired, not these pixels.

Multi-frame (enhanced MR) sources are refused: their geometry lives in per-frame functional groups that a
classic per-slice series cannot carry one to one.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError
from .io import dicom_series, is_dicom_file
from .model_file import CONTRASTS

PRIVATE_GROUP, PRIVATE_CREATOR = 0x0011, "mri-translate"
SERIES_NUMBER_OFFSET = 1000
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: Header elements that describe the source pixels or their encoding, not the translated ones.
_DROPPED = ("LargestImagePixelValue", "SmallestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit",
            "WindowCenterWidthExplanation", "VOILUTSequence", "ModalityLUTSequence", "RescaleType",
            "SourceImageSequence", "DerivationCodeSequence", "IconImageSequence")


def source_files(source, series_uid: str | None = None) -> list[Path]:
    """The files of the source series, in the slice order of :func:`mri_translate.io.load_volume`.

    Args:
        source: DICOM series folder, or one single-frame DICOM file.
        series_uid: the series to take when the folder holds several (default: the only one).

    Raises:
        InputError: not DICOM, no such series, or a multi-frame (enhanced) DICOM file.
    """
    import pydicom

    source = Path(source)
    if source.is_dir():
        series = dicom_series(source)
        if not series or (series_uid is not None and series_uid not in series):
            raise InputError(source, "--dicom needs a DICOM series as input, but this folder holds "
                                     + (f"no series {series_uid}" if series else "no DICOM series"))
        files = [Path(f) for f in series[series_uid or next(iter(series))]]
    elif source.is_file() and is_dicom_file(source):
        files = [source]
    else:
        raise InputError(source, "--dicom needs a DICOM input (a series folder or a DICOM file); write a "
                                 "NIfTI instead (drop --dicom)")
    header = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "ImagePositionPatient" not in header:
        raise InputError(files[0], f"is a multi-frame (enhanced) DICOM ({frames} frames): --dicom writes a classic "
                                   "one-file-per-slice series only; write a NIfTI instead (drop --dicom)")
    return files


def write_series(volume, affine, source, folder, direction: str, model_sha256: str | None,
                 series_uid: str | None = None) -> dict:
    """Write ``volume`` as a derived DICOM series into ``folder`` (created; pass a temporary, see
    :func:`mri_translate.io.atomic_paths`), one file per source slice, named ``0001.dcm`` ... in slice order.

    Args:
        volume: translated ``(1, X, Y, Z)`` or ``(X, Y, Z)`` tensor/array in the source's voxel order.
        affine: voxel -> RAS mm of that voxel order (``load_volume(source).meta["original_affine"]``).
        source: the DICOM series folder (or file) that was translated.
        folder: where the files go.
        direction: ``t1-to-t2`` or ``t2-to-t1``.
        model_sha256: checksum of the model file, recorded in the headers.
        series_uid: which series of ``source`` was read.

    Returns:
        ``SeriesInstanceUID``, ``SeriesNumber``, ``SeriesDescription`` and ``Files`` (count) of the new series.

    Raises:
        InputError: multi-frame or non-DICOM source; a source slice that does not lie on the volume's grid.
    """
    import pydicom
    from pydicom.uid import generate_uid


    data = np.asarray(volume.detach().cpu().numpy() if hasattr(volume, "detach") else volume, dtype=np.float64)
    data = data[0] if data.ndim == 4 else data
    files = source_files(source, series_uid)
    scale = _rescale(data)
    facts = {"SeriesInstanceUID": generate_uid(), "SeriesDescription":
             f"synthetic {CONTRASTS[direction][1]} (mri-translate {__version__})", "Files": len(files)}
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    derivation = (f"SYNTHETIC {CONTRASTS[direction][1]} translated from {CONTRASTS[direction][0]} by mri-translate "
                  f"{__version__} (2.5D CycleGAN, model SHA-256 {model_sha256}); NOT FOR DIAGNOSIS")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    for index, file in enumerate(files, start=1):
        header = pydicom.dcmread(str(file), stop_before_pixels=True)
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(file, "is a multi-frame (enhanced) DICOM: --dicom writes one file per slice only")
        pixels = _slice_pixels(data, inverse, header, file)
        facts["SeriesNumber"] = int(header.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
        _derive(header, facts, stamp, derivation, direction, model_sha256, scale)
        header.PixelData = np.clip(np.rint((pixels - scale["intercept"]) / scale["slope"]), 0, 65535) \
            .astype("<u2").tobytes()
        header["PixelData"].VR = "OW"
        header.save_as(str(folder / f"{index:04d}.dcm"), enforce_file_format=True)
    return facts


def _rescale(data: np.ndarray) -> dict:
    """Slope/intercept that spread the output's range over 0..65535 and a window from its minimum to its
    99.5th percentile, each rounded as its DICOM decimal string will store it."""
    from pydicom.valuerep import DSfloat

    low, high = float(data.min()), float(data.max())
    slope = float(DSfloat((high - low) / 65535 if high > low else 1.0, auto_format=True))
    intercept = float(DSfloat(low, auto_format=True))
    top = float(np.percentile(data, 99.5))
    width = max(top - low, slope)
    return {"slope": slope, "intercept": intercept, "center": low + width / 2, "width": width}


def _slice_pixels(data: np.ndarray, inverse: np.ndarray, header, file) -> np.ndarray:
    """The ``(Rows, Columns)`` pixels of ``data`` that lie where the source slice ``header`` lies.

    Pixel ``(r, c)`` is at ``ImagePositionPatient + c * row_direction * PixelSpacing[1] + r * column_direction
    * PixelSpacing[0]`` (LPS mm); mapped through ``inverse`` (RAS mm -> voxel) it must land on the grid.
    """
    orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(header.PixelSpacing, dtype=np.float64)
    origin = inverse[:3, :3] @ (LPS_TO_RAS @ np.asarray(header.ImagePositionPatient, dtype=np.float64)) + inverse[:3, 3]
    step_c = inverse[:3, :3] @ (LPS_TO_RAS @ orientation[:3]) * spacing[1]
    step_r = inverse[:3, :3] @ (LPS_TO_RAS @ orientation[3:]) * spacing[0]
    off_grid = max(np.abs(v - np.rint(v)).max() for v in (origin, step_c, step_r))
    rows, columns = int(header.Rows), int(header.Columns)
    r, c = np.arange(rows)[None, :, None], np.arange(columns)[None, None, :]
    index = np.rint(origin[:, None, None] + np.rint(step_r)[:, None, None] * r + np.rint(step_c)[:, None, None] * c)
    index = index.astype(np.int64)
    inside = all(0 <= index[a].min() and index[a].max() < data.shape[a] for a in range(3))
    if off_grid > 0.05 or not inside or np.abs(np.rint(step_c)).sum() != 1 or np.abs(np.rint(step_r)).sum() != 1:
        raise InputError(file, f"slice does not lie on the translated volume's grid (off by {off_grid:.3f} voxels, "
                               f"shape {data.shape}); was the series read with another --series?")
    return data[index[0], index[1], index[2]]


def _derive(header, facts: dict, stamp: tuple[str, str], derivation: str, direction: str,
            model_sha256: str | None, scale: dict) -> None:
    """Turn a source slice's header (read without pixels) into the derived slice's header, in place;
    ``stamp`` is the series' (date, time)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    date, time = stamp
    source_class, source_instance = header.SOPClassUID, header.SOPInstanceUID
    header.remove_private_tags()
    for keyword in _DROPPED:
        if keyword in header:
            delattr(header, keyword)
    instance = generate_uid()
    header.file_meta.MediaStorageSOPClassUID = source_class
    header.file_meta.MediaStorageSOPInstanceUID = instance
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("SourceApplicationEntityTitle", "ImplementationClassUID", "ImplementationVersionName"):
        if keyword in header.file_meta:
            delattr(header.file_meta, keyword)  # the writer fills in pydicom's own
    header.SOPInstanceUID = instance
    header.SeriesInstanceUID = facts["SeriesInstanceUID"]
    header.SeriesNumber = facts["SeriesNumber"]
    header.SeriesDescription = facts["SeriesDescription"]
    header.SeriesDate = header.ContentDate = header.InstanceCreationDate = date
    header.SeriesTime = header.ContentTime = header.InstanceCreationTime = time
    header.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    header.DerivationDescription = derivation
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source_class, source_instance
    reference.PurposeOfReferenceCodeSequence = [_code("121322", "Source image for image processing operation")]
    header.SourceImageSequence = [reference]
    equipment = Dataset()
    equipment.Manufacturer = "mri-translate"
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = date + time
    equipment.ContributionDescription = f"{direction} translation, model SHA-256 {model_sha256}"
    equipment.PurposeOfReferenceCodeSequence = [_code("109102", "Processing Equipment")]
    header.ContributingEquipmentSequence = list(header.get("ContributingEquipmentSequence", [])) + [equipment]
    block = header.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", direction)
    block.add_new(0x02, "LO", model_sha256 or "")
    block.add_new(0x03, "LO", __version__)
    header.SamplesPerPixel, header.PhotometricInterpretation = 1, "MONOCHROME2"
    header.BitsAllocated, header.BitsStored, header.HighBit, header.PixelRepresentation = 16, 16, 15, 0
    header.RescaleSlope, header.RescaleIntercept = _ds(scale["slope"]), _ds(scale["intercept"])
    header.WindowCenter, header.WindowWidth = _ds(scale["center"]), _ds(scale["width"])


def _ds(value: float):
    from pydicom.valuerep import DSfloat

    return DSfloat(value, auto_format=True)


def _code(value: str, meaning: str):
    """A DICOM (DCM) coded concept."""
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code
