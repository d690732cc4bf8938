"""Real-material handling through the CLI: rates, channels, regions, formats, folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from clapsep_cli.cli import main
from tests.helpers import tone, write_audio


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def extract_json(*args: object) -> dict:
    result = run("extract", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_stems_keep_rate_length_channels_and_sum_to_source(home: Path, tmp_path: Path, rate: int) -> None:
    x = tone(7.31, rate, channels=2)
    src = write_audio(tmp_path / "st.wav", x, rate)
    out = extract_json("dog", src, "--residual")["results"][0]
    target, r1 = sf.read(out["target"], dtype="float32")
    residual, r2 = sf.read(out["residual"], dtype="float32")
    assert r1 == r2 == rate
    assert target.shape == residual.shape == x.shape
    assert np.max(np.abs(target + residual - x)) < 1e-6
    assert out["rate"] == rate and out["channels"] == 2 and out["frames"] == len(x)


def test_multichannel_keeps_channel_count(home: Path, tmp_path: Path) -> None:
    x = tone(3.0, 48000, channels=6)
    src = write_audio(tmp_path / "surround.wav", x, 48000)
    target, _ = sf.read(extract_json("dog", src)["results"][0]["target"])
    assert target.shape == x.shape


def test_region_holds_only_that_part_and_reports_offset(home: Path, tmp_path: Path) -> None:
    rate = 44100
    x = tone(20.0, rate)
    src = write_audio(tmp_path / "long.wav", x, rate)
    out = extract_json("dog", src, "--start", "00:00:03.500", "--end", "9.25", "--residual")["results"][0]
    first, last = int(3.5 * rate), int(9.25 * rate)
    assert out["offset"] == {"frames": first, "seconds": 3.5}
    target, _ = sf.read(out["target"], dtype="float32")
    residual, _ = sf.read(out["residual"], dtype="float32")
    assert len(target) == last - first
    assert np.max(np.abs(target + residual - x[first:last, 0])) < 1e-6


def test_region_matches_a_cut_file(home: Path, tmp_path: Path) -> None:
    rate = 32000
    x = tone(12.0, rate, seed=4)
    src = write_audio(tmp_path / "full.wav", x, rate)
    cut = write_audio(tmp_path / "cut.wav", x[2 * rate : 8 * rate], rate)
    a, _ = sf.read(extract_json("dog", src, "--start", "2", "--end", "8")["results"][0]["target"])
    b, _ = sf.read(extract_json("dog", cut)["results"][0]["target"])
    assert np.max(np.abs(a - b)) < 1e-6


@pytest.mark.parametrize("source_format,subtype,expected", [
    ("WAV", "PCM_16", ("WAV", "PCM_16", "wav")),
    ("WAV", "PCM_24", ("WAV", "PCM_24", "wav")),
    ("FLAC", "PCM_24", ("FLAC", "PCM_24", "flac")),
    ("OGG", "VORBIS", ("OGG", "VORBIS", "ogg")),
    ("AIFF", "PCM_16", ("AIFF", "PCM_16", "aiff")),
])
def test_default_format_follows_the_source(home: Path, tmp_path: Path, source_format: str, subtype: str,
                                           expected: tuple[str, str, str]) -> None:
    ext = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "AIFF": "aiff"}[source_format]
    src = tmp_path / f"in.{ext}"
    sf.write(str(src), tone(2.0, 44100), 44100, format=source_format, subtype=subtype)
    target = Path(extract_json("dog", src)["results"][0]["target"])
    info = sf.info(str(target))
    assert (info.format, info.subtype, target.suffix.lstrip(".")) == expected
    assert info.frames == 2 * 44100


@pytest.mark.parametrize("fmt,depth,subtype", [("flac", "16", "PCM_16"), ("wav", "32f", "FLOAT"),
                                                ("mp3", None, "MPEG_LAYER_III"), ("ogg", None, "VORBIS")])
def test_format_and_bit_depth_options(home: Path, tmp_path: Path, fmt: str, depth: str | None, subtype: str) -> None:
    src = write_audio(tmp_path / "in.wav", tone(2.0, 48000, channels=2), 48000)
    args = ["dog", src, "--format", fmt] + (["--bit-depth", depth] if depth else [])
    target = Path(extract_json(*args)["results"][0]["target"])
    info = sf.info(str(target))
    assert target.suffix == f".{fmt}" and info.subtype == subtype and info.channels == 2
    assert abs(info.frames - 96000) <= (0 if fmt != "mp3" else 2000)


def test_bad_format_combinations(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "in.wav", tone(1.0, 32000), 32000)
    result = run("extract", "dog", src, "--format", "flac", "--bit-depth", "32f")
    assert result.exit_code == 1 and "--bit-depth 32f is not possible in flac" in result.output
    result = run("extract", "dog", src, "--format", "wav", "--bit-depth", "16", "--clip", "none")
    assert result.exit_code == 1 and "--clip none needs a float format" in result.output


def test_clip_policies(home: Path, tmp_path: Path) -> None:
    loud = (tone(2.0, 32000) * 6).astype(np.float32)  # peaks far above full scale
    src = write_audio(tmp_path / "loud.wav", loud, 32000)
    clamped = extract_json("dog", src, "--bit-depth", "16", "-o", tmp_path / "c.wav")["results"][0]
    assert clamped.get("clipped_samples", 0) > 0
    rescaled = extract_json("dog", src, "--bit-depth", "16", "--clip", "rescale", "-o", tmp_path / "r.wav")
    gain = rescaled["results"][0]["rescale_gain"][0]
    r, _ = sf.read(str(tmp_path / "r.wav"))
    f, _ = sf.read(extract_json("dog", src, "-o", tmp_path / "f.wav")["results"][0]["target"])  # float, no clip
    assert 0 < gain < 1 and np.max(np.abs(f)) > 1
    assert np.max(np.abs(r - np.clip(f * gain, -1, 1))) < 2e-4


def test_compressed_inputs_through_ffmpeg(home: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    wav = write_audio(tmp_path / "src.wav", tone(3.0, 44100, channels=2), 44100, subtype="PCM_16")
    for ext, stem_ext in (("m4a", ".wav"), ("aac", ".wav"), ("opus", ".ogg")):  # opus: libsndfile reads Ogg Opus
        out = tmp_path / f"clip_{ext}.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), str(out)], check=True)
        result = extract_json("dog", out)["results"][0]
        target = Path(result["target"])
        assert target.suffix == stem_ext and sf.info(str(target)).channels == 2
        assert abs(result["duration"] - 3.0) < 0.1


def test_folder_recursion_glob_and_name_template(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_audio(tmp_path / "a" / "one.wav", tone(1.0, 32000), 32000)
    write_audio(tmp_path / "a" / "b" / "two.flac", tone(1.0, 32000), 32000, format="FLAC", subtype="PCM_16")
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    report = extract_json("dog", tmp_path / "a", "--out-dir", out, "--name", "{stem}-{query}.{ext}")
    assert sorted(Path(r["target"]).name for r in report["results"]) == ["one-dog.wav", "two-dog.flac"]
    report = extract_json("dog", tmp_path / "a", "--glob", "*.flac")
    assert [Path(r["input"]).name for r in report["results"]] == ["two.flac"]
    again = extract_json("dog", tmp_path / "a")  # stems of the run above sit beside the sources now
    statuses = {Path(r["input"]).name: r["status"] for r in again["results"]}
    assert statuses == {"one.wav": "ok", "two.flac": "skipped"}
    assert [Path(p).name for p in again["stems_left_out"]] == ["two.dog.flac"]


def test_progress_bar_only_on_a_terminal(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "a.wav", tone(1.0, 32000), 32000)
    result = run("extract", "dog", src)
    assert result.exit_code == 0
    assert "━" not in result.output and "audio s/s" not in result.output


def test_m4a_stems_have_exactly_the_source_length(home: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    wav = write_audio(tmp_path / "src.wav", tone(3.0, 44100, channels=2), 44100, subtype="PCM_16")
    m4a = tmp_path / "src.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(m4a), "-f", "f32le", "-ac", "2", "-"],
                             capture_output=True, check=True).stdout
    assert len(decoded) // 8 > 132300  # the decoder's output runs past the source: AAC padding
    result = extract_json("dog", m4a)["results"][0]
    assert sf.info(result["target"]).frames == 132300 == result["frames"]
