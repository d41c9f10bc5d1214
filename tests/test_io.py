"""Tests of mri_translate.io: every real file loads with the geometry an independent reader sees (nibabel,
SimpleITK, PIL), NIfTI and 2D images round-trip exactly, writes are atomic, and bad inputs fail with one clear
``InputError`` that starts with the path."""

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (SYNTHETIC_AFFINE, SYNTHETIC_SHAPE, SYNTHETIC_SPACING, sitk_ras_affine, synthetic_volume,
                      write_zero_sized_nifti)
from mri_translate.errors import InputError, MriTranslateError
from mri_translate.io import load_volume, save_image_2d, save_volume

NIFTI_FILES = {
    "avg152_las_uint8": ("volumes/avg152/avg152T1.nii", "LAS"),
    "tcga_du_7294_lps_int16": ("volumes/tcga_du_7294/t1.nii.gz", "LPS"),
    "tcga_fg_6692_native_las_5mm": ("volumes/tcga_fg_6692_native/t1_ax_se.nii.gz", "LAS"),
}
SERIES_DIR = "dicom/mr_t1_mprage_series"
SINGLE_DICOM = ("dicom/single/MR_small.dcm", "dicom/single/emri_small.dcm")
PNG_FILE = "seed_2d/TrainT1/Image #10.png"


def voxels(volume) -> np.ndarray:
    """(X, Y, Z) float32 numpy array of a loaded (1, X, Y, Z) MetaTensor."""
    assert volume.ndim == 4 and volume.shape[0] == 1
    assert volume.dtype == torch.float32
    return volume[0].as_tensor().numpy()


def sitk_voxels(image) -> np.ndarray:
    """SimpleITK pixels as an (X, Y, Z) array (GetArrayFromImage gives (Z, Y, X))."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return np.transpose(array.reshape((-1,) + array.shape[-2:]), (2, 1, 0))


def assert_input_error(excinfo, path, *words):
    """The message starts with the path and contains every one of ``words`` (case-insensitive)."""
    message = str(excinfo.value)
    assert message.startswith(f"{path}: "), message
    assert excinfo.value.path == str(path)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert "\n" not in message


@pytest.fixture(scope="module")
def series_volume(shared_data):
    """The shared DICOM series, loaded once for this module (reading 48 slices of 512 x 512 takes ~1 s)."""
    return load_volume(shared_data / SERIES_DIR)


# --- every shared file loads with the geometry an independent reader sees -----------------------------------


@pytest.mark.parametrize("name", list(NIFTI_FILES))
def test_shared_nifti_matches_nibabel(shared_data, name):
    relative, axcodes = NIFTI_FILES[name]
    path = shared_data / relative
    volume = load_volume(path)
    reference = nib.load(str(path))

    assert tuple(volume.shape[1:]) == reference.shape[:3]
    assert tuple(nib.aff2axcodes(reference.affine)) == tuple(axcodes)
    assert volume.meta["original_axcodes"] == axcodes
    np.testing.assert_allclose(volume.meta["spacing"], reference.header.get_zooms()[:3], atol=1e-4)
    np.testing.assert_allclose(np.asarray(volume.affine), reference.affine, atol=1e-4)
    np.testing.assert_allclose(volume.meta["original_affine"], reference.affine, atol=1e-4)
    assert volume.meta["source_format"] == "nifti"
    assert volume.meta["original_dtype"] == str(reference.get_data_dtype())
    np.testing.assert_array_equal(voxels(volume), reference.get_fdata(dtype=np.float32))


def test_shared_nifti_scaling_is_applied(shared_data):
    """avg152 stores uint8 with scl_slope 1/255: the loaded values are the scaled ones, not the raw bytes."""
    volume = load_volume(shared_data / NIFTI_FILES["avg152_las_uint8"][0])
    assert volume.meta["original_dtype"] == "uint8"
    assert 0.9 < float(volume.max()) <= 1.0 + 1e-6


def test_shared_dicom_series_matches_simpleitk(shared_data, series_volume):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / SERIES_DIR)))
    reference = reader.Execute()

    assert tuple(series_volume.shape[1:]) == reference.GetSize() == (512, 512, 48)
    np.testing.assert_allclose(series_volume.meta["spacing"], reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(series_volume.affine), sitk_ras_affine(reference), atol=1e-3)
    assert series_volume.meta["original_axcodes"] == "".join(nib.aff2axcodes(sitk_ras_affine(reference)))
    assert series_volume.meta["source_format"] == "dicom"
    assert series_volume.meta["series_description"]
    np.testing.assert_array_equal(voxels(series_volume), sitk_voxels(reference).astype(np.float32))


@pytest.mark.parametrize("relative", SINGLE_DICOM, ids=lambda r: Path(r).name)
def test_shared_single_dicom_matches_simpleitk(shared_data, relative):
    import SimpleITK as sitk

    path = shared_data / relative
    volume = load_volume(path)
    reference = sitk.ReadImage(str(path))

    assert tuple(volume.shape[1:]) == reference.GetSize()
    np.testing.assert_allclose(volume.meta["spacing"], reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(volume.affine), sitk_ras_affine(reference), atol=1e-3)
    np.testing.assert_array_equal(voxels(volume), sitk_voxels(reference).astype(np.float32))


def test_shared_multiframe_dicom_is_a_volume(shared_data):
    volume = load_volume(shared_data / SINGLE_DICOM[1])
    assert tuple(volume.shape) == (1, 64, 64, 10)


@pytest.mark.parametrize("relative", SINGLE_DICOM, ids=lambda r: Path(r).name)
def test_dicom_original_dtype_is_the_stored_pixel_type(shared_data, relative):
    """Not the dtype of MONAI's ITK array (int32 for uint16 data)."""
    import pydicom

    path = shared_data / relative
    stored = str(pydicom.dcmread(str(path)).pixel_array.dtype)
    assert load_volume(path).meta["original_dtype"] == stored


