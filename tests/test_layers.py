"""The package's layers import in one direction only (docs/architecture.md), and its subpackages'
``__init__`` files are empty, so importing one part never drags in the rest (or torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clapsep_cli"
COMMON = {"errors", "resources", "__version__", "network.architecture"}  # torch-free leaves anyone may use
ALLOWED = {
    "audio": set(),
    "network": {"audio"},
    "models": {"audio", "network"},
    "queries": {"audio"},
    "events": set(),
    "engine": {"audio", "network"},
    "jobs": {"audio", "network", "models", "queries", "engine", "events"},
    "training": {"audio", "network", "models", "queries", "engine"},
    "api": {"audio", "network", "models", "queries", "engine", "events", "jobs"},
    "service": {"api", "audio", "models", "queries", "events", "jobs"},
    "bridges": {"api", "audio", "models", "queries", "events", "service"},
    "cli": {"api", "audio", "network", "models", "queries", "engine", "events", "training", "bridges", "service"},
}


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (at the top or inside functions), as dotted paths
    below ``clapsep_cli``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clapsep_cli":
            base = node.module.removeprefix("clapsep_cli").lstrip(".")
            found |= {f"{base}.{a.name}".lstrip(".") for a in node.names} if not base else {base}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("clapsep_cli.") for a in node.names if a.name.startswith("clapsep_cli.")}
    return found


def layer_of(dotted: str) -> str:
    return dotted.split(".")[0]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    wrong = sorted(m for m in imports(path)
                   if layer_of(m) != layer and m not in COMMON and layer_of(m) not in ALLOWED[layer] | COMMON)
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {wrong}"


def test_every_layer_is_known_and_subpackages_start_empty() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    layers |= {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"} - COMMON
    assert layers == set(ALLOWED)
    for init in (p for p in PACKAGE.glob("*/**/__init__.py") if p.parent.name != "cli"):  # cli/ holds the group
        assert init.read_text(encoding="utf-8") == "", init


def test_the_leaves_import_nothing_of_the_package() -> None:
    for name in ("errors.py", "resources.py", "network/architecture.py"):
        assert imports(PACKAGE / name) <= {"__version__"}, name


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found


@pytest.mark.parametrize("folder,barred", [("clapsep_cli", {"tests", "testbed", "benchmarks"}),
                                           ("testbed", {"tests", "benchmarks"}), ("benchmarks", {"tests"})])
def test_what_ships_and_what_measures_stand_apart_from_the_tests(folder: str, barred: set[str]) -> None:
    """The package stands alone; benchmarks share the test bed (testbed/), not the tests."""
    root = PACKAGE.parent / folder
    wrong = {str(p.relative_to(root)): sorted(top_level_imports(p) & barred) for p in root.rglob("*.py")}
    assert not {p: m for p, m in wrong.items() if m}
