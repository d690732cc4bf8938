"""``clapsep find`` from the shell and ``Separator.find`` from Python: events printed or written
beside the source by the stems' rules, times in the file's clock, bad input as for extract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner, Result

from clapsep_cli import api
from clapsep_cli.cli import main
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.jobs.plan import plan_job
from clapsep_cli.jobs.run import Runner
from tests.helpers import StandIn, tone, write_audio

LOW = ["--threshold", "0.01,0.005"]  # the tiny random model scores low; this finds something


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "walk.wav", tone(13.0, 44100, 2), 44100, subtype="PCM_16")


def burst_file(path: Path, rate: int, spans: list[tuple[float, float]], seconds: float = 25.0) -> Path:
    """Quiet noise with a loud tone over each (start, end)."""
    rng = np.random.default_rng(2)
    t = np.arange(int(seconds * rate)) / rate
    on = np.zeros(len(t), bool)
    for start, end in spans:
        on |= (t >= start) & (t < end)
    wave = 0.001 * rng.standard_normal(len(t)) + 0.5 * np.sin(2 * np.pi * 440 * t) * on
    return write_audio(path, wave.astype(np.float32), rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")


def test_events_are_printed_one_line_each_off_a_terminal_and_match_the_json(home: Path, src: Path) -> None:
    before = digest(src)
    printed = run("find", "dog barking", src, *LOW)
    assert printed.exit_code == 0, printed.output
    lines = [line.split("\t") for line in printed.output.splitlines()]
    assert lines and all(len(fields) == 5 and fields[0] == str(src) for fields in lines)
    data = json.loads(run("find", "dog barking", src, *LOW, "--json").output)
    events = data["results"][0]["events"]
    assert [(float(f[1]), float(f[2]), float(f[3]), f[4]) for f in lines] == [
        (e["start"], e["end"], e["confidence"], e["label"]) for e in events]
    assert all(0.0 <= e["start"] < e["end"] <= 13.0 and 0.0 <= e["confidence"] <= 1.0 for e in events)
    assert events[0]["label"] == "dog_barking"
    assert digest(src) == before and sorted(p.name for p in src.parent.iterdir()) == ["walk.wav"]


@pytest.mark.parametrize("fmt", list(api.EVENT_FORMATS))
def test_each_format_is_written_beside_the_source(home: Path, src: Path, fmt: str) -> None:
    result = run("find", "dog barking", src, "--format", fmt, *LOW)
    assert result.exit_code == 0, result.output
    written = src.with_name(f"walk.dog_barking.{api.EVENT_FORMATS[fmt].extension}")
    assert written.exists() and f"{src} -> {written}" in result.output
    assert sorted(p.name for p in src.parent.iterdir()) == sorted(["walk.wav", written.name])  # no temporary left


def test_an_existing_events_file_is_skipped_unless_overwrite(home: Path, src: Path) -> None:
    written = src.with_name("walk.dog_barking.labels.txt")
    assert run("find", "dog barking", src, "--format", "audacity", *LOW).exit_code == 0
    first = written.read_text(encoding="utf-8")
    written.write_text("keep me")
    again = run("find", "dog barking", src, "--format", "audacity", *LOW)
    assert again.exit_code == 0 and "skipped" in again.output and written.read_text() == "keep me"
    replaced = run("find", "dog barking", src, "--format", "audacity", *LOW, "--overwrite")
    assert replaced.exit_code == 0 and written.read_text(encoding="utf-8") == first


def test_an_events_file_can_be_named_and_placed(home: Path, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("find", "dog", src, "--format", "csv", "--out-dir", out, "--name", "{stem}-{query}.{ext}").exit_code == 0
    assert (out / "walk-dog.events.csv").exists()
    assert run("find", "dog", src, "--format", "vtt", "-o", tmp_path / "x.vtt").exit_code == 0
    assert (tmp_path / "x.vtt").read_text().startswith("WEBVTT")
    refused = run("find", "dog", src, "-o", tmp_path / "y.txt")  # the table writes no file
    assert refused.exit_code == 1 and refused.output.strip().splitlines() == [
        "clapsep: error: --format is needed with an output file or folder: it names the events file's format"]


def test_a_region_keeps_the_files_clock(home: Path, src: Path) -> None:
    data = json.loads(run("find", "dog", src, *LOW, "--start", "4", "--end", "9.5", "--json").output)
    events = data["results"][0]["events"]
    assert events and all(4.0 <= e["start"] < e["end"] <= 9.5 for e in events)
    assert data["results"][0]["offset"]["seconds"] == 4.0


@pytest.mark.parametrize("args,message", [
    (["nope.wav"], "nope.wav: no such file"),
    (["text.wav"], "not an audio file"),
    (["walk.wav", "--threshold", "2"], "--threshold must be in (0, 1]"),
    (["walk.wav", "--threshold", "0.3,0.5"], "--threshold the release level must be in (0, threshold]"),
    (["walk.wav", "--threshold", "a"], "is not a number"),
])
def test_bad_input_is_one_line_and_nothing_is_written(home: Path, src: Path, args: list[str], message: str) -> None:
    (src.parent / "text.wav").write_text("not audio")
    result = run("find", "dog", *[src.parent / a if a.endswith(".wav") else a for a in args], "--format", "csv")
    lines = result.output.strip().splitlines()
    if result.exit_code == 2:  # click's own usage error: usage, hint, blank, error
        assert lines[-1].startswith("Error: ") and message in lines[-1]
    else:
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("clapsep: error: ")
        assert message in lines[0]
    assert not list(src.parent.glob("*.csv")) and not list(src.parent.glob(".*"))


def test_a_folder_run_carries_on_past_a_bad_file(home: Path, src: Path) -> None:
    (src.parent / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    result = run("find", "dog", src.parent, "--format", "audacity")
    assert result.exit_code == 1
    assert src.with_name("walk.dog.labels.txt").exists()
    assert "1 of 2 files failed" in result.output and "broken.wav" in result.output


def test_python_find_gives_the_events_detect_gives_for_the_same_audio(home: Path, tmp_path: Path) -> None:
    wave = tone(12.0, 32000, 2)
    path = write_audio(tmp_path / "a.wav", wave, 32000)
    sep = api.Separator(device="cpu", precision="fp32")
    opts = api.DetectOptions(threshold=0.01)
    job = sep.find([path], api.request("dog"), api.EventPlan(opts))
    found = job.results[0].events
    assert job.results[0].status == "ok" and job.results[0].target is None and found
    assert sep.detect(wave, 32000, api.request("dog"), opts) == found


def test_a_find_job_locates_a_tone_across_files_and_segments(tmp_path: Path) -> None:
    # The whole route (plan, engine at 32 kHz, scores, events, file) with the stand-in network,
    # whose mask keeps the loud tone and drops the quiet noise: the events are the tone's spans.
    a = burst_file(tmp_path / "a.wav", 44100, [(0.0, 2.0), (8.5, 12.5), (24.0, 25.0)])
    b = burst_file(tmp_path / "b.flac", 16000, [(3.0, 3.05), (5.0, 6.0), (6.1, 7.0)], seconds=9.0)
    job = plan_job([a, b], api.request("tone"), api.EventPlan(api.DetectOptions(min_duration=0.2), fmt="audacity"))
    Runner(StandIn(), torch.zeros(1, 8), EngineOptions()).run(job.results)
    got = [[(e.start, e.end) for e in r.events] for r in job.results]
    # 3.0-3.05 stays shorter than the minimum even as the STFT and smoothing widen it; 5-6 and
    # 6.1-7 are closer than the merge gap.
    want = [[(0.0, 2.0), (8.5, 12.5), (24.0, 25.0)], [(5.0, 7.0)]]
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=0.08), (g, w)
    labels = (tmp_path / "a.tone.labels.txt").read_text().splitlines()
    assert np.allclose([[float(x) for x in line.split("\t")[:2]] for line in labels], got[0], atol=1e-6)
    assert sf.info(str(a)).frames == 25 * 44100  # the source is as it was


def _raised_cosine_gate(events: list, t: np.ndarray, fade: float) -> np.ndarray:
    """The gain the stem should carry, sample by sample: 1 inside an event, sin^2 rising over
    ``fade`` seconds before it and falling over ``fade`` after it, 0 elsewhere (the loudest
    event's where fades overlap)."""
    gain = np.zeros(len(t))
    for e in events:
        rising = (t > e.start - fade) & (t < e.start)
        falling = (t > e.end) & (t < e.end + fade)
        g = np.zeros(len(t))
        g[(t >= e.start) & (t <= e.end)] = 1.0
        g[rising] = np.sin(0.5 * np.pi * (t[rising] - (e.start - fade)) / fade) ** 2
        g[falling] = np.sin(0.5 * np.pi * ((e.end + fade) - t[falling]) / fade) ** 2
        gain = np.maximum(gain, g)
    return gain


def test_extract_where_found_keeps_the_sound_only_inside_its_events(tmp_path: Path) -> None:
    # The same route as `clapsep extract --where found`, with the stand-in network: the stem is
    # the ungated stem inside the events, faded over 50 ms outside them, exactly silent elsewhere.
    from clapsep_cli.jobs.run import GATE_FADE

    src = burst_file(tmp_path / "a.wav", 44100, [(2.0, 4.0), (15.0, 16.5)])
    everywhere = plan_job([src], api.request("tone"), api.OutputPlan(name_template="{stem}.all.{ext}"))
    found = plan_job([src], api.request("tone"), api.OutputPlan(residual=True, gate=api.DetectOptions()))
    for job in (everywhere, found):
        Runner(StandIn(), torch.zeros(1, 8), EngineOptions()).run(job.results)
    events = found.results[0].events
    assert np.allclose([(e.start, e.end) for e in events], [(2.0, 4.0), (15.0, 16.5)], atol=0.08)
    full, _ = sf.read(str(tmp_path / "a.all.wav"), dtype="float32")
    stem, _ = sf.read(str(tmp_path / "a.tone.wav"), dtype="float32")
    residual, _ = sf.read(str(tmp_path / "a.tone.residual.wav"), dtype="float32")
    source, _ = sf.read(str(src), dtype="float32")
    t = np.arange(len(source)) / 44100
    inside = np.zeros(len(t), bool)
    outside = np.ones(len(t), bool)
    for e in events:
        inside |= (t >= e.start) & (t < e.end)
        outside &= (t < e.start - GATE_FADE) | (t >= e.end + GATE_FADE)
    assert np.array_equal(stem[inside], full[inside])
    assert not np.any(stem[outside]) and np.any(full[outside])  # the bleed is gone
    np.testing.assert_allclose(stem, full * _raised_cosine_gate(events, t, GATE_FADE), atol=1e-7)
    np.testing.assert_allclose(stem + residual, source, atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_detect_settings_without_where_found_are_refused(home: Path, src: Path) -> None:
    result = run("extract", "dog", src, "--threshold", "0.4")
    assert result.exit_code == 1 and result.output.strip() == (
        "clapsep: error: --threshold shape what --where found keeps: give --where found too")
    ok = run("extract", "dog", src, "--where", "found", "--threshold", "0.01,0.005", "--json")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)["results"][0]
    assert data["events"] and sf.info(data["target"]).frames == 13 * 44100