def test_dicom_series_original_dtype(shared_data, series_volume):
    import pydicom

    first = sorted((shared_data / SERIES_DIR).glob("*.dcm"))[0]
    assert series_volume.meta["original_dtype"] == str(pydicom.dcmread(str(first)).pixel_array.dtype) == "uint16"


def test_shared_png_matches_pil(shared_data):
    path = shared_data / PNG_FILE
    assert " " in path.name and "#" in path.name
    volume = load_volume(path)
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image)
    assert tuple(volume.shape) == (1, width, height, 1) == (1, 181, 217, 1)
    np.testing.assert_array_equal(voxels(volume)[:, :, 0], pixels.T.astype(np.float32))
    assert volume.meta["source_format"] == "image"
    np.testing.assert_array_equal(np.asarray(volume.affine), np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert volume.meta["original_axcodes"] == "LPS"


def test_synthetic_nifti_loads(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    assert tuple(volume.shape) == (1, *SYNTHETIC_SHAPE)
    np.testing.assert_allclose(volume.meta["spacing"], SYNTHETIC_SPACING, atol=1e-6)
    assert volume.meta["original_axcodes"] == "LPS"
    assert volume.meta["original_dtype"] == "float32"
    np.testing.assert_array_equal(voxels(volume), synthetic_volume())


# --- round trips --------------------------------------------------------------------------------------------


def assert_nifti_round_trip(source: Path, out: Path):
    volume = load_volume(source)
    written = save_volume(volume, out, affine=volume.meta["original_affine"])
    assert Path(written) == out
    original, saved = nib.load(str(source)), nib.load(str(out))
    assert saved.shape == original.shape[:3]
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-4)
    assert saved.get_data_dtype() == np.float32
    np.testing.assert_array_equal(saved.get_fdata(dtype=np.float32), original.get_fdata(dtype=np.float32))
    assert tuple(nib.aff2axcodes(saved.affine)) == tuple(nib.aff2axcodes(original.affine))


@pytest.mark.parametrize("name", list(NIFTI_FILES))
def test_shared_nifti_round_trip(shared_data, tmp_path, name):
    # uncompressed output: gzip of a 36 MB float32 volume is the slow part and tests nothing of ours
    assert_nifti_round_trip(shared_data / NIFTI_FILES[name][0], tmp_path / "out" / "round trip.nii")


def test_synthetic_nifti_round_trip_gz(synthetic_nifti, tmp_path):
    assert_nifti_round_trip(synthetic_nifti, tmp_path / "round_trip.nii.gz")


def test_save_volume_default_affine_and_int16(synthetic_nifti, tmp_path):
    volume = load_volume(synthetic_nifti)
    out = save_volume(volume * 1.3 - 40, tmp_path / "int.nii.gz", dtype="int16", descrip="mri-translate test")
    saved = nib.load(str(out))
    assert saved.get_data_dtype() == np.int16
    np.testing.assert_allclose(saved.affine, SYNTHETIC_AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), np.rint(synthetic_volume() * 1.3 - 40))
    assert saved.header["descrip"].item().startswith(b"mri-translate test")


