"""Tests of the ``convert`` verb (mri_translate.convert and ``mri-translate convert``): outputs keep the input's
exact grid, carry a SYNTHETIC label and a sidecar with checksums, 2D images come back as 2D images, inputs are
never overwritten, batches survive bad files and interruptions, BIDS naming, globs and shards; and the MONAI
bundle's inference.json produces exactly what the CLI produces."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (SYNTHETIC_AFFINE, SYNTHETIC_SHAPE, TINY_NORMALIZATION, ordinary_permissions, run_cli,
                      synthetic_volume)
from mri_translate.convert import (BatchReport, convert, convert_file, output_path, plan_batch, shard,
                                   sidecar_path)
from mri_translate.errors import InputError
from mri_translate.inference import Translator
from mri_translate.io import load_volume
from mri_translate.runtime import cpu_has_bf16
from mri_translate.transforms import RobustNormalize, to_canonical

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PNG_FILES = ("seed_2d/TrainT1/Image #10.png", "seed_2d/TrainT1/Image #11.png")


cli = run_cli


def write_nifti(path, shape=SYNTHETIC_SHAPE, scale=1.0, affine=SYNTHETIC_AFFINE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(synthetic_volume(shape) * np.float32(scale), affine), str(path))
    return path


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class IdentityNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # SlabInferer reads the device from a parameter

    def forward(self, x):
        return x


def identity_translator(volume) -> Translator:
    target = RobustNormalize()(to_canonical(volume)).meta["intensity_range"]
    return Translator(IdentityNet(), k=3, target_range=target, device="cpu")


# --- one scan -------------------------------------------------------------------------------------------------


def test_single_nifti_cli(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "out" / "synthetic_T2w.nii.gz"
    status, stdout, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")
    assert status == 0, stderr
    assert f"wrote {out}" in stdout
    image = nib.load(str(out))
    assert image.shape == SYNTHETIC_SHAPE
    np.testing.assert_allclose(image.affine, SYNTHETIC_AFFINE, atol=1e-5)
    assert image.get_data_dtype() == np.float32
    assert b"SYNTHETIC" in image.header["descrip"].tobytes()
    assert image.header.get_sform(coded=True)[1] == 1 and image.header.get_qform(coded=True)[1] == 1
    # the CLI writes exactly what the Python translator computes
    expected = Translator.from_run(tiny_run, device="cpu")(synthetic_nifti)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected[0].numpy())
    low, high = TINY_NORMALIZATION["B"]
    data = np.asarray(image.dataobj)
    assert data.min() >= low and data.max() <= high and data.std() > 0


def test_sidecar(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "synthetic_T2w.nii.gz"
    assert cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")[0] == 0
    sidecar = tmp_path / "synthetic_T2w.json"
    assert sidecar_path(out) == sidecar
    facts = json.loads(sidecar.read_text())
    assert facts["Direction"] == "t1-to-t2"
    assert facts["InputSHA256"] == file_sha256(synthetic_nifti)
    assert facts["ModelSHA256"] == file_sha256(tiny_run / "models" / "model.pt")
    assert facts["Sources"] == [str(synthetic_nifti)]
    assert "SYNTHETIC" in facts["Description"]
    import monai

    assert facts["Software"]["monai"] == monai.__version__ and facts["Software"]["torch"] == torch.__version__
    assert {"mri-translate", "numpy", "nibabel", "python"} <= set(facts["Software"])
    assert isinstance(facts["ElapsedSeconds"], (int, float)) and facts["ElapsedSeconds"] >= 0
    assert facts["Parameters"]["k"] == 3 and facts["Parameters"]["dtype"] == "float32"
    assert facts["Parameters"]["mirror"] is True and facts["Parameters"]["standardize_output"] is False  # no landmarks
    assert facts["Parameters"]["output_intensity_range"] == TINY_NORMALIZATION["B"]
    assert facts["Parameters"]["batch_size"] == 8  # the CPU's default (runtime.inference_batch_size)


def test_batch_size_is_recorded_and_a_batch_size_below_one_is_refused(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "b.nii.gz"
    assert cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--batch-size", "3", "--no-progress",
               "--single-plane", "--no-mirror")[0] == 0
    assert json.loads((tmp_path / "b.json").read_text())["Parameters"]["batch_size"] == 3
    refused = tmp_path / "refused.nii.gz"
    code, _, err = cli(capsys, "convert", synthetic_nifti, refused, "--model", tiny_run, "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1, got 0" in err and len(err.strip().splitlines()) == 1
    assert not refused.exists()


def test_int16_output(capsys, tmp_path, synthetic_nifti, tiny_run):
    as_float, as_int = tmp_path / "f.nii.gz", tmp_path / "i.nii.gz"
    assert cli(capsys, "convert", synthetic_nifti, as_float, "--model", tiny_run, "--no-progress")[0] == 0
    assert cli(capsys, "convert", synthetic_nifti, as_int, "--model", tiny_run, "--dtype", "int16",
               "--no-progress")[0] == 0
    image = nib.load(str(as_int))
    assert image.get_data_dtype() == np.int16 and image.shape == SYNTHETIC_SHAPE
    np.testing.assert_allclose(image.affine, SYNTHETIC_AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.rint(np.asarray(nib.load(str(as_float)).dataobj)))
    assert json.loads((tmp_path / "i.json").read_text())["Parameters"]["dtype"] == "int16"


def test_python_api_single(tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "api.nii.gz"
    report = convert(synthetic_nifti, out, model=tiny_run, device="cpu", progress=False)
    assert isinstance(report, BatchReport) and report.done == [out] and not report.failed
    assert nib.load(str(out)).shape == SYNTHETIC_SHAPE and sidecar_path(out).is_file()


def test_direction_t2_to_t1_single(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "synthetic_T1w.nii.gz"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--direction",
                            "t2-to-t1", "--no-progress")
    assert status == 0, stderr
    assert b"SYNTHETIC T1w from T2w" in nib.load(str(out)).header["descrip"].tobytes()
    assert json.loads(sidecar_path(out).read_text())["Direction"] == "t2-to-t1"
    expected = Translator.from_run(tiny_run, direction="t2-to-t1", device="cpu")(synthetic_nifti)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected[0].numpy())
    assert expected.max() <= TINY_NORMALIZATION["A"][1]


def gif_frames(path) -> np.ndarray:
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)
    assert frames.ndim in (3, 4) and frames.shape[0] >= 1
    return frames


def test_gif(capsys, tmp_path, synthetic_nifti, tiny_run):
    """Axial panels of the 13 x 11 x 7 volume are 11 rows x 13 columns, each voxel a 24 x 24 block (the smallest
    whole factor that makes a panel at least 256 px high); panels are 2 px apart."""
    gif = tmp_path / "sweep.gif"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, tmp_path / "a.nii.gz", "--model", tiny_run,
                            "--gif", gif, "--no-progress")
    assert status == 0, stderr
    assert gif_frames(gif).shape[1:3] == (24 * 11, 2 * 24 * 13 + 2)
    reference = write_nifti(tmp_path / "ref" / "reference_T2w.nii.gz", scale=2.0)
    gif3 = tmp_path / "sweep3.gif"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, tmp_path / "b.nii.gz", "--model", tiny_run,
                            "--gif", gif3, "--reference", reference, "--no-progress")
    assert status == 0, stderr
    assert gif_frames(gif3).shape[1:3] == (24 * 11, 3 * 24 * 13 + 2 * 2)


def test_gif_reference_of_another_shape(capsys, tmp_path, synthetic_nifti, tiny_run):
    reference = write_nifti(tmp_path / "ref" / "reference_T2w.nii.gz", shape=(13, 11, 8))
    out = tmp_path / "a.nii.gz"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--gif",
                            tmp_path / "a.gif", "--reference", reference, "--no-progress")
    assert status == 2
    assert "(13, 11, 7)" in stderr and "(13, 11, 8)" in stderr
    assert not out.exists() or sidecar_path(out).exists()


# --- 2D images ------------------------------------------------------------------------------------------------


def test_brain_mask_translates_the_scan_as_the_brain_it_outlines(capsys, tmp_path, synthetic_nifti, tiny_run):
    """``--mask``: exactly the translation of the scan with every voxel outside the mask set to its background
    (the minimum), so outside the mask the output is one background value; the sidecar names the mask."""
    image = nib.load(str(synthetic_nifti))
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = np.zeros(data.shape, np.uint8)
    brain[tuple(slice(s // 4, s - s // 4) for s in data.shape)] = 1
    mask, stripped = tmp_path / "brain_mask.nii.gz", tmp_path / "stripped.nii.gz"
    nib.save(nib.Nifti1Image(brain, image.affine), str(mask))
    nib.save(nib.Nifti1Image(np.where(brain > 0, data, data.min()).astype(np.float32), image.affine), str(stripped))
    out, expected = tmp_path / "masked_T2w.nii.gz", tmp_path / "stripped_T2w.nii.gz"
    assert cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--mask", mask, "--no-progress")[0] == 0
    assert cli(capsys, "convert", stripped, expected, "--model", tiny_run, "--no-progress")[0] == 0
    result = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(result, np.asarray(nib.load(str(expected)).dataobj))
    assert np.unique(result[brain == 0]).size == 1 and np.unique(result[brain > 0]).size > 1
    facts = json.loads(sidecar_path(out).read_text())
    assert facts["Sources"] == [str(synthetic_nifti), str(mask)] and facts["BrainMask"] == str(mask)
    assert facts["BrainMaskSHA256"] == file_sha256(mask) and facts["InputSHA256"] == file_sha256(synthetic_nifti)


@pytest.mark.parametrize("problem", ["another grid", "empty"])
def test_bad_brain_mask_is_one_line_and_writes_nothing(capsys, tmp_path, synthetic_nifti, tiny_run, problem):
    image = nib.load(str(synthetic_nifti))
    shape = image.shape if problem == "empty" else tuple(s + 2 for s in image.shape)
    mask, out = tmp_path / "mask.nii.gz", tmp_path / "out.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), image.affine), str(mask))
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--mask", mask,
                            "--no-progress")
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and str(mask) in stderr
    assert ("is not on the grid of" if problem == "another grid" else "brain mask is empty") in stderr
    assert not out.exists() and not sidecar_path(out).exists()


def test_png_to_png_identity_keeps_pixels(shared_data, tmp_path):
    source = shared_data / PNG_FILES[0]
    volume = load_volume(source)
    translator = identity_translator(volume)
    out = tmp_path / "out dir" / source.name  # spaces and '#' in names
    sidecar = convert_file(translator, source, out)
    assert sidecar["Parameters"]["dtype"] == "uint8"
    original = np.asarray(Image.open(source).convert("L"), dtype=np.float64)
    result = Image.open(out)
    assert result.size == Image.open(source).size == (181, 217)
    result = np.asarray(result, dtype=np.float64)
    low, high = translator.target_range
    inside = (original >= low) & (original <= high)  # e.g. pixels under the 99.5th percentile: not clipped
    assert inside.mean() > 0.98
    differs = np.abs(result - np.clip(original, low, high)) > 1
    assert np.all(result[differs] == 0) and differs[original > 64].mean() < 1e-3  # only specks outside the head
    assert sidecar_path(out) == out.with_name("Image #10.json") and sidecar_path(out).is_file()


def test_png_cli_keeps_size(capsys, shared_data, tmp_path, tiny_run):
    source = shared_data / PNG_FILES[0]
    out = tmp_path / "Image #10.png"
    status, _, stderr = cli(capsys, "convert", source, out, "--model", tiny_run, "--no-progress")
    assert status == 0, stderr
    assert Image.open(out).size == Image.open(source).size
    out16 = tmp_path / "Image #10 16-bit.png"
    assert cli(capsys, "convert", source, out16, "--model", tiny_run, "--bits", "16", "--no-progress")[0] == 0
    assert np.asarray(Image.open(out16)).dtype == np.uint16


def test_3d_input_to_png_is_refused(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "slice.png"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")
    assert status == 2
    assert "2D" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()
    translator = Translator.from_run(tiny_run, device="cpu")
    with pytest.raises(InputError, match="2D"):
        convert_file(translator, synthetic_nifti, out)


# --- inputs and outputs are protected --------------------------------------------------------------------------


def test_output_equal_to_input_is_refused(capsys, tmp_path, tiny_run):
    source = write_nifti(tmp_path / "scan.nii.gz")
    before = source.read_bytes()
    status, _, stderr = cli(capsys, "convert", source, source, "--model", tiny_run, "--overwrite", "--no-progress")
    assert status == 2 and "input" in stderr
    assert source.read_bytes() == before
    with pytest.raises(InputError, match="equals the input"):
        convert_file(Translator.from_run(tiny_run, device="cpu"), source, tmp_path / "." / "scan.nii.gz",
                     overwrite=True)
    assert source.read_bytes() == before
    assert not sidecar_path(source).exists()


def test_existing_output_needs_overwrite(capsys, tmp_path, synthetic_nifti, tiny_run):
    out = tmp_path / "exists.nii.gz"
    out.write_bytes(b"precious")
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")
    assert status == 2 and "--overwrite" in stderr and str(out) in stderr
    assert out.read_bytes() == b"precious" and not sidecar_path(out).exists()
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--overwrite",
                            "--no-progress")
    assert status == 0, stderr
    assert nib.load(str(out)).shape == SYNTHETIC_SHAPE


def test_unwritable_output_folder(capsys, tmp_path, synthetic_nifti, tiny_run):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        out = folder / "x.nii.gz"
        with ordinary_permissions():  # also as root (CI): the 0o500 folder is unwritable
            status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")
        assert status == 2
        assert str(out) in stderr and "cannot write" in stderr and "Traceback" not in stderr
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_output_below_a_file_is_a_clear_error(capsys, tmp_path, synthetic_nifti, tiny_run):
    """Also as root: the output folder cannot be created because a file has its name."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = tmp_path / "blocker" / "x.nii.gz"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--no-progress")
    assert status == 2
    assert "cannot write" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


