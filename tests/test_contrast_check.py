"""The contrast check (refuse a scan whose contrast contradicts --direction) and the out-of-domain flag
(convert --qc / --strict): on synthetic brains (always) and on the real scans of ../shared/data (skipped when
absent)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SYNTHETIC_AFFINE, run_cli

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def scripts_on_path():
    """``scripts/`` importable (calibrate_checks, bench_checks) for the duration of the module."""
    sys.path.insert(0, str(SCRIPTS))
    yield
    sys.path.remove(str(SCRIPTS))


def verdict_of(path):
    from mri_translate.contrast_check import classify_contrast
    from mri_translate.io import load_volume

    return classify_contrast(load_volume(path))


def test_synthetic_t1w_and_t2w_are_recognised(synthetic_4mm):
    for t1, t2 in zip(synthetic_4mm["t1"], synthetic_4mm["t2"]):
        v1, v2 = verdict_of(t1), verdict_of(t2)
        assert v1.label == "T1w" and v1.scores["tail"] < -0.3, v1
        assert v2.label == "T2w" and v2.scores["tail"] > 1.0, v2
        assert set(v1.scores) == {"tail", "contrast", "rim", "voxels"}


def test_orientation_does_not_change_the_verdict(synthetic_4mm, tmp_path):
    """The same T2w stored LPS with its axes permuted: the check reads it through RAS, same features."""
    import nibabel as nib

    image = nib.load(str(synthetic_4mm["t2"][0]))
    data = np.asarray(image.dataobj)[::-1, ::-1].transpose(2, 0, 1)
    affine = image.affine @ np.array([[-1, 0, 0, data.shape[1] - 1], [0, -1, 0, data.shape[2] - 1], [0, 0, 1, 0],
                                      [0, 0, 0, 1]], dtype=float)[:, [2, 0, 1, 3]]
    path = tmp_path / "permuted.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    original, permuted = verdict_of(synthetic_4mm["t2"][0]), verdict_of(path)
    assert permuted.label == "T2w"
    assert permuted.scores == pytest.approx(original.scores, rel=1e-5)


def test_flair_pd_ct_mask_and_noise_are_neither(scripts_on_path, tmp_path):
    from bench_checks import made_up_volumes

    verdicts = {item["name"]: verdict_of(item["path"]) for item in made_up_volumes(tmp_path)}
    for name in ("FLAIR-like (synthetic)", "PD-like (synthetic)", "CT-like head", "brain mask", "uniform noise"):
        assert verdicts[name].label == "other", (name, verdicts[name])
    assert "FLAIR" in verdicts["FLAIR-like (synthetic)"].reason
    assert "PD" in verdicts["PD-like (synthetic)"].reason


def test_tiny_image_abstains(tmp_path):
    """Too little tissue to judge (a 20 x 20 PNG): ``unknown``, which no direction refuses."""
    from PIL import Image

    from mri_translate.contrast_check import check_direction
    from mri_translate.io import load_volume

    path = tmp_path / "tiny.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(path)
    volume = load_volume(path)
    assert check_direction(volume, "t1-to-t2", path).label == "unknown"
    assert check_direction(volume, "t2-to-t1", path).label == "unknown"


def test_right_contrast_passes_and_is_recorded(synthetic_4mm, tiny_run, tmp_path, capsys):
    out = tmp_path / "t2.nii.gz"
    status, stdout, stderr = run_cli(capsys, "convert", synthetic_4mm["t1"][0], out, "--model", tiny_run,
                                     "--no-progress")
    assert status == 0, stderr
    sidecar = json.loads((tmp_path / "t2.json").read_text())
    assert sidecar["ContrastCheck"]["Label"] == "T1w"
    assert sidecar["ContrastCheck"]["Scores"]["tail"] < 0
    assert "InDomain" not in sidecar  # the out-of-domain flag needs --qc or --strict


@pytest.mark.parametrize("direction, source, looks, hint", [("t1-to-t2", "t2", "T2w", "t2-to-t1"),
                                                           ("t2-to-t1", "t1", "T1w", "t1-to-t2")])
def test_wrong_contrast_exits_2_with_one_line(synthetic_4mm, tiny_run, tmp_path, capsys, direction, source, looks,
                                               hint):
    scan, out = synthetic_4mm[source][0], tmp_path / "out.nii.gz"
    status, stdout, stderr = run_cli(capsys, "convert", scan, out, "--model", tiny_run, "--direction", direction,
                                     "--no-progress")
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"mri-translate convert: error: {scan}: looks like a {looks}, not a ")
    assert f"--direction {hint}" in lines[0] and "--force" in lines[0]
    assert not out.exists() and not (tmp_path / "out.json").exists() and list(tmp_path.iterdir()) == []


def test_force_translates_the_wrong_contrast(synthetic_4mm, tiny_run, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    status, _, stderr = run_cli(capsys, "convert", synthetic_4mm["t2"][0], out, "--model", tiny_run, "--force",
                                "--no-progress")
    assert status == 0, stderr
    assert out.is_file()
    assert json.loads((tmp_path / "out.json").read_text())["ContrastCheck"] == {"Label": None, "Skipped": "--force"}


def test_batch_goes_on_past_a_refused_file(synthetic_4mm, tiny_run, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    shutil.copy(synthetic_4mm["t1"][0], folder / "a_scan.nii.gz")
    shutil.copy(synthetic_4mm["t2"][1], folder / "b_scan.nii.gz")
    shutil.copy(synthetic_4mm["t1"][1], folder / "c_scan.nii.gz")
    status, stdout, stderr = run_cli(capsys, "convert", folder, out, "--model", tiny_run, "--no-progress")
    assert status == 1
    assert stdout.strip() == "2 converted, 0 skipped (already done), 1 failed"
    failed = [line for line in stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and f"{folder / 'b_scan.nii.gz'}: looks like a T2w" in failed[0]
    assert sorted(p.name for p in out.iterdir()) == ["a_scan_T2w.json", "a_scan_T2w.nii.gz", "c_scan_T2w.json",
                                                      "c_scan_T2w.nii.gz"]


def model_with_checks(tiny_run, tmp_path, limit: float) -> Path:
    """A copy of the tiny model with every out-of-domain threshold set to ``limit`` (stored as
    scripts/calibrate_checks.py stores them)."""
    from calibrate_checks import store

    model = tmp_path / f"model_{limit:g}.pt"
    shutil.copyfile(tiny_run / "models" / "model.pt", model)
    limits = {"CycleErrorMAE": limit, "HistogramDistance": limit, "InterSliceConsistency": limit}
    store(model, {"t1-to-t2": limits, "t2-to-t1": limits, "Calibration": "test"})
    return model


def test_stored_thresholds_load_with_weights_only_and_defaults_otherwise(scripts_on_path, tiny_run, tmp_path):
    from mri_translate.contrast_check import DEFAULT_CHECKS, model_checks

    model = model_with_checks(tiny_run, tmp_path, 0.25)
    assert model_checks(model, "t2-to-t1") == ({"CycleErrorMAE": 0.25, "HistogramDistance": 0.25,
                                                "InterSliceConsistency": 0.25}, "test")
    assert model_checks(tiny_run / "models" / "model.pt", "t1-to-t2") == (DEFAULT_CHECKS, "defaults")


def test_out_of_domain_warns_with_qc_and_strict_exits_2(scripts_on_path, synthetic_4mm, tiny_run, tmp_path,
                                                        capsys):
    scan = synthetic_4mm["t1"][0]
    strict_model = model_with_checks(tiny_run, tmp_path, 0.0)
    lenient_model = model_with_checks(tiny_run, tmp_path, 1e6)

    out = tmp_path / "in_domain.nii.gz"
    status, _, stderr = run_cli(capsys, "convert", scan, out, "--model", lenient_model, "--qc", "--no-progress")
    assert status == 0 and "warning" not in stderr
    sidecar = json.loads((tmp_path / "in_domain.json").read_text())
    assert sidecar["InDomain"] is True and sidecar["DomainCheck"]["Exceeded"] == []

    out = tmp_path / "warned.nii.gz"
    status, _, stderr = run_cli(capsys, "convert", scan, out, "--model", strict_model, "--qc", "--no-progress")
    assert status == 0
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{scan}: looks outside the model's training domain (CycleErrorMAE" in warnings[0]
    sidecar = json.loads((tmp_path / "warned.json").read_text())
    check = sidecar["DomainCheck"]
    assert sidecar["InDomain"] is False and check["ThresholdSource"] == "test"
    assert check["Thresholds"]["CycleErrorMAE"] == 0.0
    assert check["Values"]["CycleErrorMAE"] == sidecar["QC"]["CycleErrorMAE"] > 0
    assert "CycleErrorMAE" in check["Exceeded"]

    out = tmp_path / "refused.nii.gz"
    status, _, stderr = run_cli(capsys, "convert", scan, out, "--model", strict_model, "--strict", "--no-progress")
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1 and "refused by --strict" in stderr
    assert not out.exists() and not (tmp_path / "refused.json").exists()


def test_thresholds_are_margin_times_the_largest_right_contrast_value(scripts_on_path):
    from calibrate_checks import calibration_rows, thresholds

    def row(name, direction, right, value, contrast="T1w"):
        return {"name": name, "label": "T1w", "contrast": contrast, "direction": direction, "right": right,
                "CycleErrorMAE": value, "HistogramDistance": value / 10, "InterSliceConsistency": 1.0}

    rows = [row("a", "t1-to-t2", True, 0.1), row("b", "t1-to-t2", True, 0.2), row("c", "t2-to-t1", False, 0.9),
            row("tcga_fg_6692_native/x", "t1-to-t2", True, 0.5), row("flairish", "t1-to-t2", True, 0.7, "other")]
    kept = calibration_rows(rows, exclude=["tcga_fg_6692_native"])
    assert [r["name"] for r in kept] == ["a", "b"]
    limits = thresholds(kept, margin=1.5)
    assert limits["t1-to-t2"] == pytest.approx({"CycleErrorMAE": 0.3, "HistogramDistance": 0.03,
                                                "InterSliceConsistency": 1.5})
    assert limits["t2-to-t1"] == {}


def test_a_constant_image_is_refused_by_name(tmp_path):
    """The check normalises a subsampled copy: a constant input still fails with its own file name."""
    import nibabel as nib

    from mri_translate.contrast_check import classify_contrast
    from mri_translate.errors import InputError
    from mri_translate.io import load_volume

    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7.0, np.float32), SYNTHETIC_AFFINE), str(path))
    with pytest.raises(InputError, match="flat.nii.gz"):
        classify_contrast(load_volume(path))


# ---------------------------------------------------------------------------------------------------------
# Real scans (../shared/data): every T1w and T2w file recognised; the FLAIR-looking "T2w" refused.

REAL = [("volumes/avg152/avg152T1.nii", "T1w"), ("volumes/avg152/avg152T2.nii", "T2w"),
        ("volumes/tcga_du_7294/t1.nii.gz", "T1w"), ("volumes/tcga_du_7294/t2.nii.gz", "T2w"),
        ("volumes/brats23_gli_00000/t1.nii.gz", "T1w"), ("volumes/brats23_gli_00000/t2.nii.gz", "T2w"),
        ("volumes/tcga_fg_6692_native/t1_ax_se.nii.gz", "T1w"), ("volumes/tcga_fg_6692_native/t2_ax_tse.nii.gz", "T2w"),
        ("volumes/train_real/adi_brain_T2w.nii.gz", "T2w"), ("volumes/train_real/uih_T1w.nii.gz", "T1w"),
        ("volumes/train_real/seg3d_mr_T1w.nii.gz", "T1w"), ("volumes/train_real/brainix_T1w.nii.gz", "T1w"),
        ("dicom/mr_t1_mprage_series", "T1w"), ("volumes/train_real/torchio_fpg_T2w.nii.gz", "other")]


@pytest.mark.parametrize("relative, label", REAL, ids=[r for r, _ in REAL])
def test_real_scans(shared_data, relative, label):
    verdict = verdict_of(shared_data / relative)
    assert verdict.label == label, verdict


def test_real_2d_slices(shared_data):
    for folder, label in (("TrainT1", "T1w"), ("TrainT2", "T2w")):
        for path in sorted((shared_data / "seed_2d" / folder).glob("*.png"))[::10]:
            assert verdict_of(path).label == label, path


def test_real_wrong_contrast_refused_through_the_cli(shared_data, tiny_run, tmp_path, capsys):
    scan = shared_data / "volumes" / "tcga_du_7294" / "t2.nii.gz"
    status, _, stderr = run_cli(capsys, "convert", scan, tmp_path / "o.nii.gz", "--model", tiny_run, "--no-progress")
    assert status == 2 and f"{scan}: looks like a T2w, not a T1w" in stderr and "--direction t2-to-t1" in stderr


def ellipsoid_scan(path, semi_axes_mm, spacing_mm=2.0) -> Path:
    """A NIfTI (RAS, ``spacing_mm`` voxels) holding a textured ellipsoid with the given semi-axes (mm) on a dark
    background: a 'head' whose largest axial area is pi * a * b."""
    import nibabel as nib

    shape = (110, 130, 90)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * spacing_mm for n in shape], indexing="ij"))
    inside = sum((g / s) ** 2 for g, s in zip(grid, semi_axes_mm)) <= 1
    rng = np.random.default_rng(0)
    data = np.where(inside, 100 + 30 * rng.random(shape), rng.random(shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([spacing_mm] * 3 + [1.0])), path)
    return Path(path)


def model_trained_on(tiny_run, tmp_path, skull_stripped: bool) -> Path:
    """A copy of the tiny model that records its domains as skull-stripped (or not)."""
    import torch

    state = torch.load(tiny_run / "models" / "model.pt", weights_only=True)
    state["skull_stripped"] = {"A": skull_stripped, "B": skull_stripped}
    path = tmp_path / f"model_stripped_{skull_stripped}.pt"
    torch.save(state, path)
    return path


def test_a_whole_head_for_a_model_trained_on_brains_warns_and_strict_refuses(tiny_run, tmp_path, capsys,
                                                                             monkeypatch):
    """Largest axial area pi * 95 * 80 mm^2 = 239 cm^2 (a head) vs pi * 70 * 60 mm^2 = 132 cm^2 (a brain):
    a model trained on skull-stripped brains warns about the head in one line naming the file and records
    both in the sidecar; --strict refuses it before translating (exit 2, nothing written); a brain passes; a model trained on
    whole heads says nothing, and one that records nothing checks nothing."""
    head = ellipsoid_scan(tmp_path / "head.nii.gz", (80, 95, 70))
    brain = ellipsoid_scan(tmp_path / "brain.nii.gz", (60, 70, 55))
    brains_only = model_trained_on(tiny_run, tmp_path, True)

    status, _, stderr = run_cli(capsys, "convert", head, tmp_path / "h.nii.gz", "--model", brains_only, "--force")
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert status == 0 and len(warnings) == 1
    assert f"{head}: looks like a whole head" in warnings[0] and "skull-strip it first" in warnings[0]
    record = json.loads((tmp_path / "h.json").read_text())["SkullStripping"]
    assert record["InputLooksSkullStripped"] is False and record["ModelTrainedOnSkullStripped"] is True
    assert record["HeadAreaCm2"] == pytest.approx(np.pi * 9.5 * 8.0, rel=0.1)

    from mri_translate.inference import Translator

    with monkeypatch.context() as patch:  # refused before the generator runs
        patch.setattr(Translator, "run_normalized", lambda *a: pytest.fail("translated a refused scan"))
        status, _, stderr = run_cli(capsys, "convert", head, tmp_path / "r.nii.gz", "--model", brains_only,
                                    "--force", "--strict")
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and "refused by --strict" in stderr
    assert not (tmp_path / "r.nii.gz").exists() and not (tmp_path / "r.json").exists()

    status, _, stderr = run_cli(capsys, "convert", brain, tmp_path / "b.nii.gz", "--model", brains_only, "--force")
    assert status == 0 and "warning" not in stderr
    record = json.loads((tmp_path / "b.json").read_text())["SkullStripping"]
    assert record["InputLooksSkullStripped"] is True and record["HeadAreaCm2"] == pytest.approx(np.pi * 7 * 6, rel=0.1)

    status, _, stderr = run_cli(capsys, "convert", head, tmp_path / "w.nii.gz", "--model",
                                model_trained_on(tiny_run, tmp_path, False), "--force")
    assert status == 0 and "warning" not in stderr
    assert json.loads((tmp_path / "w.json").read_text())["SkullStripping"]["ModelTrainedOnSkullStripped"] is False
    status, _, stderr = run_cli(capsys, "convert", head, tmp_path / "n.nii.gz", "--model", tiny_run, "--force")
    assert status == 0 and "SkullStripping" not in json.loads((tmp_path / "n.json").read_text())


# The skull-stripping check judges heads, not background noise -------------------------------------------------

def skull_record(volume, prepare=None) -> dict:
    """``check_skull_stripping``'s record of a volume ``(1, X, Y, Z)`` for a model trained on brains, prepared by
    ``prepare`` (default: RobustNormalize in RAS, as training stores it)."""
    from mri_translate.contrast_check import check_skull_stripping
    from mri_translate.transforms import RobustNormalize, to_canonical

    canonical = prepare(volume) if prepare else RobustNormalize()(to_canonical(volume))
    return check_skull_stripping(canonical, True, "scan.nii.gz")


def as_volume(array, affine):
    import torch
    from monai.data import MetaTensor

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None],
                      affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64))


def with_rician_noise(volume, fraction: float, seed: int = 0):
    """The magnitude of ``volume`` plus complex Gaussian noise of sigma = ``fraction`` x its 99.5th percentile
    (Rician in the head, Rayleigh in the background, as a scanner saves it)."""
    data = np.clip(volume[0].numpy(), 0, None)
    sigma = fraction * np.percentile(data[data > 0], 99.5)
    rng = np.random.default_rng(seed)
    noisy = np.hypot(data + sigma * rng.standard_normal(data.shape), sigma * rng.standard_normal(data.shape))
    return as_volume(noisy, volume.affine)


def test_noisy_synthetic_brains_are_brains_and_synthetic_heads_are_heads(capsys, tmp_path):
    """The demo's subjects (no skull; Rician background noise at 2 % of the maximum) are brains: through the shipped
    model's own preparation (its standardiser lifts the background noise: the noise used to count as head, 326 cm^2)
    and through training's (data.load_slices); a synthetic whole head (skull and scalp) is still a head."""
    from mri_translate.data import load_slices
    from mri_translate.inference import Translator
    from mri_translate.synthetic import make_pair, write_dataset

    shipped = Translator.from_run(None, device="cpu")
    for seed in (0, 4):
        pair = make_pair(seed, 2.0, deep_grey=True, lesions=True)
        t1, t2 = as_volume(pair.t1, pair.affine), as_volume(pair.t2, pair.affine)
        for record in (skull_record(t1, shipped.prepare), skull_record(t1), skull_record(t2)):
            assert record["InputLooksSkullStripped"] and record["HeadAreaCm2"] > 190, record  # the mask's: 203-209
    assert "warning" not in capsys.readouterr().err
    data = write_dataset(tmp_path, n_subjects=1, resolution=2.0, seed=4, deep_grey=True, lesions=True)
    assert all(load_slices([data[key][0]], spacing=1.0).volumes[0].skull_stripped for key in ("t1", "t2"))
    head = make_pair(0, 2.0, head=True)
    for image in (head.t1, head.t2):
        record = skull_record(as_volume(image, head.affine))
        assert not record["InputLooksSkullStripped"] and record["HeadAreaCm2"] > 240, record