def test_save_volume_refuses_non_nifti_name(synthetic_nifti, tmp_path):
    with pytest.raises(InputError) as excinfo:
        save_volume(load_volume(synthetic_nifti), tmp_path / "out.png")
    assert_input_error(excinfo, tmp_path / "out.png", ".nii")


def test_save_image_2d_round_trip(shared_data, tmp_path):
    source = shared_data / PNG_FILE
    out = tmp_path / "copy #1.png"
    save_image_2d(load_volume(source), out)
    with Image.open(source) as original, Image.open(out) as copy:
        assert copy.mode == original.mode == "L"
        assert copy.size == original.size
        np.testing.assert_array_equal(np.asarray(copy), np.asarray(original))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_png_16_bit_values_preserved(tmp_path):
    pixels = (np.arange(7 * 5, dtype=np.uint16).reshape(7, 5) * 1873).astype(np.uint16)  # H 7 x W 5, max 63682
    path = tmp_path / "sixteen.png"
    Image.fromarray(pixels).save(path)
    volume = load_volume(path)
    assert tuple(volume.shape) == (1, 5, 7, 1)
    assert float(volume.max()) == float(pixels.max()) > 255
    np.testing.assert_array_equal(voxels(volume)[:, :, 0], pixels.T.astype(np.float32))

    out = tmp_path / "sixteen_copy.png"
    save_image_2d(volume, out, bits=16)
    with Image.open(out) as copy:
        np.testing.assert_array_equal(np.asarray(copy).astype(np.uint16), pixels)


def test_png_rgb_becomes_greyscale(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)  # H 6 x W 9
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    volume = load_volume(path)
    assert tuple(volume.shape) == (1, 9, 6, 1)
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(voxels(volume)[:, :, 0], grey.T.astype(np.float32))


def test_save_image_2d_refuses_a_volume(synthetic_nifti, tmp_path):
    with pytest.raises(InputError):
        save_image_2d(load_volume(synthetic_nifti), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- atomic writes ------------------------------------------------------------------------------------------


def test_save_volume_leaves_no_temporary_file(synthetic_nifti, tmp_path):
    out_dir = tmp_path / "new" / "folder"
    save_volume(load_volume(synthetic_nifti), out_dir / "a.nii.gz")
    save_volume(load_volume(synthetic_nifti), out_dir / "a.nii.gz")  # overwrite
    assert [p.name for p in out_dir.iterdir()] == ["a.nii.gz"]


def test_failed_write_keeps_existing_file(synthetic_nifti, tmp_path, monkeypatch):
    volume = load_volume(synthetic_nifti)
    out = tmp_path / "result.nii.gz"
    save_volume(volume, out)
    before = out.read_bytes()
    attempts = []

    def failing_save(image, filename, *args, **kwargs):
        attempts.append(filename)
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(InputError) as excinfo:
        save_volume(volume * 2, out)
    assert_input_error(excinfo, out, "cannot write", "No space left on device")
    assert len(attempts) == 1 and Path(attempts[0]) != out  # the writer was given a temporary path
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name != synthetic_nifti.name] == [out.name]


# --- bad input ----------------------------------------------------------------------------------------------


def write_nifti(path, data, affine=SYNTHETIC_AFFINE, cls=nib.Nifti1Image):
    nib.save(cls(data, affine), str(path))
    return path


def make_missing(tmp_path):
    return tmp_path / "nothing here.nii.gz", ["no such file"]


def make_empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    return path, ["empty"]


def make_truncated(tmp_path):
    path = write_nifti(tmp_path / "truncated.nii.gz", synthetic_volume((20, 20, 20)) + 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EOFError):  # the file really is a cut gzip stream
        gzip.decompress(path.read_bytes())
    return path, ["cannot read", "nifti"]