# --- batches --------------------------------------------------------------------------------------------------


@pytest.fixture
def batch_folder(tmp_path) -> Path:
    """Two good small NIfTIs and a text file named like one."""
    folder = tmp_path / "in"
    write_nifti(folder / "good1.nii.gz")
    write_nifti(folder / "good2.nii.gz", shape=(12, 10, 6), scale=3.0)
    (folder / "bad.nii.gz").write_text("not a NIfTI at all\n")
    return folder


def mtimes(paths) -> dict:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_batch_with_a_corrupt_file(capsys, tmp_path, batch_folder, tiny_run):
    out = tmp_path / "out"
    status, stdout, stderr = cli(capsys, "convert", batch_folder, out, "--model", tiny_run, "--no-progress")
    assert status == 1
    assert "bad.nii.gz" in stderr and "Traceback" not in stderr
    assert "2 converted, 0 skipped (already done), 1 failed" in stdout
    outputs = [out / "good1_T2w.nii.gz", out / "good2_T2w.nii.gz"]
    for output in outputs:
        assert output.is_file() and sidecar_path(output).is_file()
    assert nib.load(str(outputs[1])).shape == (12, 10, 6)
    assert sorted(p.name for p in out.iterdir()) == ["good1_T2w.json", "good1_T2w.nii.gz", "good2_T2w.json",
                                                      "good2_T2w.nii.gz"]
    assert not (out / "dataset_description.json").exists()  # not a BIDS dataset

    files = outputs + [sidecar_path(p) for p in outputs]
    before = mtimes(files)
    inodes = {p: p.stat().st_ino for p in files}
    status, stdout, _ = cli(capsys, "convert", batch_folder, out, "--model", tiny_run, "--no-progress")
    assert status == 1
    assert "0 converted, 2 skipped (already done), 1 failed" in stdout
    assert mtimes(files) == before

    status, stdout, _ = cli(capsys, "convert", batch_folder, out, "--model", tiny_run, "--overwrite",
                            "--no-progress")
    assert status == 1
    assert "2 converted, 0 skipped (already done), 1 failed" in stdout
    assert all(p.stat().st_ino != inode for p, inode in inodes.items())  # rewritten (atomically: new files)