def test_real_skull_stripped_scans_with_noise_are_brains_and_whole_heads_stay_heads(shared_data):
    """Skull-stripped real scans (a glioma, a multiple-sclerosis patient) saved with a noisy background (Rician,
    sigma 5 % of the 99.5th percentile: 545 and 385 cm^2 before) are brains; the real whole-head scans are still
    heads, with and without added noise."""
    from mri_translate.io import load_volume

    volumes = shared_data / "volumes"
    for path in (volumes / "tcga_du_7294" / "t1.nii.gz", volumes / "mslub_p07" / "t2.nii.gz"):
        volume = load_volume(path)
        for image in (volume, with_rician_noise(volume, 0.05)):
            record = skull_record(image)
            assert record["InputLooksSkullStripped"] and record["HeadAreaCm2"] < 180, (path, record)
    for path in (volumes / "tcga_fg_6692_native" / "t1_ax_se.nii.gz", volumes / "tcga_fg_6692_native" /
                 "t2_ax_tse.nii.gz", volumes / "train_real" / "seg3d_mr_T1w.nii.gz"):
        volume = load_volume(path)
        for image in (volume, with_rician_noise(volume, 0.05)):
            record = skull_record(image)
            assert not record["InputLooksSkullStripped"] and record["HeadAreaCm2"] > 235, (path, record)
