"""The Python versions pyproject.toml accepts: every one found on this machine compiles clapsep,
and the running one is among them. (The dependencies' own ranges are in pyproject.toml.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
SPEC = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
CANDIDATES = [f"3.{minor}" for minor in range(8, 16)]


def _interpreter(version: str) -> str | None:
    """An installed interpreter of ``version`` (pyenv's builds first; its shims may not run it)."""
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    if pyenv:
        return str(pyenv[-1])
    found = shutil.which(f"python{version}")
    return found if found and "/shims/" not in found else None


def test_the_running_python_is_accepted() -> None:
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SPEC
    assert "3.10" in SPEC and "3.12" in SPEC


@pytest.mark.parametrize("version", [v for v in CANDIDATES if v in SPEC])
def test_every_accepted_python_compiles_the_package(version: str, tmp_path: Path) -> None:
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    copy = shutil.copytree(REPO / "clapsep_cli", tmp_path / "clapsep_cli")
    result = subprocess.run([python, "-m", "compileall", "-q", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