def test_a_batch_reads_ahead_and_writes_what_one_file_at_a_time_writes(tmp_path, batch_folder, tiny_run,
                                                                     monkeypatch):
    """With ``prefetch`` a batch reads each next scan in a background thread while one is translated (by default
    only on a GPU: on a CPU the main thread reads), and its outputs and sidecars' parameters equal those of each
    file converted on its own; the corrupt file still fails alone."""
    import threading

    from mri_translate import convert as convert_module
    from mri_translate.convert import convert_batch, convert_file, plan_batch

    readers = []
    original = convert_module.load_volume

    def recording(path, *args, **kwargs):
        readers.append((Path(path).name, threading.current_thread().name))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(convert_module, "load_volume", recording)
    translator = Translator.from_run(tiny_run, device="cpu")
    report = convert_batch(translator, plan_batch(batch_folder, tmp_path / "batch"), progress=False, prefetch=True)
    assert [p.name for p, _ in report.failed] == ["bad.nii.gz"] and len(report.done) == 2
    assert sorted(readers) == [("bad.nii.gz", "prefetch_0"), ("good1.nii.gz", "prefetch_0"),
                               ("good2.nii.gz", "prefetch_0")]
    readers.clear()
    convert_batch(translator, plan_batch(batch_folder, tmp_path / "cpu"), progress=False)
    assert {thread for _, thread in readers} == {"MainThread"}
    for name in ("good1", "good2"):
        single = tmp_path / "single" / f"{name}_T2w.nii.gz"
        convert_file(translator, batch_folder / f"{name}.nii.gz", single)
        batch = tmp_path / "batch" / f"{name}_T2w.nii.gz"
        np.testing.assert_array_equal(nib.load(str(batch)).get_fdata(), nib.load(str(single)).get_fdata())
        parameters = [json.loads(sidecar_path(p).read_text())["Parameters"] for p in (batch, single)]
        assert parameters[0] == parameters[1]


