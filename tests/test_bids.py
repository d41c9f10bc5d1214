"""Tests of the BIDS App entry point (mri_translate.bids and ``mri-translate bids``) on a dataset built in
tmp_path: two subjects, one of them with two sessions; outputs named and described as a BIDS derivative
dataset (file names checked with the bids-validator package), reruns skip finished files, participant and
session labels are honoured, the group level does nothing, bad calls fail in one line."""

import json
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bids_validator import BIDSValidator

from conftest import SYNTHETIC_AFFINE, run_cli, synthetic_volume
from mri_translate import __version__
from mri_translate.bids import GROUP_LEVEL_NOTE, select
from mri_translate.convert import plan_batch
from mri_translate.errors import InputError
from mri_translate.model_file import sha256
from mri_translate.io import load_volume

pytestmark = pytest.mark.usefixtures("torch_single_thread")

INPUTS = ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
          "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz", "sub-02/ses-post/anat/sub-02_ses-post_T1w.nii.gz")
T1W_OUTPUTS = ("sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz",
               "sub-02/ses-post/anat/sub-02_ses-post_desc-synthetic_T2w.nii.gz",
               "sub-02/ses-pre/anat/sub-02_ses-pre_desc-synthetic_T2w.nii.gz")


@pytest.fixture
def bids_dataset(tmp_path) -> Path:
    """A BIDS dataset with tiny 13 x 11 x 7 volumes: sub-01 (T1w and T2w), sub-02 with sessions pre and post
    (T1w), a participants.tsv and a derivatives/ folder that must be left alone."""
    root = tmp_path / "bids"
    for i, relative in enumerate(INPUTS):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(synthetic_volume() * np.float32(1 + i), SYNTHETIC_AFFINE), str(path))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    (root / "derivatives" / "other" / "sub-01" / "anat").mkdir(parents=True)
    return root


def bids_name_is_valid(relative: str) -> bool:
    """BIDS file-name check of a derivative file by the bids-validator package. Its rules are those of raw
    data; BIDS Derivatives adds the ``desc-<label>`` entity as the last entity before the suffix. So a name is
    valid when the raw name is valid and ``desc-<alphanumeric>`` (if present) sits in that place."""
    path = "/" + relative
    match = re.fullmatch(r"(.*)_desc-[a-zA-Z0-9]+(_[a-zA-Z0-9]+\.(?:nii\.gz|nii|json))", path)
    return BIDSValidator().is_bids(match.group(1) + match.group(2) if match else path)


def bids(capsys, *args):
    return run_cli(capsys, "bids", *args)


def resolve_bids_uri(uri: str, dataset: Path) -> Path:
    """The file a BIDS URI ``bids:<name>:<relative path>`` found in ``dataset`` names, resolved as the BIDS
    specification says: ``<name>`` through the ``DatasetLinks`` of the dataset's ``dataset_description.json`` (a
    path without a scheme is relative to the dataset's root; the empty name is the dataset itself)."""
    scheme, name, relative = uri.split(":", 2)
    assert scheme == "bids" and not relative.startswith("/"), uri
    links = json.loads((dataset / "dataset_description.json").read_text()).get("DatasetLinks", {})
    return (dataset / links[name] if name else dataset) / relative


def test_validator_check_can_fail():
    """The name check used below rejects what BIDS rejects."""
    assert bids_name_is_valid("sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz")
    assert not bids_name_is_valid("sub-01/anat/sub-02_desc-synthetic_T2w.nii.gz")  # subject mismatch
    assert not bids_name_is_valid("sub-01/anat/sub-01_desc-synthetic_run-1_T2w.nii.gz")  # desc not last
    assert not bids_name_is_valid("sub-01/anat/sub-01_desc-syn_thetic_T2w.nii.gz")
    assert not bids_name_is_valid("sub-01/ses-1/anat/sub-01_desc-synthetic_T2w.nii.gz")  # session missing


