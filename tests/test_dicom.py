"""Tests of the derived DICOM series writer (mri_translate.dicom) and ``mri-translate convert ... --dicom``: new
UIDs, patient/study/frame of reference kept, geometry identical slice by slice, ImageType and provenance,
16-bit pixels whose rescale gives back the translated values, the affine round trip through load_volume, no
partial series after a failure, non-DICOM and multi-frame inputs refused in one line; none of the source's
acquisition parameters, procedure-step references or people/device identifiers in the derived headers (an
allow-list), SYNTHETIC in SeriesDescription and ImageComments, ``--anonymize`` (PS3.15 Basic Profile), and an
``--overwrite`` whose last rename fails leaving the previous series as it was.

Every check runs on a small oblique series the tests build from a NIfTI (files named out of slice order, with
a private tag and the acquisition and identifying elements of a clinical header), and the end-to-end ones also
on ../shared/data/dicom/mr_t1_mprage_series when present."""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage, generate_uid

from conftest import SYNTHETIC_AFFINE, run_cli, synthetic_volume
from mri_translate import __version__
from mri_translate import dicom as dicom_module
from mri_translate.convert import convert_file
from mri_translate.dicom import PRIVATE_CREATOR, PRIVATE_GROUP, Pseudonyms, source_files, write_series
from mri_translate.errors import InputError
from mri_translate.inference import Translator
from mri_translate.model_file import sha256
from mri_translate.io import atomic_paths, dicom_series, load_volume

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LPS = np.diag([-1.0, -1.0, 1.0])
#: Kept from every source slice into the derived slice.
KEPT = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyID",
        "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "Rows", "Columns", "InstanceNumber")
#: What the source acquired and how (a synthetic image has none of it) ...
ACQUISITION = ("EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "EchoTrainLength", "ScanOptions",
               "MRAcquisitionType", "SequenceName", "ProtocolName", "MagneticFieldStrength", "ImagingFrequency",
               "AcquisitionNumber", "AcquisitionDate", "AcquisitionTime", "ReferencedPerformedProcedureStepSequence",
               "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "RequestAttributesSequence",
               "ReferencedImageSequence")
#: ... and the people, places, devices and other identifiers of the source's header, beyond those needed to file it.
IDENTIFYING = ("AccessionNumber", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
               "InstitutionName", "StationName", "DeviceSerialNumber", "OtherPatientIDs", "PatientAge",
               "PatientWeight", "AdmittingDiagnosesDescription")
#: Every (public) element a derived header may hold: the allow-list copied from the source plus what the writer
#: writes itself.
ALLOWED = {"SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime",
           "TimezoneOffsetFromUTC", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
           "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
           "LongitudinalTemporalInformationModified", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
           "StudyDescription", "AccessionNumber", "ReferringPhysicianName", "Modality", "SeriesInstanceUID",
           "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "Laterality", "PatientPosition",
           "BodyPartExamined", "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer", "SoftwareVersions",
           "ContributingEquipmentSequence", "InstanceNumber", "PatientOrientation", "ContentDate", "ContentTime",
           "ImageType", "ImageComments", "DerivationDescription", "SourceImageSequence", "ImagePositionPatient",
           "ImageOrientationPatient", "PixelSpacing", "PixelAspectRatio", "SliceThickness", "SpacingBetweenSlices",
           "SliceLocation", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
           "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "WindowCenter",
           "WindowWidth", "PixelData", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
           "RepetitionTime", "EchoTime", "EchoTrainLength"}


def oblique_affine() -> np.ndarray:
    """:data:`SYNTHETIC_AFFINE` (LPS, 1.0 x 1.2 x 2.5 mm) turned 20 degrees about z and 10 about x."""
    def rotation(axis, degrees):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    affine = SYNTHETIC_AFFINE.copy()
    affine[:3, :3] = rotation(0, 10) @ rotation(2, 20) @ affine[:3, :3]
    return affine