def make_text(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\n")
    return path, ["not a readable NIfTI"]


def make_unknown_extension(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"\x00" * 300)
    return path, ["unknown file type", ".xyz"]


def make_4d(tmp_path):
    data = np.stack([synthetic_volume((6, 5, 4))] * 5, axis=-1)
    return write_nifti(tmp_path / "fmri.nii.gz", data), ["4D", "5 volumes", "pick one volume", "slicer"]


def make_nan(tmp_path):
    data = synthetic_volume()
    data[3, 4, 2] = np.nan
    data[1, 1, 1] = np.inf
    return write_nifti(tmp_path / "nan.nii.gz", data), ["NaN", "2 "]


def make_complex(tmp_path):
    data = synthetic_volume((6, 5, 4)).astype(np.complex64) * (1 + 2j)
    return write_nifti(tmp_path / "complex.nii.gz", data), ["complex"]


def make_huge_header(tmp_path):
    path = write_nifti(tmp_path / "huge.nii", synthetic_volume((2, 2, 2)), cls=nib.Nifti2Image)
    with open(path, "r+b") as handle:  # NIfTI-2 stores dims as int64, so 65535^3 is a valid claim
        header = nib.Nifti2Header.from_fileobj(handle)
        header.set_data_shape((65535, 65535, 65535))
        handle.seek(0)
        header.write_to(handle)
    assert nib.load(str(path)).shape == (65535, 65535, 65535)
    return path, ["GiB", "65535"]


def make_huge_header_nifti1(tmp_path):
    path = write_nifti(tmp_path / "huge1.nii", synthetic_volume((2, 2, 2)))
    with open(path, "r+b") as handle:  # NIfTI-1 dims are int16: 32767 is the largest claim
        header = nib.Nifti1Header.from_fileobj(handle)
        header.set_data_shape((32767, 32767, 32767))
        handle.seek(0)
        header.write_to(handle)
    return path, ["GiB"]


def make_zero_sized(tmp_path):
    return write_zero_sized_nifti(tmp_path), ["zero-sized"]


def make_empty_folder(tmp_path):
    path = tmp_path / "empty folder"
    path.mkdir()
    (path / ".DS_Store").write_bytes(b"x")  # hidden files do not count
    return path, ["empty"]


def make_png_folder(tmp_path):
    path = tmp_path / "slices"
    path.mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 6), 10 * i, dtype=np.uint8)).save(path / f"Image #{i}.png")
    return path, ["folder of 2D images"]


def make_junk_folder(tmp_path):
    path = tmp_path / "junk"
    path.mkdir()
    (path / "readme.txt").write_text("nothing to see")
    return path, ["no DICOM series"]


BAD_INPUTS = [make_missing, make_empty, make_truncated, make_text, make_unknown_extension, make_4d, make_nan,
              make_complex, make_huge_header, make_huge_header_nifti1, make_zero_sized, make_empty_folder,
              make_png_folder, make_junk_folder]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[5:])
def test_bad_input_raises_input_error(tmp_path, make):
    path, words = make(tmp_path)
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, *words)
    assert isinstance(excinfo.value, MriTranslateError) and excinfo.value.exit_code == 2


def test_5d_nifti_message_counts_the_right_dimension(tmp_path):
    data = np.stack([synthetic_volume((6, 5, 4))] * 3, axis=-1)[:, :, :, None, :]  # (6, 5, 4, 1, 3)
    path = write_nifti(tmp_path / "vectors.nii.gz", data)
    with pytest.raises(InputError) as excinfo:
        load_volume(path)
    assert_input_error(excinfo, path, "5D", "3 volumes")


def test_huge_header_is_refused_before_reading(tmp_path, monkeypatch):
    """The size check runs on the header alone: the voxel reader is never reached."""
    import mri_translate.io as io_module

    path, _ = make_huge_header(tmp_path)
    monkeypatch.setattr(io_module, "_reader_for", _reader_that_fails_on_read(io_module._reader_for))
    with pytest.raises(InputError, match="GiB"):
        load_volume(path)


def _reader_that_fails_on_read(original):
    def wrapped(path, series_uid):
        reader, target, source_format, description = original(path, series_uid)

        class Exploding(type(reader)):
            def read(self, *args, **kwargs):
                raise AssertionError("voxels were read before the size check")

        return Exploding(), target, source_format, description

    return wrapped


def test_size_limit_is_configurable(tmp_path, monkeypatch):
    import mri_translate.io as io_module

    path = write_nifti(tmp_path / "small.nii.gz", synthetic_volume((10, 10, 10)))
    monkeypatch.setattr(io_module, "MAX_VOLUME_BYTES", 10 * 10 * 10 * 4 - 1)
    with pytest.raises(InputError, match="MRI_TRANSLATE_MAX_BYTES"):
        load_volume(path)
    monkeypatch.setattr(io_module, "MAX_VOLUME_BYTES", 10 * 10 * 10 * 4)
    assert tuple(load_volume(path).shape) == (1, 10, 10, 10)