def test_participant_level_writes_a_valid_derivative_dataset(capsys, bids_dataset, tmp_path, tiny_run):
    out = tmp_path / "derivatives" / "mri-translate"
    status, stdout, _ = bids(capsys, bids_dataset, out, "participant", "--model", tiny_run, "--device", "cpu",
                             "--no-progress")
    assert status == 0 and "3 converted, 0 skipped (already done), 0 failed" in stdout
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted([*T1W_OUTPUTS, *(o.replace(".nii.gz", ".json") for o in T1W_OUTPUTS), "dataset_description.json"])
    assert files == expected
    assert all(bids_name_is_valid(f) for f in files), [f for f in files if not bids_name_is_valid(f)]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "mri-translate"
    assert description["GeneratedBy"][0]["Version"] == __version__
    assert description["DatasetLinks"] == {"raw": "../../bids"}  # BIDS URIs need it; relative to the derivative
    for output in T1W_OUTPUTS:
        source = bids_dataset / output.replace("_desc-synthetic_T2w", "_T1w")
        sidecar = json.loads((out / output.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"] == [f"bids:raw:{source.relative_to(bids_dataset).as_posix()}"]
        assert resolve_bids_uri(sidecar["Sources"][0], out).samefile(source)
        assert sidecar["InputSHA256"] == sha256(source)
        assert sidecar["ModelSHA256"] == sha256(Path(tiny_run) / "models" / "model.pt")
        assert sidecar["Software"]["mri-translate"] == __version__ and sidecar["Direction"] == "t1-to-t2"
        translated, original = load_volume(out / output), load_volume(source)
        assert translated.shape == original.shape
        np.testing.assert_allclose(translated.meta["original_affine"], original.meta["original_affine"])
    assert not any((bids_dataset / "derivatives" / "other").rglob("*.nii.gz"))


def test_rerun_skips_finished_files(capsys, bids_dataset, tmp_path, tiny_run):
    out = tmp_path / "out"
    arguments = (bids_dataset, out, "participant", "--model", tiny_run, "--device", "cpu", "--no-progress")
    assert bids(capsys, *arguments)[0] == 0
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    (out / T1W_OUTPUTS[0]).unlink()  # an interrupted run: only this file is redone
    status, stdout, _ = bids(capsys, *arguments)
    assert status == 0 and "1 converted, 2 skipped" in stdout
    assert all(p.stat().st_mtime_ns == t for p, t in written.items() if p != out / T1W_OUTPUTS[0])
    status, stdout, _ = bids(capsys, *arguments)
    assert status == 0 and "0 converted, 3 skipped" in stdout


@pytest.mark.parametrize("labels, sessions, expected", [
    (["02"], None, T1W_OUTPUTS[1:]),
    (["sub-01"], None, T1W_OUTPUTS[:1]),
    (["01", "02"], ["pre"], T1W_OUTPUTS[2:]),
    (None, ["ses-post"], T1W_OUTPUTS[1:2]),
])
def test_participant_and_session_labels(capsys, bids_dataset, tmp_path, tiny_run, labels, sessions, expected):
    out = tmp_path / "out"
    arguments = [bids_dataset, out, "participant", "--model", tiny_run, "--device", "cpu", "--no-progress"]
    arguments += ["--participant_label", *labels] if labels else []
    arguments += ["--session", *sessions] if sessions else []
    status, stdout, _ = bids(capsys, *arguments)
    assert status == 0 and f"{len(expected)} converted" in stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz")) == sorted(expected)


def test_brain_masks_translate_each_scan_within_its_mask(capsys, bids_dataset, tmp_path, tiny_run):
    """``--brain-masks DIR``: each scan is translated within the mask named after it in that derivative
    dataset, exactly as ``convert --mask`` does it, and its sidecar names the mask; a scan without a mask fails
    in one line naming the file expected, the others go on (exit 1)."""
    masks = bids_dataset / "derivatives" / "masks"  # inside the raw dataset, as BIDS lays derivatives out
    mask_of = {}
    for relative in (INPUTS[0], INPUTS[2]):  # sub-01 and sub-02 ses-pre; none for ses-post
        image = nib.load(str(bids_dataset / relative))
        inside = np.zeros(image.shape, np.uint8)
        inside[2:10, 2:9, 1:6] = 1
        mask_of[relative] = masks / relative.replace("_T1w.nii.gz", "_desc-brain_mask.nii.gz")
        mask_of[relative].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(inside, image.affine), str(mask_of[relative]))
    out = tmp_path / "out"
    status, stdout, stderr = bids(capsys, bids_dataset, out, "participant", "--model", tiny_run, "--device", "cpu",
                                  "--no-progress", "--force", "--brain-masks", masks)
    assert status == 1 and "2 converted, 0 skipped (already done), 1 failed" in stdout
    missing = [line for line in stderr.splitlines() if "no brain mask" in line]
    assert len(missing) == 1 and "sub-02_ses-post_desc-brain_mask.nii.gz" in missing[0]
    assert "sub-02/ses-post/anat/sub-02_ses-post_T1w.nii.gz" in missing[0]
    assert not (out / T1W_OUTPUTS[1]).exists()
    for relative, output in ((INPUTS[0], T1W_OUTPUTS[0]), (INPUTS[2], T1W_OUTPUTS[2])):
        expected = tmp_path / "expected" / Path(output).name
        status, _, stderr = run_cli(capsys, "convert", bids_dataset / relative, expected, "--model", tiny_run,
                                    "--device", "cpu", "--force", "--mask", mask_of[relative])
        assert status == 0, stderr
        np.testing.assert_array_equal(nib.load(str(out / output)).get_fdata(), nib.load(str(expected)).get_fdata())
        sidecar = json.loads((out / output.replace(".nii.gz", ".json")).read_text())
        assert sidecar["BrainMask"] == str(mask_of[relative]) and sidecar["BrainMaskSHA256"] == sha256(mask_of[relative])
        mask_uri = f"bids:masks:{mask_of[relative].relative_to(masks).as_posix()}"
        assert sidecar["Sources"] == [f"bids:raw:{relative}", mask_uri]
        assert resolve_bids_uri(mask_uri, out).samefile(mask_of[relative])
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"raw": "../bids", "masks": "../bids/derivatives/masks"}


