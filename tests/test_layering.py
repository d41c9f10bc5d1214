"""The package's layering: every import between its modules, lazy ones inside functions included, points one
way; no module reaches (directly or through others) back to itself."""

import ast
import re
from pathlib import Path

import mri_translate

PACKAGE = Path(mri_translate.__file__).parent


def module_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (``from .x import ...``, ``from . import x``,
    ``import mri_translate.x``); ``from . import name`` of a non-module counts as the package's ``__init__``."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
            elif node.module and node.module.startswith("mri_translate."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mri_translate."))
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: module_imports(path) for path in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path of modules that closes it, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    lazy = tmp_path / "x.py"
    lazy.write_text("def f():\n    from .inference import Translator\n    from . import __version__\n")
    assert module_imports(lazy) == {"inference", "__init__"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"convert", "inference", "model_file", "bundle", "dicom"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_model_file_is_a_leaf_and_inference_stays_below_convert():
    graph = import_graph()
    assert graph["model_file"] <= {"errors"}
    assert "convert" not in graph["inference"] and "bundle" not in graph["inference"]
    assert "convert" not in graph["dicom"]


def test_every_top_level_definition_is_used():
    """No dead code: each class and function a package module defines is named somewhere else in the package,
    the scripts or the bundle's configs (tests alone do not count)."""
    root = PACKAGE.parent
    texts = [p.read_text() for p in [*PACKAGE.glob("*.py"), *(root / "scripts").glob("*.py"),
                                     *(root / "bundles").rglob("*.json")]]
    unused = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                uses = sum(len(re.findall(rf"\b{node.name}\b", text)) for text in texts)
                if uses <= 1:  # its own definition
                    unused.append(f"{path.stem}.{node.name}")
    assert not unused, f"defined but used nowhere: {unused}"
