"""Keep docs/ up to date: each benchmark script replaces its own section of docs/benchmarks.md, the rest stays;
scripts/bench_quality.py keeps its rows in a CSV file instead (docs/quality.csv), one row per model, direction
and volume."""

from __future__ import annotations

import csv
import io
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _markers(name: str) -> tuple[str, str]:
    """The comments that open and close section ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(name: str, text: str, path: Path = DOC) -> None:
    """Put ``text`` between the ``<!-- name:begin -->`` and ``<!-- name:end -->`` markers of ``path``
    (appended when the markers are missing)."""
    begin, end = _markers(name)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def read_section(name: str, path: Path = DOC) -> str:
    """The text between the ``<!-- name:begin -->`` and ``<!-- name:end -->`` markers of ``path`` ('' when
    the file or the markers are missing)."""
    begin, end = _markers(name)
    text = path.read_text() if path.exists() else ""
    return text[text.index(begin) + len(begin): text.index(end)] if begin in text and end in text else ""


def read_csv(path: Path) -> list[dict[str, str]]:
    """The records of a CSV file with a header line, as dicts of strings ([] when the file is missing)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, records: list[dict[str, str]], columns: list[str], key: tuple[str, ...] = (),
              append: bool = False) -> None:
    """Write ``records`` (dicts with exactly ``columns``) to the CSV file ``path``, with a header line.

    With ``append`` the file's records are kept first, except those with the same ``key`` values as a new one
    (the new one replaces it, at the end). The file is written whole to a temporary name and renamed.

    Raises:
        ValueError: a record whose fields are not ``columns``, or a kept file whose header is not ``columns``.
    """
    path = Path(path)
    kept = read_csv(path) if append else []
    if kept and list(kept[0]) != columns:
        raise ValueError(f"{path}: columns {list(kept[0])}, expected {columns}")
    for record in records:
        if list(record) != columns:
            raise ValueError(f"record with fields {list(record)}, expected {columns}")
    new = {tuple(r[k] for k in key) for r in records} if key else set()
    records = [r for r in kept if not key or tuple(r[k] for k in key) not in new] + list(records)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.getvalue())
    tmp.replace(path)