def test_direction_t2_to_t1(capsys, bids_dataset, tmp_path, tiny_run):
    out = tmp_path / "out"
    status, stdout, _ = bids(capsys, bids_dataset, out, "participant", "--direction", "t2-to-t1",
                             "--model", tiny_run, "--device", "cpu", "--no-progress")
    assert status == 0 and "1 converted" in stdout
    assert [str(p.relative_to(out)) for p in out.rglob("*.nii.gz")] == ["sub-01/anat/sub-01_desc-synthetic_T1w.nii.gz"]
    assert bids_name_is_valid("sub-01/anat/sub-01_desc-synthetic_T1w.nii.gz")


def test_contrast_check_applies_and_force_skips_it(capsys, monkeypatch, bids_dataset, tmp_path, tiny_run):
    from mri_translate import inference as inference_module
    from mri_translate.contrast_check import ContrastMismatchError

    def refuse(volume, direction, source):
        raise ContrastMismatchError(source, "looks like a T2w scan")

    monkeypatch.setattr(inference_module, "check_direction", refuse)
    arguments = (bids_dataset, tmp_path / "out", "participant", "--model", tiny_run, "--device", "cpu", "--no-progress")
    status, stdout, stderr = bids(capsys, *arguments)
    assert status == 1 and "0 converted, 0 skipped (already done), 3 failed" in stdout
    assert stderr.count("looks like a T2w scan") == 3
    status, stdout, _ = bids(capsys, *arguments, "--force")
    assert status == 0 and "3 converted" in stdout