def write_dicom_series(nifti, folder) -> Path:
    """One classic MR Image Storage file per slice k of a NIfTI, implicit VR: pixel (r, c) = volume[c, r, k],
    with a private (vendor) tag; files are named in a shuffled order so name order is not slice order."""
    image = nib.load(str(nifti))
    volume, affine = np.asarray(image.dataobj), image.affine
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    row_direction, column_direction = (LPS @ affine[:3, 0]) / spacing[0], (LPS @ affine[:3, 1]) / spacing[1]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder = Path(folder)
    folder.mkdir(parents=True)
    names = np.random.default_rng(0).permutation(volume.shape[2])
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.Modality = "TEST-01", "Test^Synthetic", "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        clinical_header(ds)
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 5, k + 1, "t1 test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImagePositionPatient = [float(v) for v in LPS @ (affine[:3, :3] @ [0, 0, k] + affine[:3, 3])]
        ds.ImageOrientationPatient = [float(v) for v in (*row_direction, *column_direction)]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing[1]), float(spacing[0])], float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.LargestImagePixelValue = int(volume[:, :, k].max())
        ds.private_block(0x0029, "VENDOR CSA", create=True).add_new(0x10, "LO", "vendor acquisition data")
        ds.PixelData = np.ascontiguousarray(np.rint(volume[:, :, k].T)).astype("<u2").tobytes()
        ds.save_as(str(folder / f"IMG{names[k]:03d}.dcm"), enforce_file_format=True)
    return folder


def clinical_header(ds) -> None:
    """What a scanner and a hospital put in an MR slice's header besides patient, study and geometry: the
    acquisition (a 3D MPRAGE's timing and sequence), the procedure step and request it was performed for, and
    the people, places and devices involved, each with a value."""
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge, ds.PatientWeight = "19700101", "F", "054Y", 70
    ds.IssuerOfPatientID, ds.OtherPatientIDs = "HOSPITAL-A", "MRN-998877"
    ds.AdmittingDiagnosesDescription = "Vestibular schwannoma"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.StudyDescription = "20240305", "101500", "S4711", "MRI head"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC-4711", "Referrer^Rita"
    ds.OperatorsName, ds.PerformingPhysicianName = "Operator^Olga", "Performer^Paul"
    ds.InstitutionName, ds.StationName, ds.DeviceSerialNumber = "General Hospital", "MR-STATION-3", "SN-0042"
    ds.Manufacturer, ds.SoftwareVersions = "SIEMENS", "syngo MR B17"
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = ["GR", "IR"], ["SP", "MP"], "IR"
    ds.MRAcquisitionType, ds.SequenceName, ds.ProtocolName = "3D", "*tfl3d1", "t1_mprage_sag"
    ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.FlipAngle = 1900, 2.97, 1100, 15
    ds.EchoTrainLength, ds.MagneticFieldStrength, ds.ImagingFrequency = 1, 1.5, 63.676641
    ds.AcquisitionNumber, ds.AcquisitionDate, ds.AcquisitionTime = 1, "20240305", "102000"
    step = Dataset()
    step.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step
    step.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.ReferencedPerformedProcedureStepSequence = [step]
    ds.PerformedProcedureStepID, ds.PerformedProcedureStepStartDate = "PPS-17", "20240305"
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP-99", "SPS-98"
    ds.RequestAttributesSequence = [request]
    localizer = Dataset()
    localizer.ReferencedSOPClassUID, localizer.ReferencedSOPInstanceUID = MRImageStorage, "1.2.3.4.5.6.7.8.10"
    ds.ReferencedImageSequence = [localizer]


@pytest.fixture
def built_series(tmp_path) -> Path:
    """An oblique 13 x 11 x 7 MR series (uint16, 1.0 x 1.2 x 2.5 mm) built from a NIfTI in tmp_path."""
    nifti = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(synthetic_volume()), oblique_affine()), str(nifti))
    return write_dicom_series(nifti, tmp_path / "t1_series")


def headers(folder) -> list:
    return [pydicom.dcmread(str(p)) for p in sorted(Path(folder).glob("*.dcm"))]


