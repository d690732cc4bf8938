"""The project's own promises: the README's set-up commands and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"## Set-up.*?```\n(.*?)```", readme, re.S)
    assert setup is not None
    install, test = [line for line in setup.group(1).splitlines() if line.strip()][:2]
    assert "pip install" in install and "clapsep extract" in install
    assert "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()
