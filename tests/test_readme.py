"""The README's Python example runs as printed and does what its comments say."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

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


# --- the set-up block's first command -----------------------------------------------------------

def setup_text() -> tuple[str, str]:
    """The prose of ``## Set-up`` before its first block, and the block's first line."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Set-up"):]
    prose, block = section.split("```\n", 2)[:2]
    return prose, block.splitlines()[0]


def first_extract() -> list[str]:
    """The arguments of the ``clapsep extract`` in the set-up block's first line."""
    [command] = [part for part in setup_text()[1].split("&&") if "clapsep extract" in part]
    argv = shlex.split(command)
    assert argv[:2] == [".venv/bin/clapsep", "extract"]
    return argv[1:]


def test_the_first_command_names_the_shipped_sample() -> None:
    sample = REPO / first_extract()[-1]
    assert sample.parent == REPO / "samples" and sample.is_file()
    assert sample.stat().st_size < 1_000_000
    info = sf.info(str(sample))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        "WAV", "PCM_16", 22050, 1, 8 * 22050)
    assert sample.name in (REPO / "samples" / "README.md").read_text(encoding="utf-8")
    data, _ = sf.read(str(sample), dtype="float64")
    assert 0.5 < np.max(np.abs(data)) < 1.0  # sound, not silence, and not clipped


def test_the_first_command_extracts_what_the_readme_says_from_the_sample(home: Path, tmp_path: Path) -> None:
    """The extract of the first command, run as printed (the tiny test model stands in for the
    released one) from a folder holding a copy of the sample, writes the stem the prose names."""
    argv = first_extract()
    (tmp_path / "samples").mkdir()
    shutil.copyfile(REPO / argv[-1], tmp_path / argv[-1])
    env = {**os.environ, "CLAPSEP_HOME": str(home), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "clapsep_cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    promised = re.search(r"writing `([^`]+)`", setup_text()[0]).group(1)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav")) == sorted([argv[-1], promised])
    stem, source = sf.info(str(tmp_path / promised)), sf.info(str(tmp_path / argv[-1]))
    assert (stem.samplerate, stem.channels, stem.frames) == (source.samplerate, source.channels, source.frames)


def test_the_sample_script_still_makes_the_shipped_sample(tmp_path: Path) -> None:
    """samples/make_sample.py writes the shipped file again, where the espeak-ng version that made
    it (named in samples/README.md) is installed; up to one 16-bit step apart, as the sines and
    exponentials of another CPU or numpy may round differently."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    made_with = re.search(r"made with espeak-ng ([\d.]+)", (REPO / "samples" / "README.md").read_text()).group(1)
    here = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    if not re.search(rf":\s*{re.escape(made_with)}\s", here):
        pytest.skip(f"the sample was made with espeak-ng {made_with}; here: {here.strip()}")
    out = tmp_path / "street.wav"
    done = subprocess.run([sys.executable, str(REPO / "samples" / "make_sample.py"), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shipped, _ = sf.read(str(REPO / first_extract()[-1]), dtype="int16")
    again, _ = sf.read(str(out), dtype="int16")
    assert again.shape == shipped.shape
    assert np.max(np.abs(again.astype(np.int32) - shipped)) <= 1
