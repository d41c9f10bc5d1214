"""scripts/bench_quality.py: its table reads back into rows, so ``--append`` keeps the rows the page shows."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_quality import rows_from_table, table  # noqa: E402
from benchmarks_doc import read_section, replace_section  # noqa: E402


def row(model: str, volume: str, psnr: float) -> dict:
    return {"model": model, "direction": "t1-to-t2", "volume": volume, "seen": "unseen",
            "model_scores": {"mask": {"psnr": psnr, "ssim_3d": 0.6412, "mae": 0.0811}, "whole": {"ssim_3d": 0.9}},
            "consistency": 0.58, "reference_consistency": 0.64, "baseline": {"mask": {"psnr": 15.22, "ssim_3d": 0.478}},
            "identity": {"mask": {"psnr": 6.64, "ssim_3d": -0.026}}}


def test_a_table_on_the_page_reads_back_into_the_rows_it_shows(tmp_path):
    rows = [row("model-a", "brats23_gli_00000 (1 mm, skull-stripped)", 17.184), row("model b", "avg152", 12.0)]
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nintro | with a pipe\n")
    replace_section("bench_quality", "## Quality\n\nMachine: x.\n\n" + table(rows) + "\n", page)
    back = rows_from_table(read_section("bench_quality", page))
    assert [(r["model"], r["volume"]) for r in back] == [("model-a", rows[0]["volume"]), ("model b", "avg152")]
    assert back[0]["model_scores"]["mask"]["psnr"] == 17.18 and back[0]["baseline"]["mask"]["ssim_3d"] == 0.478
    assert back[1]["reference_consistency"] == 0.64 and back[1]["identity"]["mask"]["psnr"] == 6.64
    assert table(back) == table(rows)  # what the page shows is what it keeps
    assert read_section("bench_speed", page) == "" and rows_from_table("no table here") == []
