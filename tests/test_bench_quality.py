"""scripts/bench_quality.py: its rows go to docs/quality.csv and read back as the same rows, so ``--append`` keeps
every row scored so far, replacing only those of the same model, direction and volume; the record on disk
reads back too."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_quality import CSV_COLUMNS, read_rows, table, write_rows  # noqa: E402
from benchmarks_doc import read_section, replace_section, write_csv  # noqa: E402

RECORD = Path(__file__).resolve().parents[1] / "docs" / "quality.csv"


def row(model: str, volume: str, psnr: float) -> dict:
    return {"model": model, "direction": "t1-to-t2", "volume": volume, "seen": "unseen",
            "model_scores": {"mask": {"psnr": psnr, "ssim_3d": 0.6412, "mae": 0.0811}, "whole": {"ssim_3d": 0.9}},
            "consistency": 0.58, "reference_consistency": 0.64, "baseline": {"mask": {"psnr": 15.22, "ssim_3d": 0.478}},
            "identity": {"mask": {"psnr": 6.64, "ssim_3d": -0.026}}}


def test_rows_go_to_csv_and_read_back_as_the_same_rows(tmp_path):
    # a volume name with commas and a model name with a space survive the CSV; lesion and BraSyn scores too
    lesioned = row("model-a", "mslub_p07 (MS lesions)", 18.0)
    lesioned["model_scores"]["ssim_brasyn"], lesioned["baseline"]["ssim_brasyn"] = 0.9412, 0.9011
    lesioned["lesions"] = {"model": {"psnr": 9.114, "ssim_3d": 0.4004, "contrast_ratio": 0.912},
                           "baseline": {"psnr": 7.75, "ssim_3d": 0.386, "contrast_ratio": 0.56}}
    rows = [row("model-a", "brats23_gli_00000 (1 mm, skull-stripped)", 17.184), row("model b", "avg152", 12.0),
            lesioned]
    path = tmp_path / "quality.csv"
    write_rows(rows, path, date="2026-12-02")
    back = read_rows(path)
    assert [(r["model"], r["volume"], r["date"]) for r in back] == [
        ("model-a", rows[0]["volume"], "2026-12-02"), ("model b", "avg152", "2026-12-02"),
        ("model-a", lesioned["volume"], "2026-12-02")]
    assert back[2]["lesions"]["model"] == {"psnr": 9.11, "ssim_3d": 0.4, "contrast_ratio": 0.91}
    assert back[2]["model_scores"]["ssim_brasyn"] == 0.941 and back[0]["lesions"]["model"] is None
    assert "9.11 / 0.400 / 0.91 (7.75 / 0.386 / 0.56)" in table(back)
    assert back[0]["model_scores"]["mask"]["psnr"] == 17.18 and back[0]["baseline"]["mask"]["ssim_3d"] == 0.478
    assert back[1]["reference_consistency"] == 0.64 and back[1]["identity"]["mask"]["psnr"] == 6.64
    assert table(back) == table(rows)  # what the record keeps is what was printed
    write_rows(back, path)  # rows read back are written back unchanged, their dates included
    assert read_rows(path) == back and path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_append_keeps_other_rows_and_replaces_the_same_model_direction_and_volume(tmp_path):
    path = tmp_path / "quality.csv"
    write_rows([row("a", "v1", 10.0), row("a", "v2", 11.0), row("b", "v1", 12.0)], path, date="2026-11-27")
    write_rows([row("a", "v2", 13.0), row("c", "v1", 14.0)], path, append=True, date="2026-12-02")
    back = read_rows(path)
    assert [(r["model"], r["volume"], r["model_scores"]["mask"]["psnr"], r["date"]) for r in back] == [
        ("a", "v1", 10.0, "2026-11-27"), ("b", "v1", 12.0, "2026-11-27"), ("a", "v2", 13.0, "2026-12-02"),
        ("c", "v1", 14.0, "2026-12-02")]
    write_rows([row("d", "v1", 9.0)], path)  # without append the file holds these rows only
    assert [r["model"] for r in read_rows(path)] == ["d"]
    assert read_rows(tmp_path / "missing.csv") == []
    with pytest.raises(ValueError, match="columns"):  # a record of another shape is refused, not mixed in
        write_csv(path, [{"model": "x"}], ["model"], append=True)


def test_the_record_in_docs_reads_back():
    rows = read_rows(RECORD)
    assert len(rows) > 100 and all(r["date"] for r in rows)
    assert {r["direction"] for r in rows} == {"t1-to-t2", "t2-to-t1"}
    assert any(r["model"] == "default-model-050" for r in rows)  # the shipped model's rows


def test_sections_of_the_page_are_replaced_and_read_back(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nintro | with a pipe\n")
    replace_section("bench_speed", "## Speed\n\nfast\n", page)
    replace_section("bench_speed", "## Speed\n\nfaster\n", page)
    assert read_section("bench_speed", page).strip() == "## Speed\n\nfaster"
    assert page.read_text().startswith("# Benchmarks\n\nintro | with a pipe\n")
    assert read_section("bench_checks", page) == ""


def test_a_training_speed_run_with_loader_rows_renders_into_its_own_section(tmp_path):
    """bench_speed --part training: train rows and loader rows (which name no generator) become the table of the
    page's bench_speed_training section, leaving the convert section as it was."""
    import json

    from bench_speed import write_speed_section

    page = tmp_path / "benchmarks.md"
    replace_section("bench_speed", "## Speed\n\nconvert rows\n", page)
    saved = tmp_path / "speed.json"
    saved.write_text(json.dumps({"machine": {"date": "2026-12-02"}, "results": [
        {"kind": "train", "generator": "light", "size": 128, "batch": 8, "device": "cpu", "amp": True,
         "s_per_iteration": 1.0751, "iterations_per_s": 0.93, "slabs_per_s": 7.4, "precision": "bf16"},
        {"kind": "loader", "workers": 2, "device": "cpu", "amp": False, "slabs_per_s": 234.2}]}))
    write_speed_section(saved, str(page))
    section = read_section("bench_speed_training", page)
    assert "| light | train 128x128, batch 8 | cpu | 1.0751 s/it, 7.4 slabs/s, bf16 |" in section
    assert "| - | the training loader alone, batch 8, 2 workers | cpu | 234.2 slabs/s |" in section
    assert read_section("bench_speed", page).strip() == "## Speed\n\nconvert rows"