def check_derived_series(source, derived, expected=None):
    """Every check of the issue on the written files: UIDs new and unique, patient/study/frame of reference
    and per-slice geometry kept, none of the source's acquisition and identifying elements (absent, or empty
    where DICOM asks for the element), ImageType, SYNTHETIC description and comments, provenance; with
    ``expected`` (a volume in the source's voxel order) also the pixel values of each slice."""
    sources = {ds.SOPInstanceUID: ds for ds in headers(source)}
    written = headers(derived)
    assert len(written) == len(sources)
    uids = {ds.SOPInstanceUID for ds in written}
    assert len(uids) == len(written) and not uids & set(sources)
    series = {ds.SeriesInstanceUID for ds in written}
    assert len(series) == 1 and not series & {ds.SeriesInstanceUID for ds in sources.values()}
    for ds in written:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        (reference,) = ds.SourceImageSequence
        original = sources[reference.ReferencedSOPInstanceUID]
        assert reference.ReferencedSOPClassUID == original.SOPClassUID == ds.SOPClassUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        for keyword in KEPT:
            assert ds.get(keyword) == original.get(keyword), keyword
        for keyword in ACQUISITION + IDENTIFYING:
            assert not ds.get(keyword), f"{keyword}: {ds.get(keyword)!r} (source: {original.get(keyword)!r})"
        assert (ds.ScanningSequence, ds.SequenceVariant) == ("RM", "NONE")  # type 1: "research mode", not the source's
        assert ds.Manufacturer == "mri-translate" and ds.SoftwareVersions == __version__
        assert {e.keyword for e in ds if not e.tag.is_private} <= ALLOWED
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == f"SYNTHETIC T2w from T1w, mri-translate {__version__}"
        assert ds.SeriesNumber == original.SeriesNumber + 1000
        assert "SYNTHETIC T2w" in ds.DerivationDescription and "NOT FOR DIAGNOSIS" in ds.DerivationDescription
        assert ds.ImageComments.startswith("SYNTHETIC T2w") and "NOT FOR DIAGNOSIS" in ds.ImageComments
        assert "PatientIdentityRemoved" not in ds or ds.PatientIdentityRemoved == original.PatientIdentityRemoved
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (ds.Rows, ds.Columns)
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        model_hash = block[0x02].value
        assert block[0x01].value == "t1-to-t2" and len(model_hash) == 64 and block[0x03].value == __version__
        (equipment,) = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "mri-translate"]
        assert model_hash in equipment.ContributionDescription and model_hash in ds.DerivationDescription
        assert not [e for e in ds if e.tag.is_private and e.tag.group != PRIVATE_GROUP]  # vendor tags dropped
        assert "LargestImagePixelValue" not in ds
        low = float(ds.RescaleIntercept)
        assert float(ds.WindowWidth) > 0 and float(ds.WindowCenter) - float(ds.WindowWidth) / 2 == pytest.approx(low)
        if expected is not None:
            k = int(round(original.InstanceNumber)) - 1  # built series: InstanceNumber k + 1 is slice k
            values = ds.pixel_array * float(ds.RescaleSlope) + low
            np.testing.assert_allclose(values, expected[:, :, k].T, atol=float(ds.RescaleSlope) / 2 + 1e-6)
    return written


def test_built_series_reads_back_as_its_nifti(built_series):
    """The test series itself: load_volume finds the NIfTI's grid and voxels (so it is a fair source)."""
    volume = load_volume(built_series)
    np.testing.assert_allclose(volume.meta["original_affine"], oblique_affine(), atol=1e-4)
    np.testing.assert_array_equal(volume[0].numpy(), np.rint(synthetic_volume()))


def test_write_series_maps_every_slice_and_keeps_the_study(built_series, tmp_path):
    source = load_volume(built_series)
    translated = source[0].numpy() * 2.5 - 40.0  # negative values too: the intercept must carry them
    facts = write_series(translated, source.meta["original_affine"], built_series, tmp_path / "out", "t1-to-t2",
                         "ab" * 32)
    check_derived_series(built_series, tmp_path / "out", expected=translated)
    assert facts["Files"] == 7 and facts["SeriesNumber"] == 1005
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:04d}.dcm" for i in range(1, 8)]
    back = load_volume(tmp_path / "out")
    np.testing.assert_allclose(back.meta["original_affine"], source.meta["original_affine"], atol=1e-6)
    slope = float(headers(tmp_path / "out")[0].RescaleSlope)
    np.testing.assert_allclose(back[0].numpy(), translated, atol=slope / 2 + 1e-3)


def source_values(ds) -> set[bytes]:
    """Every non-empty string value in a header (sequences included), as bytes."""
    values = set()
    for element in ds.iterall():
        if element.VR in ("SQ", "OB", "OW", "UN") or element.value in (None, ""):
            continue
        for value in element.value if element.VM > 1 else [element.value]:
            text = str(value).strip()
            if len(text) >= 4:
                values.add(text.encode())
    return values


