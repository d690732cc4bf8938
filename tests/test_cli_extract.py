"""``clapsep extract`` from the shell's point of view: outputs, sources, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from clapsep_cli.cli import main
from tests.helpers import tone, write_audio


def run(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".part")]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "walk.wav", tone(3.0, 32000), 32000, subtype="PCM_16")


def test_writes_stem_next_to_source_and_leaves_source_alone(home: Path, src: Path) -> None:
    before = digest(src)
    result = run("extract", "dog barking", src, "--device", "cpu")
    assert result.exit_code == 0, result.output
    stem = src.with_name("walk.dog_barking.wav")
    info = sf.info(str(stem))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (32000, 1, 96000, "PCM_16")
    assert digest(src) == before
    assert f"{src} -> {stem}" in result.output
    assert leftovers(src.parent) == []


def test_existing_stem_is_skipped_then_replaced_with_overwrite(home: Path, src: Path) -> None:
    stem = src.with_name("walk.dog.wav")
    stem.write_bytes(b"keep me")
    result = run("extract", "dog", src)
    assert result.exit_code == 0
    assert "skipped" in result.output and stem.read_bytes() == b"keep me"
    result = run("extract", "dog", src, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sf.info(str(stem)).frames == 96000


def test_residual_and_negative_only_query(home: Path, src: Path) -> None:
    result = run("extract", "", src, "-n", "wind", "--residual", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    entry = report["results"][0]
    assert Path(entry["target"]).name == "walk.without_wind.wav"
    assert Path(entry["residual"]).name == "walk.without_wind.residual.wav"
    assert report["query"]["positive"] == [] and report["query"]["negative"] == ["wind"]
    target, _ = sf.read(entry["target"])
    residual, _ = sf.read(entry["residual"])
    source, _ = sf.read(str(src))
    assert np.max(np.abs(target + residual - source)) < 2.0 / 32768  # 16-bit rounding of each stem


def test_output_option_and_refusal_to_overwrite_the_source(home: Path, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "mine.wav"
    assert run("extract", "dog", src, "-o", out).exit_code == 0
    assert out.is_file()
    before = digest(src)
    result = run("extract", "dog", src, "-o", src, "--overwrite")
    assert result.exit_code == 1
    assert "refusing to write over the source" in result.output
    assert digest(src) == before


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("text", "not an audio file"),
    ("empty", "empty file"),
    ("zero_frames", "contains no audio"),
    ("silence", "digital silence"),
])
def test_bad_input_gives_one_line_and_writes_nothing(home: Path, tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("this is not audio\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "zero_frames":
        sf.write(str(path), np.zeros((0, 1), np.float32), 32000)
    elif case == "silence":
        sf.write(str(path), np.zeros((32000, 1), np.float32), 32000)
    result = run("extract", "dog", path)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("clapsep: error:") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ([path.name] if case != "missing" else [])


def test_unknown_device_and_bad_region(home: Path, src: Path) -> None:
    result = run("extract", "dog", src, "--device", "tpu")
    assert result.exit_code == 1 and "unknown device 'tpu'" in result.output
    result = run("extract", "dog", src, "--start", "5")
    assert result.exit_code == 1 and "after the end of the file" in result.output
    result = run("extract", "dog", src, "--start", "1", "--end", "0.5")
    assert result.exit_code == 1 and "must come after" in result.output
    assert not src.with_name("walk.dog.wav").exists()


def test_batch_goes_on_past_a_bad_file_and_reports_it(home: Path, tmp_path: Path) -> None:
    good = [write_audio(tmp_path / f"g{i}.wav", tone(2.0, 32000, seed=i), 32000) for i in range(2)]
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    result = run("extract", "dog", good[0], bad, good[1])
    assert result.exit_code == 1
    assert all(p.with_name(f"{p.stem}.dog.wav").is_file() for p in good)
    assert "1 of 3 files failed" in result.output and "bad.wav: not an audio file" in result.output


def test_no_model_offline_fails_at_once_naming_the_fix(empty_home: Path, src: Path) -> None:
    started = time.monotonic()
    result = run("extract", "dog", src)
    assert time.monotonic() - started < 20
    assert result.exit_code == 1
    assert "clapsep models download" in result.output and "clapsep models import" in result.output
    assert not src.with_name("walk.dog.wav").exists()


def test_remove_writes_the_name_its_help_promises(home: Path, tmp_path: Path) -> None:
    take = write_audio(tmp_path / "take.wav", tone(2.0, 32000), 32000, subtype="PCM_16")
    result = run("remove", "wind noise", take, "-n", "speech")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.wav", "take.without_wind_noise.wav"]


def _closed_port_endpoint() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("network", ["offline", "refused"])
def test_json_prints_the_report_when_the_model_cannot_be_had(tmp_path: Path, src: Path, network: str) -> None:
    """No model and none to download: --json prints the document --report gets, and stderr has
    one error line. Offline (HF_HUB_OFFLINE=1) it fails at once; online against a port that takes
    no connection, the download fails. A separate process, as huggingface_hub reads both settings
    on import."""
    env = {**os.environ, "CLAPSEP_HOME": str(tmp_path / "empty-store"), "CLAPSEP_SERVER": "never",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.update({"HF_HUB_OFFLINE": "1"} if network == "offline" else
               {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": _closed_port_endpoint()})
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "clapsep_cli", "extract", "--json", "--report", str(report),
                           "dog", str(src)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    printed = json.loads(done.stdout)
    assert printed == json.loads(report.read_text())
    assert printed["failed"] == 1 and printed["results"] == []
    expected = "is not installed" if network == "offline" else "cannot download"
    assert expected in printed["error"]
    assert [line for line in done.stderr.splitlines() if line.strip()] == [f"clapsep: error: {printed['error']}"]
    assert not src.with_name("walk.dog.wav").exists() and leftovers(src.parent) == []
