"""Tests of ``mri-translate info``: JSON and text output, and the one-line error contract (exit status 2, one
line on stderr, no traceback; ``--debug`` re-raises)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SYNTHETIC_SHAPE, synthetic_volume
from mri_translate.cli import main
from mri_translate.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def run_info(capsys, *args):
    status = main(["info", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_info_json_synthetic(capsys, synthetic_nifti):
    status, out, err = run_info(capsys, synthetic_nifti, "--json")
    assert status == 0 and err == ""
    facts = json.loads(out)
    assert {"shape", "spacing", "axcodes", "dtype", "min", "max"} <= set(facts)
    assert facts["shape"] == list(SYNTHETIC_SHAPE)
    assert facts["spacing"] == [1.0, 1.2, 2.5]
    assert facts["axcodes"] == "LPS"
    assert facts["dtype"] == "float32"
    data = synthetic_volume()
    assert facts["min"] == float(data.min()) == 0.0
    assert facts["max"] == pytest.approx(float(data.max()), rel=1e-7)
    assert facts["format"] == "nifti"
    assert facts["path"] == str(synthetic_nifti)
    assert "series_description" not in facts


def test_info_text_synthetic(capsys, synthetic_nifti):
    status, out, err = run_info(capsys, synthetic_nifti)
    assert status == 0 and err == ""
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()}
    assert lines["axcodes"] == "LPS"
    assert lines["shape"] == str(list(SYNTHETIC_SHAPE))
    assert lines["dtype"] == "float32"


def test_info_json_dicom_series(capsys, shared_data):
    status, out, err = run_info(capsys, shared_data / "dicom" / "mr_t1_mprage_series", "--json")
    assert status == 0
    facts = json.loads(out)
    assert facts["format"] == "dicom"
    assert facts["series_description"] == "t1_mpr_tra_gk_v4"
    assert facts["shape"] == [512, 512, 48]
    np.testing.assert_allclose(facts["spacing"], [0.41015625, 0.41015625, 1.5], atol=1e-6)
    assert facts["axcodes"] == "LPS"


def test_info_png_with_odd_name(capsys, shared_data):
    status, out, _ = run_info(capsys, shared_data / "seed_2d" / "TrainT1" / "Image #10.png", "--json")
    assert status == 0
    facts = json.loads(out)
    assert facts["shape"] == [181, 217, 1] and facts["format"] == "image" and 0 <= facts["min"] < facts["max"] <= 255


def test_info_missing_file_in_process(capsys, tmp_path):
    missing = tmp_path / "no scan.nii.gz"
    status, out, err = run_info(capsys, missing)
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mri-translate info: error:")
    assert str(missing) in lines[0] and "no such file" in lines[0]


def test_info_bad_file_in_process(capsys, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_text("not an image")
    status, _, err = run_info(capsys, bad, "--json")
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"mri-translate info: error: {bad}: ")


def test_info_debug_reraises(tmp_path):
    missing = tmp_path / "missing.nii"
    with pytest.raises(InputError) as excinfo:
        main(["--debug", "info", str(missing)])
    assert excinfo.value.path == str(missing)


def test_info_missing_file_subprocess(tmp_path):
    missing = tmp_path / "absent #1.nii.gz"
    result = subprocess.run([sys.executable, "-m", "mri_translate.cli", "info", str(missing)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mri-translate info: error:")
    assert str(missing) in lines[0]
    assert "Traceback" not in result.stderr
