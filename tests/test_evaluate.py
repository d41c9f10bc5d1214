"""Tests of the ``evaluate`` verb (mri_translate.evaluate and ``mri-translate evaluate``): identical images score
the caps, noise gives the PSNR its MSE implies, a flip is caught by SSIM, baselines on real paired data rank as
expected, reports (JSON, per-slice CSV, plot) are written, 2D slice folders are matched by name, and bad inputs
fail with one line and exit status 2."""

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import SYNTHETIC_AFFINE, run_cli, synthetic_volume
from mri_translate import metrics
from mri_translate.errors import InputError
from mri_translate.evaluate import evaluate, load_array

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REGIONS = ("mask", "whole")


cli = run_cli


def write_nifti(path, data, affine=SYNTHETIC_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return Path(path)


@pytest.fixture(scope="module")
def tcga_crop(shared_data, tmp_path_factory) -> dict:
    """tcga_du_7294 t1/t2 (co-registered, LPS) cut to 120 x 120 x 40 (every 2nd voxel in-plane, 40 central
    slices) to keep the test fast, and a 'prediction': the T2 plus Gaussian noise (5% of its 99.5th pct)."""
    folder = tmp_path_factory.mktemp("tcga_crop")
    paths = {}
    for name in ("t1", "t2"):
        image = nib.load(str(shared_data / "volumes" / "tcga_du_7294" / f"{name}.nii.gz")).slicer[::2, ::2, 55:95]
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(image, str(paths[name]))
    t2 = nib.load(str(paths["t2"]))
    data = np.asarray(t2.dataobj, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 0.05 * np.percentile(data[data > 0], 99.5), data.shape)
    paths["pred"] = write_nifti(folder / "pred.nii.gz", data + noise.astype(np.float32), t2.affine)
    return paths


def test_identical_images_score_the_caps(capsys, tmp_path, synthetic_nifti):
    report_path = tmp_path / "report.json"
    status, stdout, stderr = cli(capsys, "evaluate", "--pred", synthetic_nifti, "--ref", synthetic_nifti, "--json",
                                 report_path)
    assert status == 0, stderr
    report = json.loads(report_path.read_text())
    for region in REGIONS:
        values = report["model"][region]
        assert values["psnr"] == metrics.PSNR_CAP_DB == 100.0
        assert values["ssim_3d"] == pytest.approx(1.0, abs=1e-6)
        assert values["ssim_2d"] == pytest.approx(1.0, abs=1e-6)
        assert values["mae"] == 0.0
    assert report["normalisation"] == metrics.NORMALISATION
    assert "model" in stdout and "100.00" in stdout


def test_noise_gives_the_psnr_its_mse_implies(tmp_path):
    reference = synthetic_volume((40, 36, 30))
    mask = metrics.auto_mask(reference)
    peak = np.percentile(reference[mask], 99.5)
    sigma = 0.02 * peak
    noisy = reference + np.random.default_rng(1).normal(0, sigma, reference.shape)
    ref_path, pred_path = write_nifti(tmp_path / "ref.nii.gz", reference), write_nifti(tmp_path / "pred.nii.gz", noisy)
    report = evaluate(pred_path, ref_path)
    # PSNR = 10 log10(range^2 / MSE) with range = the 99.5th percentile: about 20 log10(1 / 0.02) = 34 dB
    assert report["model"]["mask"]["psnr"] == pytest.approx(20 * math.log10(peak / sigma), abs=0.5)
    # exactly the documented formula: each image / its own 99.5th percentile in the mask, clipped to [0, 1]
    p, r = (load_array(path) for path in (pred_path, ref_path))
    m = metrics.auto_mask(r)
    scaled_p = np.clip(p / np.percentile(p[m], 99.5), 0, 1)
    scaled_r = np.clip(r / np.percentile(r[m], 99.5), 0, 1)
    mse = np.mean((scaled_p[m] - scaled_r[m]) ** 2)
    assert report["model"]["mask"]["psnr"] == pytest.approx(-10 * math.log10(mse), abs=1e-6)
    assert report["model"]["mask"]["mae"] == pytest.approx(np.mean(np.abs(scaled_p[m] - scaled_r[m])), rel=1e-6)
    assert report["model"]["mask_voxels"] == int(m.sum())
    assert 0.8 < report["model"]["mask"]["ssim_3d"] < 1
    assert report["model"]["ssim_brasyn"] == pytest.approx(metrics.brasyn_ssim(p, r, m))


def test_flipped_volume_has_low_ssim(shared_data, tmp_path):
    source = nib.load(str(shared_data / "volumes" / "avg152" / "avg152T1.nii"))
    data = np.asarray(source.dataobj, dtype=np.float32)
    ref = write_nifti(tmp_path / "ref.nii.gz", data, source.affine)
    flipped = write_nifti(tmp_path / "flipped.nii.gz", data[:, ::-1], source.affine)  # anterior <-> posterior
    report = evaluate(flipped, ref)
    assert report["model"]["mask"]["ssim_3d"] < 0.5
    assert report["model"]["mask"]["psnr"] < 20


def test_baselines_need_input(capsys, synthetic_nifti):
    status, _, stderr = cli(capsys, "evaluate", "--pred", synthetic_nifti, "--ref", synthetic_nifti, "--baselines")
    assert status == 2
    assert "--input" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_baselines_and_reports_on_real_paired_data(capsys, tmp_path, tcga_crop):
    json_path, csv_path, plot_path = tmp_path / "r.json", tmp_path / "slices.csv", tmp_path / "plot.png"
    status, stdout, stderr = cli(capsys, "evaluate", "--pred", tcga_crop["pred"], "--ref", tcga_crop["t2"], "--input",
                                 tcga_crop["t1"], "--baselines", "--json", json_path, "--csv", csv_path, "--plot",
                                 plot_path)
    assert status == 0, stderr
    report = json.loads(json_path.read_text())
    baselines = report["baselines"]
    assert {"identity", "inverted_histogram_matched"} <= set(baselines)
    identity, matched = baselines["identity"]["mask"], baselines["inverted_histogram_matched"]["mask"]
    assert matched["psnr"] > identity["psnr"]  # T1 is not T2; its inversion is closer
    assert report["model"]["mask"]["psnr"] > matched["psnr"]  # the noisy T2 beats both
    assert "normalisation" not in baselines["identity"]
    # the noisy T2 flickers between slices more than the real T2 does, both relative to the T1 input
    assert report["interslice_consistency"] > report["reference_interslice_consistency"] > 0
    assert "inverted_histogram_matched" in stdout and "identity" in stdout

    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["slice", "psnr", "ssim", "mae"]
    mask = metrics.auto_mask(load_array(tcga_crop["t2"]))
    nonempty = np.flatnonzero(mask.any(axis=(0, 1)))  # axial slices (RAS axis 2) holding mask voxels
    assert 0 < len(nonempty) <= 40
    assert [int(row["slice"]) for row in rows] == nonempty.tolist()
    assert [float(row["psnr"]) for row in rows] == pytest.approx([row["psnr"] for row in report["per_slice"]])
    assert all(0 < float(row["mae"]) < 1 and -1 <= float(row["ssim"]) <= 1 for row in rows)

    with Image.open(plot_path) as plot:
        assert plot.format == "PNG" and plot.size[0] > 100


def test_target_example_is_recorded(tcga_crop):
    report = evaluate(tcga_crop["pred"], tcga_crop["t2"], source=tcga_crop["t1"], baselines=True,
                      target_example=tcga_crop["pred"])
    assert report["baselines"]["histogram_target"] == str(tcga_crop["pred"])


@pytest.fixture
def slice_folders(shared_data, tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    sources = sorted((shared_data / "seed_2d" / "TrainT2").glob("*.png"))[:3]
    for source in sources:
        shutil.copy(source, pred)
        shutil.copy(source, ref)
    return pred, ref, [s.name for s in sources]


def test_folders_of_2d_slices_matched_by_name(capsys, tmp_path, slice_folders):
    pred, ref, names = slice_folders
    json_path = tmp_path / "r.json"
    status, _, stderr = cli(capsys, "evaluate", "--pred", pred, "--ref", ref, "--json", json_path)
    assert status == 0, stderr
    report = json.loads(json_path.read_text())
    assert report["model"]["mask"]["psnr"] == 100.0
    assert [row["slice"] for row in report["per_slice"]] == [0, 1, 2]
    width, height = Image.open(pred / names[0]).size
    assert load_array(pred).shape == (width, height, 3)


def test_folders_with_different_names(capsys, slice_folders):
    pred, ref, names = slice_folders
    (ref / names[0]).rename(ref / "renamed.png")
    with pytest.raises(InputError, match="by name"):
        evaluate(pred, ref)
    status, _, stderr = cli(capsys, "evaluate", "--pred", pred, "--ref", ref)
    assert status == 2 and "renamed.png" in stderr and "Traceback" not in stderr


def test_shape_mismatch_names_both_shapes(capsys, tmp_path, synthetic_nifti):
    other = write_nifti(tmp_path / "other.nii.gz", synthetic_volume((13, 11, 8)))
    status, _, stderr = cli(capsys, "evaluate", "--pred", synthetic_nifti, "--ref", other)
    assert status == 2
    assert "(13, 11, 7)" in stderr and "(13, 11, 8)" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_empty_mask_file(capsys, tmp_path, synthetic_nifti):
    empty = write_nifti(tmp_path / "empty_mask.nii.gz", np.zeros((13, 11, 7)))
    status, _, stderr = cli(capsys, "evaluate", "--pred", synthetic_nifti, "--ref", synthetic_nifti, "--mask", empty)
    assert status == 2
    assert "empty" in stderr and str(empty) in stderr and "Traceback" not in stderr


def test_mask_of_another_shape(capsys, tmp_path, synthetic_nifti):
    mask = write_nifti(tmp_path / "mask.nii.gz", np.ones((13, 11, 8)))
    status, _, stderr = cli(capsys, "evaluate", "--pred", synthetic_nifti, "--ref", synthetic_nifti, "--mask", mask)
    assert status == 2 and "(13, 11, 8)" in stderr


def test_mask_file_and_no_mask(tmp_path, synthetic_nifti):
    volume = synthetic_volume()
    noisy = write_nifti(tmp_path / "noisy.nii.gz", volume + np.random.default_rng(0).normal(0, 5, volume.shape))
    everything = evaluate(noisy, synthetic_nifti, mask=None)
    assert everything["model"]["mask"] == everything["model"]["whole"]
    assert everything["model"]["mask_voxels"] == volume.size
    box = np.zeros(volume.shape)
    box[3:10, 3:8, 2:5] = 1
    mask_path = write_nifti(tmp_path / "box.nii.gz", box)
    boxed = evaluate(noisy, synthetic_nifti, mask=mask_path)
    assert boxed["model"]["mask_voxels"] == int(box.sum())
    assert boxed["mask"] == str(mask_path)
    assert {row["slice"] for row in boxed["per_slice"]} == {2, 3, 4}


def test_region_scores_and_contrast_ratio_of_a_constructed_case(capsys, tmp_path):
    """``evaluate --region``: a region of known contrast (1.5 in the reference, 1.2 in the prediction: see
    tests/test_metrics.py ``region_case``) reports both and their ratio 0.8 in the JSON and the summary, for the
    model and the baselines; a region on another grid is refused in one line."""
    from test_metrics import region_case

    pred, ref, brain, region = region_case()
    paths = {name: write_nifti(tmp_path / f"{name}.nii.gz", data)
             for name, data in (("pred", pred), ("ref", ref), ("brain", brain), ("region", region))}
    source = write_nifti(tmp_path / "source.nii.gz", np.where(brain, 2000.0 - ref, 0.0))
    status, stdout, stderr = cli(capsys, "evaluate", "--pred", paths["pred"], "--ref", paths["ref"], "--mask",
                                 paths["brain"], "--region", paths["region"], "--input", source, "--baselines",
                                 "--json", tmp_path / "report.json")
    assert status == 0, stderr
    region_report = json.loads((tmp_path / "report.json").read_text())["region"]
    model = region_report["model"]
    assert model["contrast"] == pytest.approx(1.2) and model["reference_contrast"] == pytest.approx(1.5)
    assert model["contrast_ratio"] == pytest.approx(0.8) and model["voxels"] == 64
    assert set(region_report["baselines"]) == {"identity", "inverted_histogram_matched"}
    assert region_report["baselines"]["identity"]["contrast_ratio"] < 1.0  # inverted: the region is darker
    assert "in the region" in stdout and " 0.800" in stdout
    status, _, stderr = cli(capsys, "evaluate", "--pred", paths["pred"], "--ref", paths["ref"], "--region",
                            write_nifti(tmp_path / "small.nii.gz", region[:8]))
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and "region shape" in stderr