def model_with_limits(tiny_run, folder, limit: float) -> Path:
    """The tiny model with every out-of-domain threshold set to ``limit`` (stored as calibrate_checks does)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from calibrate_checks import store
    finally:
        sys.path.pop(0)
    model = folder / f"model_{limit:g}.pt"
    shutil.copyfile(Path(tiny_run) / "models" / "model.pt", model)
    limits = {"CycleErrorMAE": limit, "HistogramDistance": limit, "InterSliceConsistency": limit}
    store(model, {"t1-to-t2": limits, "t2-to-t1": limits, "Calibration": "test"})
    return model


def test_qc_records_the_domain_check_and_strict_refuses_each_file(capsys, bids_dataset, tmp_path, tiny_run):
    """``bids --qc`` judges every translation in its sidecar; ``--strict`` fails each out-of-domain file (exit 1,
    one line per file) and writes none of them."""
    lenient, strict = model_with_limits(tiny_run, tmp_path, 1e6), model_with_limits(tiny_run, tmp_path, 0.0)
    out = tmp_path / "qc"
    status, stdout, _ = bids(capsys, bids_dataset, out, "participant", "--model", lenient, "--device", "cpu",
                             "--no-progress", "--qc")
    assert status == 0 and "3 converted" in stdout
    sidecars = sorted(out.rglob("*_T2w.json"))
    assert len(sidecars) == 3
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        assert sidecar["InDomain"] is True and sidecar["DomainCheck"]["ThresholdSource"] == "test"
    out = tmp_path / "strict"
    status, stdout, stderr = bids(capsys, bids_dataset, out, "participant", "--model", strict, "--device", "cpu",
                                  "--no-progress", "--strict")
    assert status == 1 and "0 converted, 0 skipped (already done), 3 failed" in stdout
    assert stderr.count("refused by --strict") == 3
    assert not list(out.rglob("*.nii.gz")) and not list(out.rglob("*_T2w.json"))


def test_convert_of_a_bids_dataset_names_sources_by_bids_uri(capsys, bids_dataset, tmp_path, tiny_run):
    """``convert BIDS_DIR OUT`` writes a derivative too: the same URIs and link as the bids command; a single scan
    converted outside a derivative keeps its path."""
    out = tmp_path / "converted"
    status, stdout, stderr = run_cli(capsys, "convert", bids_dataset, out, "--model", tiny_run, "--device", "cpu",
                                     "--no-progress")
    assert status == 0 and "3 converted" in stdout, stderr
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"] == {"raw": "../bids"}
    for output in T1W_OUTPUTS:
        source = output.replace("_desc-synthetic_T2w", "_T1w")
        uri = json.loads((out / output.replace(".nii.gz", ".json")).read_text())["Sources"]
        assert uri == [f"bids:raw:{source}"] and resolve_bids_uri(uri[0], out).samefile(bids_dataset / source)
    single = bids_dataset / INPUTS[0]
    assert run_cli(capsys, "convert", single, tmp_path / "one.nii.gz", "--model", tiny_run, "--device", "cpu")[0] == 0
    assert json.loads((tmp_path / "one.json").read_text())["Sources"] == [str(single)]


def head_dataset(root: Path) -> Path:
    """A BIDS dataset of one whole-head T1w: a textured ellipsoid (semi-axes 85 x 100 x 70 mm, 4 mm voxels) on a
    dark background, largest axial area pi * 8.5 * 10 = 267 cm^2, above a skull-stripped brain's."""
    shape, spacing = (52, 60, 40), 4.0
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * spacing for n in shape], indexing="ij"))
    inside = sum((g / s) ** 2 for g, s in zip(grid, (85, 100, 70))) <= 1
    rng = np.random.default_rng(0)
    data = np.where(inside, 100 + 30 * rng.random(shape), rng.random(shape)).astype(np.float32)
    path = root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, np.diag([spacing] * 3 + [1.0])), str(path))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "head", "BIDSVersion": "1.9.0"}))
    return path