def test_interrupted_batch_redoes_only_the_unfinished_file(capsys, tmp_path, tiny_run):
    folder = tmp_path / "in"
    write_nifti(folder / "a.nii.gz")
    write_nifti(folder / "b.nii.gz", scale=2.0)
    out = tmp_path / "out"
    assert cli(capsys, "convert", folder, out, "--model", tiny_run, "--no-progress")[0] == 0
    finished = [out / "b_T2w.nii.gz", out / "b_T2w.json"]
    before = mtimes(finished)
    (out / "a_T2w.json").unlink()  # a crash between the image and its sidecar
    status, stdout, _ = cli(capsys, "convert", folder, out, "--model", tiny_run, "--no-progress")
    assert status == 0
    assert "1 converted, 1 skipped (already done), 0 failed" in stdout
    assert (out / "a_T2w.json").is_file()
    assert mtimes(finished) == before


def test_python_api_batch_report(tmp_path, batch_folder, tiny_run):
    report = convert(batch_folder, tmp_path / "out", model=tiny_run, device="cpu", progress=False)
    assert [p.name for p in report.done] == ["good1_T2w.nii.gz", "good2_T2w.nii.gz"]
    assert len(report.failed) == 1 and report.failed[0][0] == batch_folder / "bad.nii.gz"
    assert str(batch_folder / "bad.nii.gz") in report.failed[0][1]
    assert report.summary() == "2 converted, 0 skipped (already done), 1 failed"


