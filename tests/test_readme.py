"""The README's Python example runs as printed and does what its comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import tone, write_audio

REPO = Path(__file__).resolve().parent.parent


def python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_runs_as_printed(home: Path, tmp_path: Path) -> None:
    write_audio(tmp_path / "walk.wav", tone(3.0, 44100, 2), 44100, subtype="PCM_16")
    write_audio(tmp_path / "other.wav", tone(2.0, 22050), 22050)
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "CLAPSEP_HOME": str(home), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", python_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok walk.dog_barking.wav"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "walk.dog_barking.wav"])