def test_derived_headers_hold_none_of_the_source_acquisition(built_series, tmp_path):
    """The source has every acquisition parameter, procedure-step reference and identifier of ACQUISITION and
    IDENTIFYING; the derived series has none of them (absent, or empty where DICOM asks for the element), not a
    byte of their values, and keeps patient, study, frame of reference and geometry."""
    source = load_volume(built_series)
    write_series(source[0].numpy(), source.meta["original_affine"], built_series, tmp_path / "out", "t1-to-t2",
                 "ab" * 32)
    original = headers(built_series)[0]
    leaked = set()  # every value of them, as bytes
    for keyword in ACQUISITION + IDENTIFYING + ("ScanningSequence", "SequenceVariant", "Manufacturer",
                                                "SoftwareVersions"):
        assert original.get(keyword), keyword  # the source has it, with a value
        element = original.data_element(keyword)
        leaked |= source_values(Dataset({element.tag: element}))
    leaked -= {b"20240305", MRImageStorage.encode()}  # the StudyDate (the acquisition's day too), the SOP class
    for ds, path in zip(check_derived_series(built_series, tmp_path / "out"), sorted((tmp_path / "out").iterdir())):
        named = ("EchoTime", "RepetitionTime", "InversionTime", "SequenceName",  # those the issue names
                 "ReferencedPerformedProcedureStepSequence", "AccessionNumber", "OperatorsName", "DeviceSerialNumber",
                 "OtherPatientIDs")
        assert not [keyword for keyword in named if ds.get(keyword)] and ds.ScanningSequence == "RM"
        raw = path.read_bytes()
        assert not [value for value in leaked if value in raw]
        assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == ("TEST-01", "Test^Synthetic",
                                                                       original.StudyInstanceUID)
        assert ds.FrameOfReferenceUID == original.FrameOfReferenceUID
        assert "SYNTHETIC T2w from T1w" in ds.SeriesDescription and "SYNTHETIC" in ds.ImageComments
        assert "PatientIdentityRemoved" not in ds


def test_anonymize_removes_patient_identity(built_series, tmp_path):
    """``anonymize``: PatientName/PatientID one pseudonym, birth date, sex, study ID and dates empty; no other
    IDs, issuer, study description or source references; new study and frame-of-reference UIDs shared by every
    slice; PatientIdentityRemoved YES with the method; none of the source's identifying values in any file; the
    geometry and the pixels as without it."""
    source = load_volume(built_series)
    facts = write_series(source[0].numpy(), source.meta["original_affine"], built_series, tmp_path / "anon",
                         "t1-to-t2", "ab" * 32, anonymize=True)
    assert facts["Anonymized"] is True
    originals = headers(built_series)
    identifying = {b"TEST-01", b"Test^Synthetic", b"19700101", b"HOSPITAL-A", b"S4711", b"MRI head",
                   originals[0].StudyInstanceUID.encode(), originals[0].FrameOfReferenceUID.encode(),
                   originals[0].SeriesInstanceUID.encode(), *(ds.SOPInstanceUID.encode() for ds in originals)}
    written = headers(tmp_path / "anon")
    paths = sorted((tmp_path / "anon").iterdir())
    assert len(written) == 7
    study, frame = written[0].StudyInstanceUID, written[0].FrameOfReferenceUID
    assert study != originals[0].StudyInstanceUID and frame != originals[0].FrameOfReferenceUID and study != frame
    for ds, path in zip(written, paths):
        assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("ANON-") and len(ds.PatientID) == 17
        assert ds.PatientID == written[0].PatientID
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
                        "ReferringPhysicianName", "ContentDate", "ContentTime"):
            assert keyword in ds and not ds.get(keyword), keyword  # type 2: present, empty
        for keyword in ("OtherPatientIDs", "IssuerOfPatientID", "StudyDescription", "PatientAge", "SourceImageSequence",
                        "SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime",
                        "TimezoneOffsetFromUTC") + IDENTIFYING[2:]:
            assert keyword not in ds, keyword
        assert not [keyword for keyword in ACQUISITION if ds.get(keyword)]
        assert "ContributionDateTime" not in ds.ContributingEquipmentSequence[0]
        assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (study, frame)
        assert ds.PatientIdentityRemoved == "YES" and "PS3.15" in ds.DeidentificationMethod
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113111"]
        assert ds.SeriesDescription == f"SYNTHETIC T2w from T1w, mri-translate {__version__}"
        assert ds.ImageComments.startswith("SYNTHETIC T2w")
        assert {e.keyword for e in ds if not e.tag.is_private} <= ALLOWED
        raw = path.read_bytes()
        assert not [value for value in identifying if value in raw]
    back = load_volume(tmp_path / "anon")
    np.testing.assert_allclose(back.meta["original_affine"], source.meta["original_affine"], atol=1e-6)
    slope = float(written[0].RescaleSlope)
    np.testing.assert_allclose(back[0].numpy(), source[0].numpy(), atol=slope / 2 + 1e-3)