def test_batch_refuses_gif(capsys, tmp_path, batch_folder, tiny_run):
    status, _, stderr = cli(capsys, "convert", batch_folder, tmp_path / "out", "--model", tiny_run, "--gif",
                            tmp_path / "x.gif", "--no-progress")
    assert status == 2 and "--gif" in stderr
    status, _, stderr = cli(capsys, "convert", batch_folder, tmp_path / "out", "--model", tiny_run, "--mask",
                            tmp_path / "mask.nii.gz", "--no-progress")
    assert status == 2 and "--mask apply to a single scan" in stderr


def test_batch_of_2d_images(capsys, shared_data, tmp_path, tiny_run):
    folder = tmp_path / "slices"
    folder.mkdir()
    for relative in PNG_FILES:
        shutil.copy(shared_data / relative, folder)
    out = tmp_path / "out"
    status, stdout, stderr = cli(capsys, "convert", folder, out, "--model", tiny_run, "--no-progress")
    assert status == 0, stderr
    assert "2 converted" in stdout
    for relative in PNG_FILES:
        name = Path(relative).name
        assert Image.open(out / name).size == Image.open(shared_data / relative).size
        assert sidecar_path(out / name).is_file()


def make_bids(root: Path, contrast: str = "T1w") -> list[Path]:
    files = [write_nifti(root / "sub-01" / "anat" / f"sub-01_{contrast}.nii.gz"),
             write_nifti(root / "sub-02" / "ses-1" / "anat" / f"sub-02_ses-1_{contrast}.nii.gz", scale=2.0)]
    other = "T2w" if contrast == "T1w" else "T1w"
    write_nifti(root / "sub-01" / "anat" / f"sub-01_{other}.nii.gz")  # the other contrast: not an input
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    return files


def test_bids_dataset(capsys, tmp_path, tiny_run):
    root = tmp_path / "bids"
    make_bids(root)
    out = root / "derivatives" / "mri-translate"  # BIDS puts derivatives inside the dataset
    status, stdout, stderr = cli(capsys, "convert", root, out, "--model", tiny_run, "--no-progress")
    assert status == 0, stderr
    expected = [out / "sub-01" / "anat" / "sub-01_desc-synthetic_T2w.nii.gz",
                out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_desc-synthetic_T2w.nii.gz"]
    written = sorted(p for p in out.rglob("*.nii.gz"))
    assert written == sorted(expected)
    for path in expected:
        assert sidecar_path(path).is_file()
        assert path.with_name(path.name.replace(".nii.gz", ".json")) == sidecar_path(path)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "mri-translate"
    assert "2 converted" in stdout
    # the derivatives folder inside the dataset is not mistaken for inputs on a rerun
    status, stdout, _ = cli(capsys, "convert", root, out, "--model", tiny_run, "--no-progress")
    assert status == 0 and "0 converted, 2 skipped (already done), 0 failed" in stdout


def test_bids_t2_to_t1(capsys, tmp_path, tiny_run):
    root = tmp_path / "bids"
    make_bids(root, contrast="T2w")
    out = tmp_path / "out"
    status, _, stderr = cli(capsys, "convert", root, out, "--model", tiny_run, "--direction", "t2-to-t1",
                            "--no-progress")
    assert status == 0, stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == [
        "sub-01/anat/sub-01_desc-synthetic_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_desc-synthetic_T1w.nii.gz"]
    assert json.loads((out / "sub-01" / "anat" / "sub-01_desc-synthetic_T1w.json").read_text())["Direction"] \
        == "t2-to-t1"


def test_direction_t2_to_t1_names_folder_outputs(capsys, tmp_path, tiny_run):
    folder = tmp_path / "in"
    write_nifti(folder / "scan.nii.gz")
    out = tmp_path / "out"
    assert cli(capsys, "convert", folder, out, "--model", tiny_run, "--direction", "t2-to-t1",
               "--no-progress")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan_T1w.json", "scan_T1w.nii.gz"]


def test_glob_input(capsys, tmp_path, tiny_run):
    folder = tmp_path / "in"
    for name in ("x_a.nii.gz", "y_a.nii.gz", "z_b.nii.gz"):
        write_nifti(folder / name)
    out = tmp_path / "out"
    status, stdout, stderr = cli(capsys, "convert", str(folder / "*_a.nii.gz"), out, "--model", tiny_run,
                                 "--no-progress")
    assert status == 0, stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["x_a_T2w.nii.gz", "y_a_T2w.nii.gz"]
    assert "2 converted" in stdout


def test_shards_cover_every_file_once(capsys, tmp_path, tiny_run):
    folder = tmp_path / "in"
    names = [f"scan{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_nifti(folder / f"{name}.nii.gz", scale=1.0 + i)
    out = tmp_path / "out"
    status, stdout, stderr = cli(capsys, "convert", folder, out, "--model", tiny_run, "--shard", "0/2",
                                 "--no-progress")
    assert status == 0, stderr
    assert "3 converted, 0 skipped (already done), 0 failed" in stdout
    first = {p.name for p in out.glob("*.nii.gz")}
    before = mtimes(out.glob("*"))
    status, stdout, stderr = cli(capsys, "convert", folder, out, "--model", tiny_run, "--shard", "1/2",
                                 "--no-progress")
    assert status == 0, stderr
    assert "2 converted, 0 skipped (already done), 0 failed" in stdout  # no overlap: nothing of shard 0 seen
    second = {p.name for p in out.glob("*.nii.gz")} - first
    assert len(first) == 3 and len(second) == 2 and first.isdisjoint(second)
    assert first | second == {f"{name}_T2w.nii.gz" for name in names}
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    sources = [json.loads(p.read_text())["Sources"][0] for p in out.glob("*.json")]
    assert sorted(sources) == sorted(str(folder / f"{name}.nii.gz") for name in names)


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "x", "1/0"])
def test_bad_shard(capsys, tmp_path, batch_folder, tiny_run, spec):
    status, _, stderr = cli(capsys, "convert", batch_folder, tmp_path / "out", "--model", tiny_run,
                            f"--shard={spec}", "--no-progress")
    assert status == 2 and "--shard" in stderr and "Traceback" not in stderr


