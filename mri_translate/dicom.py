"""Write a translated volume as a derived DICOM series, one file per source slice, under the source series'
patient, study and frame of reference, so a PACS or viewer files it beside the original.

Why pydicom (not highdicom): highdicom builds the *enhanced* multi-frame objects (Legacy Converted
Enhanced MR, segmentations, parametric maps); a classic MR Image Storage object per slice, on the
source slice's own geometry, is what every PACS, viewer and DICOM router accepts, keeps each slice's
geometry exactly as acquired, and needs nothing beyond pydicom, already a dependency.

What each file of the derived series holds (what to tell a PACS administrator). The derived header is
built from an allow-list, never by copying the source's: a synthetic image must not claim the source's
acquisition, and carries no more of the source's identifying data than filing it needs.

- copied from the source slice: patient and study identity (PatientName, PatientID, IssuerOfPatientID,
  PatientBirthDate, PatientSex, the source's PatientIdentityRemoved/DeidentificationMethod,
  StudyInstanceUID, StudyDate, StudyTime, StudyID, StudyDescription), so it files beside the source; frame
  of reference and geometry (FrameOfReferenceUID, PositionReferenceIndicator, PatientPosition,
  ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, SpacingBetweenSlices,
  SliceLocation, InstanceNumber, Laterality, BodyPartExamined); SOPClassUID, Modality, Rows, Columns,
  SpecificCharacterSet (see :data:`KEPT`);
- nothing else: no acquisition parameters (EchoTime, RepetitionTime, InversionTime, FlipAngle,
  ScanningSequence, SequenceName, ProtocolName, MagneticFieldStrength, ...), no procedure-step or request
  references (ReferencedPerformedProcedureStepSequence, RequestAttributesSequence, PerformedProcedureStep*),
  no people, places or devices (AccessionNumber, ReferringPhysicianName, OperatorsName, InstitutionName,
  StationName, DeviceSerialNumber, OtherPatientIDs, ...), no private (vendor) tags such as Siemens CSA
  headers. The MR Image module's mandatory (type 1) ScanningSequence and SequenceVariant say ``RM``
  (research mode) and ``NONE``; its type 2 acquisition attributes (EchoTime, RepetitionTime,
  EchoTrainLength, ScanOptions, MRAcquisitionType) and the study's AccessionNumber and
  ReferringPhysicianName are present but empty, as DICOM asks for a value that is unknown;
- a new SeriesInstanceUID and new SOPInstanceUIDs (``pydicom.uid.generate_uid``, never reused);
  SeriesNumber = the source's + 1000; SeriesDescription ``SYNTHETIC T2w from T1w, mri-translate
  <version>``; ImageComments and DerivationDescription saying it is synthetic, computed by which model, and
  not for diagnosis;
- ImageType ``DERIVED\\SECONDARY\\OTHER`` and a SourceImageSequence item pointing at the source slice (purpose
  DCM 121322, "Source image for image processing operation");
- unsigned 16-bit pixels; RescaleSlope/RescaleIntercept map them back to the translated intensities
  (``value = stored * slope + intercept``, the output's minimum at 0 and its maximum at 65535), and
  WindowCenter/WindowWidth span the output's minimum to its 99.5th percentile;
- Manufacturer ``mri-translate`` and SoftwareVersions (the equipment that made these pixels), a
  ContributingEquipmentSequence item (the same, purpose DCM 109102 "Processing Equipment",
  ContributionDescription with direction and model SHA-256), and the same facts in a private block of group
  0x0011, private creator ``mri-translate``: ``(0011,xx01)`` LO direction (``t1-to-t2``), ``(0011,xx02)``
  LO model SHA-256 (64 hex digits), ``(0011,xx03)`` LO mri-translate version.

With ``anonymize`` (``convert --dicom --anonymize``, for research export) the patient's identity goes too,
following the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile on what is left:
PatientName and PatientID become one random pseudonym (``ANON-`` and 12 hex digits, the same for one source
patient within one call, derived from nothing), PatientBirthDate, PatientSex, StudyID, StudyDate, StudyTime
and ContentDate/ContentTime are empty; IssuerOfPatientID, StudyDescription, TimezoneOffsetFromUTC,
LongitudinalTemporalInformationModified, the series and instance creation dates and times,
ContributionDateTime and the SourceImageSequence (it names the source's SOP instances) are removed (so is
the source's own de-identification record); StudyInstanceUID and FrameOfReferenceUID are replaced by new UIDs
(one per source UID within the call, so the slices, and series of one study, stay together);
PatientIdentityRemoved is ``YES``, DeidentificationMethod names mri-translate and the profile, and the
DeidentificationMethodCodeSequence holds DCM 113100 (Basic Application Confidentiality Profile) and 113111
(Retain Safe Private Option: the private block above holds only the translation's facts). The descriptions
mri-translate writes itself (SeriesDescription, ImageComments, DerivationDescription, the equipment item)
are kept: they name the software, the model and the direction, nothing of the patient. The pixels are the
translation of the source's, so anything burned into the source image is not removed (no Clean Pixel
Data claim). The JSON sidecar beside the folder still names the source path: leave it out of an export.

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
#: The only elements copied from a source slice (when present): patient and study identity (to file the series
#: beside the source), frame of reference and geometry, and what the pixels are. Everything else is dropped.
IDENTITY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
            "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription",
            "LongitudinalTemporalInformationModified", "TimezoneOffsetFromUTC")
GEOMETRY = ("FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition", "PatientOrientation",
            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelAspectRatio", "SliceThickness",
            "SpacingBetweenSlices", "SliceLocation", "InstanceNumber", "Laterality", "BodyPartExamined")
PIXELS = ("SpecificCharacterSet", "SOPClassUID", "Modality", "Rows", "Columns")
KEPT = IDENTITY + GEOMETRY + PIXELS
#: Type 2 elements (present, empty when unknown): written empty when the source has none ...
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "PositionReferenceIndicator")
#: ... and always empty: the source's order (AccessionNumber) and people are not the synthetic image's, and the
#: MR Image module's acquisition has no value for it (ScanningSequence/SequenceVariant, type 1: ``RM``/``NONE``).
EMPTY_STUDY = ("AccessionNumber", "ReferringPhysicianName")
EMPTY_MR = ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength")
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: With ``anonymize``: emptied (PS3.15 Basic Profile Z), removed (X) and replaced by new UIDs (U).
ANONYMIZED_EMPTY = ("PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime")
ANONYMIZED_REMOVED = ("IssuerOfPatientID", "StudyDescription", "TimezoneOffsetFromUTC",
                      "LongitudinalTemporalInformationModified", "PatientIdentityRemoved", "DeidentificationMethod",
                      "DeidentificationMethodCodeSequence")
ANONYMIZED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")


class Pseudonyms:
    """The replacements of one anonymising call (:func:`write_series` with ``anonymize``): each source patient
    gets one random pseudonym (``ANON-`` and 12 hex digits) and each source UID one new UID, the same every time
    within this object, so the slices of a series, and the series of one patient or study in a batch, stay
    together; nothing is derived from the originals (no hash), so nothing leads back to them."""

    def __init__(self):
        self._patients: dict[tuple[str, str], str] = {}
        self._uids: dict[str, str] = {}

    def patient(self, patient_id: str, patient_name: str = "") -> str:
        import secrets

        key = (str(patient_id), str(patient_name))
        if key not in self._patients:
            used = set(self._patients.values())
            pseudonym = f"ANON-{secrets.token_hex(6).upper()}"
            while pseudonym in used:
                pseudonym = f"ANON-{secrets.token_hex(6).upper()}"
            self._patients[key] = pseudonym
        return self._patients[key]

    def uid(self, uid: str) -> str:
        from pydicom.uid import generate_uid

        return self._uids.setdefault(str(uid), generate_uid())


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
                 series_uid: str | None = None, anonymize: bool | Pseudonyms = False) -> dict:
    """Write ``volume`` as a derived DICOM series into ``folder`` (created; pass a temporary, see
    :func:`mri_translate.io.atomic_paths`), one file per source slice, named ``0001.dcm`` ... in slice order;
    the header of each is built from the allow-list :data:`KEPT` (see the module's docstring).

    Args:
        volume: translated ``(1, X, Y, Z)`` or ``(X, Y, Z)`` tensor/array in the source's voxel order.
        affine: voxel -> RAS mm of that voxel order (``load_volume(source).meta["original_affine"]``).
        source: the DICOM series folder (or file) that was translated.
        folder: where the files go.
        direction: ``t1-to-t2`` or ``t2-to-t1``.
        model_sha256: checksum of the model file, recorded in the headers.
        series_uid: which series of ``source`` was read.
        anonymize: also remove the patient's identity (PS3.15 Basic Profile, for research export); a
            :class:`Pseudonyms` to share the pseudonyms and new UIDs with other series of the same call.

    Returns:
        ``SeriesInstanceUID``, ``SeriesNumber``, ``SeriesDescription``, ``Files`` (count) and ``Anonymized`` of
        the new series.

    Raises:
        InputError: multi-frame or non-DICOM source; a source slice that does not lie on the volume's grid.
    """
    import pydicom
    from pydicom.uid import generate_uid

    data = np.asarray(volume.detach().cpu().numpy() if hasattr(volume, "detach") else volume, dtype=np.float64)
    data = data[0] if data.ndim == 4 else data
    files = source_files(source, series_uid)
    pseudonyms = (anonymize if isinstance(anonymize, Pseudonyms) else Pseudonyms()) if anonymize else None
    scale = _rescale(data)
    a, b = CONTRASTS[direction]
    facts = {"SeriesInstanceUID": generate_uid(),
             "SeriesDescription": f"SYNTHETIC {b} from {a}, mri-translate {__version__}"[:64],
             "Files": len(files), "Anonymized": pseudonyms is not None}
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    derivation = (f"SYNTHETIC {b} translated from {a} by mri-translate {__version__} (2.5D CycleGAN, model "
                  f"SHA-256 {model_sha256}); NOT FOR DIAGNOSIS")
    comments = (f"SYNTHETIC {b} computed from a {a} series by mri-translate {__version__} ({direction}, model "
                f"SHA-256 {model_sha256}): not an acquisition, no acquisition parameters apply; NOT FOR DIAGNOSIS")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    for index, file in enumerate(files, start=1):
        header = pydicom.dcmread(str(file), stop_before_pixels=True)
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(file, "is a multi-frame (enhanced) DICOM: --dicom writes one file per slice only")
        pixels = _slice_pixels(data, inverse, header, file)
        facts["SeriesNumber"] = int(header.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
        derived = _derive(header, facts, stamp, (derivation, comments), direction, model_sha256, scale, pseudonyms)
        derived.PixelData = np.clip(np.rint((pixels - scale["intercept"]) / scale["slope"]), 0, 65535) \
            .astype("<u2").tobytes()
        derived["PixelData"].VR = "OW"
        derived.save_as(str(folder / f"{index:04d}.dcm"), enforce_file_format=True)
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


def _derive(header, facts: dict, stamp: tuple[str, str], texts: tuple[str, str], direction: str,
            model_sha256: str | None, scale: dict, pseudonyms: Pseudonyms | None = None):
    """The derived slice's header (without pixels) for a source slice's ``header``: the allow-listed elements
    (:data:`KEPT`) copied, the rest written anew; ``stamp`` is the series' (date, time), ``texts`` its
    (DerivationDescription, ImageComments); with ``pseudonyms`` the patient's identity is removed too."""
    import copy

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    date, time = stamp
    derived = Dataset()
    for keyword in KEPT:
        if keyword in header:
            derived.add(copy.deepcopy(header.data_element(keyword)))
    source_class, source_instance = header.SOPClassUID, header.SOPInstanceUID
    instance = generate_uid()
    derived.file_meta = FileMetaDataset()
    derived.file_meta.MediaStorageSOPClassUID = source_class
    derived.file_meta.MediaStorageSOPInstanceUID = instance
    derived.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    derived.SOPInstanceUID = instance
    for keyword in EMPTY_STUDY + tuple(k for k in TYPE_2 if k not in derived):
        setattr(derived, keyword, None)
    derived.SeriesInstanceUID = facts["SeriesInstanceUID"]
    derived.SeriesNumber = facts["SeriesNumber"]
    derived.SeriesDescription = facts["SeriesDescription"]
    derived.SeriesDate = derived.ContentDate = derived.InstanceCreationDate = date
    derived.SeriesTime = derived.ContentTime = derived.InstanceCreationTime = time
    derived.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    derived.DerivationDescription, derived.ImageComments = texts
    if str(source_class) == MR_IMAGE_STORAGE:  # the MR Image module: no acquisition to describe
        derived.ScanningSequence, derived.SequenceVariant = "RM", "NONE"
        for keyword in EMPTY_MR:
            setattr(derived, keyword, None)
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source_class, source_instance
    reference.PurposeOfReferenceCodeSequence = [_code("121322", "Source image for image processing operation")]
    derived.SourceImageSequence = [reference]
    derived.Manufacturer, derived.SoftwareVersions = "mri-translate", __version__
    equipment = Dataset()
    equipment.Manufacturer = "mri-translate"
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = date + time
    equipment.ContributionDescription = f"{direction} translation, model SHA-256 {model_sha256}"
    equipment.PurposeOfReferenceCodeSequence = [_code("109102", "Processing Equipment")]
    derived.ContributingEquipmentSequence = [equipment]
    block = derived.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", direction)
    block.add_new(0x02, "LO", model_sha256 or "")
    block.add_new(0x03, "LO", __version__)
    derived.SamplesPerPixel, derived.PhotometricInterpretation = 1, "MONOCHROME2"
    derived.BitsAllocated, derived.BitsStored, derived.HighBit, derived.PixelRepresentation = 16, 16, 15, 0
    derived.RescaleSlope, derived.RescaleIntercept = _ds(scale["slope"]), _ds(scale["intercept"])
    derived.WindowCenter, derived.WindowWidth = _ds(scale["center"]), _ds(scale["width"])
    if pseudonyms is not None:
        _anonymize(derived, header, pseudonyms)
    return derived


def _anonymize(derived, header, pseudonyms: Pseudonyms) -> None:
    """Remove the patient's identity from a derived header, in place (PS3.15 Annex E Basic Profile on the
    elements :func:`_derive` writes; see the module's docstring)."""
    pseudonym = pseudonyms.patient(header.get("PatientID", ""), header.get("PatientName", ""))
    derived.PatientName = derived.PatientID = pseudonym
    for keyword in ANONYMIZED_EMPTY + ("ContentDate", "ContentTime"):
        setattr(derived, keyword, None)
    for keyword in ANONYMIZED_REMOVED + ("SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime",
                                         "SourceImageSequence"):
        if keyword in derived:
            delattr(derived, keyword)
    for keyword in ANONYMIZED_UIDS:
        if keyword in derived:
            setattr(derived, keyword, pseudonyms.uid(derived.data_element(keyword).value))
    del derived.ContributingEquipmentSequence[0].ContributionDateTime
    derived.PatientIdentityRemoved = "YES"
    derived.DeidentificationMethod = f"mri-translate {__version__}: DICOM PS3.15 E Basic Profile"[:64]
    derived.DeidentificationMethodCodeSequence = [_code("113100", "Basic Application Confidentiality Profile"),
                                                  _code("113111", "Retain Safe Private Option")]


def _ds(value: float):
    from pydicom.valuerep import DSfloat

    return DSfloat(value, auto_format=True)


def _code(value: str, meaning: str):
    """A DICOM (DCM) coded concept."""
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code
