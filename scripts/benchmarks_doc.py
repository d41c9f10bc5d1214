"""Keep docs/benchmarks.md up to date: each benchmark script replaces its own section, the rest stays."""

from __future__ import annotations

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