def test_shard_function():
    items = list(range(7))
    parts = [shard(items, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == items and sum(map(len, parts)) == 7
    with pytest.raises(InputError):
        shard(items, "3/3")


def test_plan_batch_and_output_path(tmp_path):
    root = tmp_path / "bids"
    make_bids(root)
    pairs = plan_batch(root, tmp_path / "out")
    assert [p[0].name for p in pairs] == ["sub-01_T1w.nii.gz", "sub-02_ses-1_T1w.nii.gz"]
    assert output_path(Path("/data/x/scan.nii"), None, "/o") == Path("/o/scan_T2w.nii.gz")
    assert output_path(Path("/data/x/s_T2w.nii.gz"), Path("/data"), "/o", "t2-to-t1") == \
        Path("/o/x/s_desc-synthetic_T1w.nii.gz")
    assert output_path(Path("/data/Image #1.png"), Path("/data"), "/o") == Path("/o/Image #1.png")
    with pytest.raises(InputError, match="no such folder"):
        plan_batch(tmp_path / "missing", tmp_path / "out")


# --- the MONAI bundle gives what the CLI gives ----------------------------------------------------------------


def test_bundle_inference_refuses_a_scan_of_the_wrong_contrast(tiny_run, tmp_path):
    """The bundle runs the contrast check as ``convert`` does: a phantom stops the run, named, with nothing
    written for it."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    thick = np.diag([-4.0, 1.0, 1.0, 1.0])
    write_nifti(folder / "thick_sagittal.nii.gz", shape=(9, 40, 36), affine=thick)
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tiny_run / "configs" / "inference.json"),
         "--meta_file", str(tiny_run / "configs" / "metadata.json"), "--bundle_root", str(tiny_run),
         "--dataset_dir", str(folder), "--output_dir", str(out)],
        cwd=tiny_run, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "thick_sagittal.nii.gz" in result.stderr and "ContrastMismatchError" in result.stderr
    assert not out.exists() or not list(out.glob("*.nii.gz"))


#: the same switch on the bundle's command line and on convert's
SWITCHES = {None: ((), ()), "raw": (("--standardize_output", "False"), ("--raw-output",)),
            "single-plane": (("--fuse_planes", "False"), ("--single-plane",)),
            "no-mirror": (("--mirror", "False"), ("--no-mirror",)),
            "inverted": (("--inverted_weight", "0.5", "--guided_radius_mm", "4"),
                         ("--inverted-weight", "0.5", "--guided-radius", "4"))}


@pytest.mark.parametrize("model, switch", [("tiny_run", None), ("tiny_run", "single-plane"),
                                           ("tiny_standardized_run", None), ("tiny_standardized_run", "raw"),
                                           ("tiny_standardized_run", "no-mirror"),
                                           ("tiny_standardized_run", "inverted")])
def test_bundle_inference_equals_cli(model, switch, capsys, shared_data, tmp_path, request):
    """``monai.bundle run`` with the run's inference.json over a folder == ``mri-translate convert`` of it,
    voxel for voxel, for the LAS avg152 template and a volume with thick sagittal slices (slabs along x); also
    for a model that resamples in-plane and standardises intensities, with and without standardising the
    translation (``--standardize_output False`` / ``--raw-output``) and with the translation refitted on the
    inverted input and half of it averaged in (``--inverted_weight 0.5 --guided_radius_mm 4`` /
    ``--inverted-weight 0.5 --guided-radius 4``), translated once instead of mirrored too (``--mirror False`` /
    ``--no-mirror``), and with the isotropic avg152 translated along one
    plane instead of three (``--fuse_planes False`` / ``--single-plane``)."""
    tiny_run = request.getfixturevalue(model)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data / "volumes" / "avg152" / "avg152T1.nii", folder)
    thick = np.diag([-4.0, 1.0, 1.0, 1.0])
    thick[:3, 3] = (20.0, -30.0, -20.0)
    write_nifti(folder / "thick_sagittal.nii.gz", shape=(9, 40, 36), affine=thick)
    bundle_out, cli_out = tmp_path / "bundle_out", tmp_path / "cli_out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tiny_run / "configs" / "inference.json"),
         "--meta_file", str(tiny_run / "configs" / "metadata.json"), "--bundle_root", str(tiny_run),
         "--dataset_dir", str(folder), "--output_dir", str(bundle_out), "--force", "True", *SWITCHES[switch][0]],
        cwd=tiny_run, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # a phantom is among the inputs: both skip the contrast check
    status, _, stderr = cli(capsys, "convert", folder, cli_out, "--model", tiny_run, "--no-progress",
                            "--force", *SWITCHES[switch][1])
    assert status == 0, stderr
    names = ["avg152T1_T2w.nii.gz", "thick_sagittal_T2w.nii.gz"]
    assert sorted(p.name for p in bundle_out.glob("*.nii.gz")) == names
    for name in names:
        from_bundle, from_cli = nib.load(str(bundle_out / name)), nib.load(str(cli_out / name))
        assert from_bundle.shape == from_cli.shape
        np.testing.assert_array_equal(from_bundle.affine, from_cli.affine)
        difference = np.abs(np.asarray(from_bundle.dataobj) - np.asarray(from_cli.dataobj))
        # equal in fp32; under bf16 (a CPU that computes it) a few voxels round the other way: < 0.1 % of the range
        assert difference.max() <= (1e-3 * np.percentile(np.asarray(from_cli.dataobj), 99.9) if cpu_has_bf16() else 0)
    assert nib.load(str(bundle_out / names[0])).shape == (91, 109, 91)
    np.testing.assert_allclose(nib.load(str(bundle_out / names[1])).affine, thick, atol=1e-5)


# --- more inputs and options ------------------------------------------------------------------------------------


def test_single_dicom_file(capsys, shared_data, tmp_path, tiny_run):
    source = shared_data / "dicom" / "single" / "MR_small.dcm"
    out = tmp_path / "mr_small_T2w.nii.gz"
    status, _, stderr = cli(capsys, "convert", source, out, "--model", tiny_run, "--no-progress")
    assert status == 0, stderr
    volume = load_volume(source)
    image = nib.load(str(out))
    assert image.shape == tuple(volume.shape[1:]) == (64, 64, 1)
    np.testing.assert_allclose(image.affine, volume.meta["original_affine"], atol=1e-4)
    assert json.loads(sidecar_path(out).read_text())["InputSHA256"] == file_sha256(source)


def test_axis_option_is_used_and_recorded(capsys, tmp_path, synthetic_nifti, tiny_run):
    outputs = {}
    for axis in ("sagittal", "axial"):
        out = tmp_path / f"{axis}.nii.gz"
        status, _, stderr = cli(capsys, "convert", synthetic_nifti, out, "--model", tiny_run, "--axis", axis,
                                "--no-progress")
        assert status == 0, stderr
        outputs[axis] = np.asarray(nib.load(str(out)).dataobj)
        assert nib.load(str(out)).shape == SYNTHETIC_SHAPE
    assert json.loads((tmp_path / "sagittal.json").read_text())["Parameters"]["planes"] == ["sagittal"]
    assert not np.allclose(outputs["sagittal"], outputs["axial"], atol=1e-2)
    # axial is the through-plane axis of this volume: same as the default
    status, _, _ = cli(capsys, "convert", synthetic_nifti, tmp_path / "default.nii.gz", "--model", tiny_run,
                       "--no-progress")
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "default.nii.gz")).dataobj), outputs["axial"])
    assert json.loads((tmp_path / "default.json").read_text())["Parameters"]["planes"] == ["axial"]  # 2.5 mm slices


def test_glob_matching_nothing(capsys, tmp_path, tiny_run):
    status, _, stderr = cli(capsys, "convert", str(tmp_path / "*.nii.gz"), tmp_path / "out", "--model", tiny_run,
                            "--no-progress")
    assert status == 2 and "no convertible scans" in stderr


def test_batch_output_must_be_a_folder(capsys, tmp_path, batch_folder, tiny_run):
    blocker = tmp_path / "out.nii.gz"
    blocker.write_text("a file")
    status, _, stderr = cli(capsys, "convert", batch_folder, blocker, "--model", tiny_run, "--no-progress")
    assert status == 2 and "folder" in stderr
    assert blocker.read_text() == "a file"


def test_missing_model_is_one_line(capsys, tmp_path, synthetic_nifti):
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, tmp_path / "x.nii.gz", "--model",
                            tmp_path / "no_model.pt", "--no-progress")
    assert status == 2 and "no_model.pt" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()


def test_isotropic_scan_is_translated_along_three_planes(capsys, tmp_path, tiny_run):
    """A 1 mm isotropic scan: by default its axial, coronal and sagittal translations are averaged (the sidecar
    lists the planes); ``--single-plane`` writes what ``Translator(fuse_planes=False)`` gives, the axial one."""
    source = tmp_path / "isotropic.nii.gz"
    write_nifti(source, shape=(40, 36, 34), affine=np.diag([-1.0, 1.0, 1.0, 1.0]))
    outputs = {}
    for name, flags in (("fused", ()), ("single", ("--single-plane",))):
        outputs[name] = tmp_path / f"{name}.nii.gz"
        status, _, stderr = cli(capsys, "convert", source, outputs[name], "--model", tiny_run, "--force", *flags)
        assert status == 0, stderr
    planes = {name: json.loads(sidecar_path(out).read_text())["Parameters"]["planes"] for name, out in outputs.items()}
    assert planes == {"fused": ["axial", "coronal", "sagittal"], "single": ["axial"]}
    expected = Translator.from_run(tiny_run, device="cpu", fuse_planes=False)(source)
    np.testing.assert_allclose(nib.load(str(outputs["single"])).get_fdata(), expected[0].numpy(), atol=1e-4)
    assert np.abs(nib.load(str(outputs["fused"])).get_fdata() - expected[0].numpy()).max() > 1e-2


def test_inverted_weight_option_is_applied_and_recorded(capsys, synthetic_nifti, tmp_path, tiny_standardized_run):
    """``convert --inverted-weight 0.5 --guided-radius 3`` writes what ``Translator(inverted_weight=0.5,
    guided_radius_mm=3)`` gives, voxel for voxel, unlike the model's own settings (none for this model); the
    sidecars record the settings used; a weight of 1 is refused in one line, nothing written."""
    own, half = tmp_path / "own.nii.gz", tmp_path / "half.nii.gz"
    for output, flags in ((own, ()), (half, ("--inverted-weight", "0.5", "--guided-radius", "3"))):
        status, _, stderr = cli(capsys, "convert", synthetic_nifti, output, "--model", tiny_standardized_run,
                                "--force", *flags)  # a phantom: skip the contrast check
        assert status == 0, stderr
    expected = Translator.from_run(tiny_standardized_run, device="cpu", inverted_weight=0.5,
                                   guided_radius_mm=3)(synthetic_nifti)
    np.testing.assert_allclose(nib.load(str(half)).get_fdata(), expected[0].numpy(), atol=1e-4)
    assert np.abs(nib.load(str(own)).get_fdata() - nib.load(str(half)).get_fdata()).max() > 1e-2
    for output, weight, radius in ((own, 0.0, 0.0), (half, 0.5, 3.0)):
        parameters = json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text())["Parameters"]
        assert (parameters["inverted_weight"], parameters["guided_radius_mm"]) == (weight, radius)
    refused = tmp_path / "refused.nii.gz"
    status, _, stderr = cli(capsys, "convert", synthetic_nifti, refused, "--model", tiny_standardized_run,
                            "--force", "--inverted-weight", "1")
    assert status == 2 and "inverted_weight must be in [0, 1)" in stderr and len(stderr.strip().splitlines()) == 1
    assert not refused.exists()


def test_raw_output_skips_standardising_the_translation(capsys, synthetic_nifti, tmp_path, tiny_standardized_run):
    """``convert --raw-output`` writes what ``Translator(standardize_output=False)`` gives, voxel for voxel; the
    default (the translation standardised onto the target domain's landmarks) differs from it; the sidecars
    say which was done."""
    default, raw = tmp_path / "default.nii.gz", tmp_path / "raw.nii.gz"
    for output, flags in ((default, ()), (raw, ("--raw-output",))):
        status, _, stderr = cli(capsys, "convert", synthetic_nifti, output, "--model", tiny_standardized_run,
                                "--force", *flags)  # a phantom: skip the contrast check
        assert status == 0, stderr
    expected = Translator.from_run(tiny_standardized_run, device="cpu", standardize_output=False)(synthetic_nifti)
    np.testing.assert_allclose(nib.load(str(raw)).get_fdata(), expected[0].numpy(), atol=1e-4)
    assert np.abs(nib.load(str(default)).get_fdata() - nib.load(str(raw)).get_fdata()).max() > 1e-2
    for output, done in ((default, True), (raw, False)):
        assert json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text())[
            "Parameters"]["standardize_output"] is done


def test_profile_prints_each_stage_and_they_add_up_to_the_total(capsys, tmp_path, synthetic_nifti, tiny_run):
    """convert --profile: one stderr line per file naming every stage that ran with its seconds; together they
    are the file's whole time within 10 % (nothing slow runs outside a stage)."""
    import re

    status, _, stderr = cli(capsys, "convert", synthetic_nifti, tmp_path / "p.nii.gz", "--model", tiny_run,
                            "--profile", "--no-progress", "--qc")
    assert status == 0, stderr
    line = next(line for line in stderr.splitlines() if line.startswith("profile "))
    stages = dict((name.strip(), float(value)) for name, value in re.findall(r"([a-zA-Z ]+) ([0-9.]+)(?= \||$)",
                                                                               line.split(": ", 1)[1]))
    total = float(re.search(r"total ([0-9.]+) s", line).group(1))
    for stage in ("load", "input checks", "canonical and standardise", "network", "quality checks", "write"):
        assert stage in stages, line
    assert sum(value for name, value in stages.items() if name != "total") == pytest.approx(total, rel=0.1, abs=0.005)