def test_4d_with_singleton_fourth_dimension_loads_as_3d(tmp_path):
    data = synthetic_volume()[..., None]
    path = write_nifti(tmp_path / "one_volume.nii.gz", data)
    assert nib.load(str(path)).shape == (*SYNTHETIC_SHAPE, 1)
    volume = load_volume(path)
    assert tuple(volume.shape) == (1, *SYNTHETIC_SHAPE)
    np.testing.assert_array_equal(voxels(volume), synthetic_volume())


def test_2d_nifti_loads_as_one_slice(tmp_path):
    data = synthetic_volume((9, 8, 1))[:, :, 0]
    path = write_nifti(tmp_path / "flat.nii.gz", data)
    volume = load_volume(path)
    assert tuple(volume.shape) == (1, 9, 8, 1)
    np.testing.assert_array_equal(voxels(volume)[:, :, 0], data)


# --- DICOM folders with several series, and patient identifiers ---------------------------------------------


@pytest.fixture
def two_series_folder(shared_data, tmp_path):
    """Two files of the shared series; the second is rewritten into a series of its own."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "two series"
    folder.mkdir()
    files = sorted((shared_data / SERIES_DIR).glob("*.dcm"))[:2]
    first = shutil.copy(files[0], folder / files[0].name)
    second = folder / files[1].name
    dataset = pydicom.dcmread(str(files[1]))
    original_uid = str(dataset.SeriesInstanceUID)
    new_uid = generate_uid()
    dataset.SeriesInstanceUID = new_uid
    dataset.save_as(str(second))
    assert str(pydicom.dcmread(str(first), stop_before_pixels=True).SeriesInstanceUID) == original_uid
    return folder, original_uid, str(new_uid)


def test_folder_with_two_series_lists_both(two_series_folder):
    folder, uid_a, uid_b = two_series_folder
    with pytest.raises(InputError) as excinfo:
        load_volume(folder)
    assert_input_error(excinfo, folder, "2 DICOM series", "--series", uid_a, uid_b)


def test_series_uid_picks_one(two_series_folder):
    folder, uid_a, uid_b = two_series_folder
    for uid in (uid_a, uid_b):
        volume = load_volume(folder, series_uid=uid)
        assert tuple(volume.shape) == (1, 512, 512, 1)
        assert volume.meta["source_format"] == "dicom"
    with pytest.raises(InputError) as excinfo:
        load_volume(folder, series_uid="1.2.3.4")
    assert_input_error(excinfo, folder, "1.2.3.4", uid_a, uid_b)


def identifiers(dicom_file) -> list[str]:
    import pydicom

    dataset = pydicom.dcmread(str(dicom_file), stop_before_pixels=True)
    return [str(dataset.get(tag, "")).strip() for tag in ("PatientName", "PatientID") if str(dataset.get(tag, "")).strip()]


def assert_no_identifiers(volume, secrets):
    if not secrets:
        pytest.skip("PatientName and PatientID are empty in this file")
    texts = []
    for key, value in volume.meta.items():
        texts.append(str(key))
        texts.append(str(value.tolist() if hasattr(value, "tolist") else value))
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"patient identifier {secret!r} found in meta: {text[:200]!r}"


def test_dicom_series_meta_has_no_patient_identifiers(shared_data, series_volume):
    first = sorted((shared_data / SERIES_DIR).glob("*.dcm"))[0]
    assert_no_identifiers(series_volume, identifiers(first))


def test_single_dicom_meta_has_no_patient_identifiers(shared_data):
    path = shared_data / SINGLE_DICOM[0]
    assert_no_identifiers(load_volume(path), identifiers(path))


def test_path_is_accepted_as_string(synthetic_nifti):
    assert tuple(load_volume(str(synthetic_nifti)).shape) == (1, *SYNTHETIC_SHAPE)
    assert os.fspath(synthetic_nifti) == load_volume(synthetic_nifti).meta["filename_or_obj"]


def test_json_text_is_strict_json_for_other_tools():
    """Sidecars and reports: NumPy scalars as numbers, NaN and infinities as null (never ``Infinity``)."""
    import json

    from mri_translate.io import json_text

    text = json_text({"a": float("inf"), "b": [np.float32(0.5), float("nan")], "c": {"d": np.int64(3)}, "e": "x"})

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [0.5, None], "c": {"d": 3}, "e": "x"}
    assert text.endswith("}\n")