def test_pseudonyms_are_one_per_patient_and_call(built_series, tmp_path):
    """One :class:`Pseudonyms` (one call): a second series of the same patient and study gets the same
    pseudonym and new study UID; another call gets others (nothing is derived from the originals)."""
    source = load_volume(built_series)
    shared, other = Pseudonyms(), Pseudonyms()
    for name, pseudonyms in (("a", shared), ("b", shared), ("c", other)):
        write_series(source[0].numpy(), source.meta["original_affine"], built_series, tmp_path / name, "t1-to-t2",
                     None, anonymize=pseudonyms)
    a, b, c = (headers(tmp_path / name)[0] for name in "abc")
    assert (a.PatientID, a.StudyInstanceUID, a.FrameOfReferenceUID) == (b.PatientID, b.StudyInstanceUID,
                                                                        b.FrameOfReferenceUID)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.PatientID != c.PatientID and a.StudyInstanceUID != c.StudyInstanceUID
    assert shared.patient("TEST-02") not in (a.PatientID, shared.patient("TEST-03"))


def test_convert_dicom_anonymize_cli(capsys, built_series, tmp_path, tiny_run):
    """``convert --dicom --anonymize``: a batch of two series of one patient gets one pseudonym and one new study
    UID; each sidecar says it was anonymised (and a plain run says it was not); ``--anonymize`` without ``--dicom``
    is refused in one line."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("run_1", "run_2"):
        shutil.copytree(built_series, cohort / name)
    status, stdout, _ = run_cli(capsys, "convert", cohort, tmp_path / "out", "--dicom", "--anonymize", "--model",
                                tiny_run, "--device", "cpu", "--no-progress")
    assert status == 0 and "2 converted" in stdout
    first, second = (headers(tmp_path / "out" / f"{name}_T2w") for name in ("run_1", "run_2"))
    assert first[0].PatientID.startswith("ANON-") and first[0].PatientIdentityRemoved == "YES"
    assert (first[0].PatientID, first[0].StudyInstanceUID) == (second[0].PatientID, second[0].StudyInstanceUID)
    assert first[0].StudyInstanceUID != headers(built_series)[0].StudyInstanceUID
    for name in ("run_1", "run_2"):
        assert json.loads((tmp_path / "out" / f"{name}_T2w.json").read_text())["DICOM"]["Anonymized"] is True
    assert run_cli(capsys, "convert", built_series, tmp_path / "plain", "--dicom", "--model", tiny_run,
                   "--device", "cpu")[0] == 0
    assert json.loads((tmp_path / "plain.json").read_text())["DICOM"]["Anonymized"] is False
    assert headers(tmp_path / "plain")[0].PatientID == "TEST-01"
    status, _, stderr = run_cli(capsys, "convert", built_series, tmp_path / "x.nii.gz", "--anonymize", "--model",
                                tiny_run, "--device", "cpu")
    assert status == 2 and stderr.count("\n") == 1 and "--anonymize" in stderr and "--dicom" in stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_write_series_refuses_a_volume_off_the_source_grid(built_series, tmp_path):
    source = load_volume(built_series)
    shifted = source.meta["original_affine"].copy()
    shifted[:3, 3] += 0.4 * shifted[:3, 0]  # 0.4 voxel along x
    with pytest.raises(InputError, match="does not lie on the translated volume's grid"):
        write_series(source[0].numpy(), shifted, built_series, tmp_path / "out", "t1-to-t2", None)


def test_convert_dicom_cli_round_trip(capsys, built_series, tmp_path, tiny_run):
    out = tmp_path / "derived" / "t2_synthetic"
    status, stdout, _ = run_cli(capsys, "convert", built_series, out, "--dicom", "--model", tiny_run,
                                "--device", "cpu", "--no-progress", "--gif", tmp_path / "sweep.gif")
    assert status == 0 and str(out) in stdout
    nifti = tmp_path / "t2.nii.gz"
    assert run_cli(capsys, "convert", built_series, nifti, "--model", tiny_run, "--device", "cpu")[0] == 0
    expected = load_volume(nifti)[0].numpy()
    check_derived_series(built_series, out, expected=expected)  # the DICOM slices hold the NIfTI's voxels
    back, source = load_volume(out), load_volume(built_series)
    np.testing.assert_allclose(back.meta["original_affine"], source.meta["original_affine"], atol=1e-6)
    sidecar = json.loads((out.parent / "t2_synthetic.json").read_text())
    assert sidecar["DICOM"]["SeriesInstanceUID"] == headers(out)[0].SeriesInstanceUID
    assert sidecar["DICOM"]["Files"] == 7 and sidecar["Parameters"]["dtype"] == "uint16"
    assert sidecar["ModelSHA256"] == sha256(Path(tiny_run) / "models" / "model.pt")
    assert headers(out)[0].private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value == sidecar["ModelSHA256"]
    assert (tmp_path / "sweep.gif").stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] in (["t2_synthetic", "t2_synthetic.json"],
                                                      ["t2_synthetic.json", "t2_synthetic"])
    first = headers(out)[0].SeriesInstanceUID
    assert run_cli(capsys, "convert", built_series, out, "--dicom", "--model", tiny_run, "--device", "cpu")[0] == 2
    assert run_cli(capsys, "convert", built_series, out, "--dicom", "--model", tiny_run, "--device", "cpu",
                   "--overwrite")[0] == 0
    assert headers(out)[0].SeriesInstanceUID != first and len(headers(out)) == 7  # a rerun never reuses UIDs


def test_no_partial_series_after_a_failure(monkeypatch, built_series, tmp_path, tiny_run):
    """The writer fails at the 4th slice: neither a folder nor a sidecar appears, no temporary is left, and
    a series written before stays as it was."""
    translator = Translator.from_run(tiny_run, device="cpu")
    out = tmp_path / "out" / "series"
    real, calls = dicom_module._derive, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(dicom_module, "_derive", failing)
    with pytest.raises(InputError, match="No space left on device"):
        convert_file(translator, built_series, out, dicom=True)
    assert list((tmp_path / "out").iterdir()) == [] and len(calls) == 4
    monkeypatch.setattr(dicom_module, "_derive", real)
    convert_file(translator, built_series, out, dicom=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(dicom_module, "_derive", failing)
    with pytest.raises(InputError):
        convert_file(translator, built_series, out, dicom=True, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["series", "series.json"]


def failing_rename(monkeypatch, name: str) -> list:
    """Make ``os.replace`` of a new output onto a path called ``name`` fail (ENOSPC); every other rename works
    (putting a previous version, ``.NAME.tmp-PID-old``, back included). Returns the failed attempts."""
    real, attempts = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name and not Path(src).name.endswith("-old"):
            attempts.append(dst)
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return attempts


def test_overwrite_whose_sidecar_rename_fails_keeps_the_previous_series(monkeypatch, built_series, tmp_path,
                                                                        tiny_run):
    """``--overwrite`` of a series and its sidecar: the series folder is renamed into place, then the sidecar's
    rename (the last) fails. The error names the output, and the previous series and sidecar are back, byte for
    byte, with no temporary left: neither the old nor the new series is lost."""
    translator = Translator.from_run(tiny_run, device="cpu")
    out = tmp_path / "out" / "series"
    convert_file(translator, built_series, out, dicom=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    sidecar = (tmp_path / "out" / "series.json").read_bytes()
    attempts = failing_rename(monkeypatch, "series.json")
    with pytest.raises(InputError, match="No space left on device"):
        convert_file(translator, built_series, out, dicom=True, overwrite=True)
    monkeypatch.undo()
    assert attempts
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert (tmp_path / "out" / "series.json").read_bytes() == sidecar
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["series", "series.json"]
    convert_file(translator, built_series, out, dicom=True, overwrite=True)  # and a rerun replaces both
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


@pytest.mark.parametrize("failing", ["a.nii.gz", "a.json", "folder"])
def test_atomic_paths_failed_rename_keeps_every_previous_output(monkeypatch, tmp_path, failing):
    """:func:`atomic_paths` over a file, a folder and a sidecar that all exist: whichever rename fails, every
    output is as it was before, and nothing else is left in the folder."""
    paths = [tmp_path / "a.nii.gz", tmp_path / "folder", tmp_path / "a.json"]
    paths[0].write_bytes(b"old image")
    paths[1].mkdir()
    (paths[1] / "0001.dcm").write_bytes(b"old slice")
    paths[2].write_text("old sidecar")
    failing_rename(monkeypatch, failing)
    with pytest.raises(InputError, match="No space left on device"):
        with atomic_paths(*paths) as (image, folder, sidecar):
            image.write_bytes(b"new image")
            folder.mkdir()
            (folder / "0001.dcm").write_bytes(b"new slice")
            sidecar.write_text("new sidecar")
    monkeypatch.undo()
    assert paths[0].read_bytes() == b"old image" and paths[2].read_text() == "old sidecar"
    assert [p.name for p in paths[1].iterdir()] == ["0001.dcm"] and (paths[1] / "0001.dcm").read_bytes() == b"old slice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.nii.gz", "folder"]


def test_non_dicom_input_is_refused_in_one_line(capsys, synthetic_nifti, tmp_path, tiny_run):
    status, _, stderr = run_cli(capsys, "convert", synthetic_nifti, tmp_path / "out", "--dicom", "--model", tiny_run)
    assert status == 2 and stderr.count("\n") == 1
    assert str(synthetic_nifti) in stderr and "--dicom needs a DICOM input" in stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_multiframe_input_is_refused(built_series, tmp_path):
    ds = pydicom.dcmread(str(next(built_series.iterdir())))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    del ds.ImagePositionPatient
    (tmp_path / "enhanced").mkdir()
    ds.save_as(str(tmp_path / "enhanced" / "multi.dcm"))
    for source in (tmp_path / "enhanced", tmp_path / "enhanced" / "multi.dcm"):
        with pytest.raises(InputError, match=r"multi-frame \(enhanced\) DICOM \(2 frames\)"):
            source_files(source)


def test_shared_multiframe_file_is_refused_in_one_line(capsys, shared_data, tmp_path, tiny_run):
    source = shared_data / "dicom" / "single" / "emri_small.dcm"
    status, _, stderr = run_cli(capsys, "convert", source, tmp_path / "out", "--dicom", "--model", tiny_run)
    assert status == 2 and stderr.count("\n") == 1 and "multi-frame" in stderr and str(source) in stderr
    assert not (tmp_path / "out").exists()


def test_batch_of_series_folders(capsys, built_series, tmp_path, tiny_run):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("patient_a", "patient_b"):
        shutil.copytree(built_series, cohort / name)
    status, stdout, _ = run_cli(capsys, "convert", cohort, tmp_path / "out", "--dicom", "--model", tiny_run,
                                "--device", "cpu", "--no-progress")
    assert status == 0 and "2 converted" in stdout
    for name in ("patient_a", "patient_b"):
        check_derived_series(cohort / name, tmp_path / "out" / f"{name}_T2w")
        assert (tmp_path / "out" / f"{name}_T2w.json").is_file()
    status, stdout, _ = run_cli(capsys, "convert", cohort, tmp_path / "out", "--dicom", "--model", tiny_run,
                                "--device", "cpu", "--no-progress")
    assert status == 0 and "2 skipped" in stdout


@pytest.mark.slow
def test_shared_mprage_series(capsys, shared_data, tmp_path, tiny_run):
    source = shared_data / "dicom" / "mr_t1_mprage_series"
    out = tmp_path / "mprage_t2"
    status, _, _ = run_cli(capsys, "convert", source, out, "--dicom", "--model", tiny_run, "--device", "cpu")
    assert status == 0
    written = check_derived_series(source, out)
    assert len(written) == 48 and (written[0].Rows, written[0].Columns) == (512, 512)
    (uid,) = dicom_series(out)
    back, original = load_volume(out), load_volume(source)
    assert back.shape == original.shape
    np.testing.assert_allclose(back.meta["original_affine"], original.meta["original_affine"], atol=1e-6)
    assert uid == written[0].SeriesInstanceUID