def test_rows_of_a_cpu_without_bf16_render_into_their_own_section(tmp_path):
    """Convert rows measured on a CPU without bf16 (machine cpu_bf16 false) go to the bench_speed_cpu_fp32
    section, titled so, leaving the bf16 machine's table (a run saved before cpu_bf16 existed) as it was."""
    import json

    from bench_speed import section_name, write_speed_section

    page = tmp_path / "benchmarks.md"
    row = {"kind": "convert", "generator": "light", "device": "cpu", "amp": True, "batch_size": 8, "mirror": None,
           "fuse_planes": True, "slices_per_s": 8.3, "precision": "off", "wall_s": 18.0,
           "stages_s": {"network": 14.0}}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"machine": {"date": "2026-12-03"}, "results": [{**row, "precision": "bf16"}]}))
    new.write_text(json.dumps({"machine": {"date": "2026-12-05", "cpus": 2, "gpu": None, "cpu_bf16": False},
                               "results": [row]}))
    write_speed_section(old, str(page))
    write_speed_section(new, str(page))
    assert "18.0 s (8.3 slices/s), bf16" in read_section("bench_speed", page)
    fp32 = read_section("bench_speed_cpu_fp32", page).strip()
    assert fp32.startswith("## Speed on a CPU without bf16 (scripts/bench_speed.py, 2026-12-05)")
    assert "Machine: 2 CPU cores, no GPU, CPU without bf16. " in fp32
    assert "18.0 s (8.3 slices/s), off" in fp32 and "bf16" not in fp32.split("\n\n", 2)[2]
    assert section_name({"cpu_bf16": False}, [{"kind": "train", "device": "cpu"}]) == "bench_speed_cpu_fp32_training"
    assert section_name({"cpu_bf16": False}, [{"kind": "convert", "device": "cuda"}]) == "bench_speed_gpu"


def test_convert_rows_render_the_median_run_and_the_range(tmp_path):
    """A convert row timed several times shows its median wall time, how many runs and their range, then that
    run's stages; a row saved before repeats existed renders as it did."""
    import json

    from bench_speed import write_speed_section

    page = tmp_path / "benchmarks.md"
    saved = tmp_path / "speed.json"
    row = {"kind": "convert", "generator": "light", "device": "cpu", "amp": True, "batch_size": 8, "mirror": None,
           "fuse_planes": True, "slices_per_s": 17.6, "precision": "bf16", "stages_s": {"network": 4.9, "write": 0.5}}
    saved.write_text(json.dumps({"machine": {"date": "2026-12-03"}, "results": [
        {**row, "wall_s": 8.5, "wall_s_range": [8.37, 11.2], "repeats": 3},
        {**row, "wall_s": 9.5, "fuse_planes": False, "mirror": False}]}))
    write_speed_section(saved, str(page))
    section = read_section("bench_speed", page)
    assert ("| light | convert 256x256x150 file to file, batch 8 | cpu | 8.5 s (17.6 slices/s), median of 3 runs "
            "(8.37-11.2 s), bf16; network 4.9, write 0.5 |") in section
    assert ("| convert 256x256x150 file to file, batch 8, --single-plane, --no-mirror | cpu | 9.5 s (17.6 slices/s), "
            "bf16; network 4.9, write 0.5 |") in section