def test_strict_refuses_a_whole_head_for_a_brain_only_model_as_convert_does(capsys, tmp_path, tiny_run):
    """A model trained on skull-stripped brains only (within its out-of-domain limits, so only the skull check
    can refuse): ``bids --strict`` fails the whole-head scan with the very line ``convert --strict`` exits with
    and writes nothing for it; without ``--strict`` it is translated with a warning."""
    import torch

    head = head_dataset(tmp_path / "bids")
    model = model_with_limits(tiny_run, tmp_path, 1e6)
    state = torch.load(model, weights_only=True)
    state["skull_stripped"] = {"A": True, "B": True}
    torch.save(state, model)
    common = ("--model", model, "--device", "cpu", "--force")
    status, _, refused = run_cli(capsys, "convert", head, tmp_path / "c.nii.gz", *common, "--strict")
    assert status == 2 and "looks like a whole head" in refused and "refused by --strict" in refused
    out = tmp_path / "strict"
    status, stdout, stderr = bids(capsys, tmp_path / "bids", out, "participant", *common, "--no-progress", "--strict")
    assert status == 1 and "0 converted, 0 skipped (already done), 1 failed" in stdout
    assert stderr.strip() == "failed: " + refused.strip().removeprefix("mri-translate convert: error: ")
    assert not list(out.rglob("sub-01_*"))
    status, stdout, stderr = bids(capsys, tmp_path / "bids", tmp_path / "lenient", "participant", *common,
                                  "--no-progress")
    assert status == 0 and "1 converted" in stdout and "looks like a whole head" in stderr


def test_sidecars_are_strict_json_for_an_input_without_slice_change(capsys, bids_dataset, tmp_path, tiny_run):
    """One axial slice repeated: the input does not change between slices, so the inter-slice ratio is undefined.
    The sidecar says so with ``null`` (no ``Infinity``, which strict JSON readers refuse) and the domain check
    leaves it unjudged rather than listing a ``null`` as exceeded."""
    scan = bids_dataset / INPUTS[0]
    image = nib.load(str(scan))
    data = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.repeat(data[..., 3:4], data.shape[2], axis=2), image.affine), str(scan))
    out = tmp_path / "out"
    status, stdout, stderr = bids(capsys, bids_dataset, out, "participant", "--participant-label", "01", "--model",
                                  model_with_limits(tiny_run, tmp_path, 1e6), "--device", "cpu", "--no-progress",
                                  "--qc", "--force")
    assert status == 0 and "1 converted" in stdout, stderr

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    for path in (out / "dataset_description.json", out / T1W_OUTPUTS[0].replace(".nii.gz", ".json")):
        json.loads(path.read_text(), parse_constant=refuse)
    sidecar = json.loads((out / T1W_OUTPUTS[0].replace(".nii.gz", ".json")).read_text())
    assert sidecar["QC"]["InterSliceConsistency"] is None
    assert sidecar["DomainCheck"]["Exceeded"] == [] and sidecar["InDomain"] is True


def test_group_level_does_nothing(capsys, bids_dataset, tmp_path):
    status, stdout, _ = bids(capsys, bids_dataset, tmp_path / "out", "group")
    assert status == 0 and GROUP_LEVEL_NOTE in stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, message", [
    ("unknown participant", "no participant 03 (found: 01, 02)"),
    ("not bids", "not a BIDS dataset"),
    ("output is input", "the output folder must differ from the BIDS dataset"),
    ("no such session", "no sub-*/[ses-*/]anat/*_T1w.nii[.gz] for the selected participants and sessions"),
    ("masks not a folder", "no_masks: --brain-masks is not a folder"),
])
def test_bad_calls_fail_in_one_line(capsys, bids_dataset, tmp_path, tiny_run, case, message):
    source, out, extra = bids_dataset, tmp_path / "out", []
    if case == "unknown participant":
        extra = ["--participant-label", "01", "03"]
    elif case == "not bids":
        (bids_dataset / "dataset_description.json").unlink()
    elif case == "output is input":
        out = bids_dataset
    elif case == "masks not a folder":
        extra = ["--brain-masks", tmp_path / "no_masks"]
    else:
        extra = ["--session", "followup"]
    status, _, stderr = bids(capsys, source, out, "participant", "--model", tiny_run, *extra)
    assert status == 2 and stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "out").exists()


def test_select_keeps_labelled_pairs(bids_dataset, tmp_path):
    pairs = plan_batch(bids_dataset, tmp_path / "out")
    assert [s.name for s, _ in select(pairs, bids_dataset, ["02"], ["post", "pre"])] == [
        "sub-02_ses-post_T1w.nii.gz", "sub-02_ses-pre_T1w.nii.gz"]
    assert len(select(pairs, bids_dataset)) == 3
    with pytest.raises(InputError, match="no participant 7"):
        select(pairs, bids_dataset, ["7"])
