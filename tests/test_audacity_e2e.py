"""The Audacity bridge against the real Audacity (3.2, mod-script-pipe) under Xvfb.

Skipped where Audacity or Xvfb is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from clapsep_cli.bridges.audacity import finding, project, requests
from clapsep_cli.bridges.audacity.pipe import AudacityPipe
from clapsep_cli.cli import main
from tests.audacity import live
from tests.helpers import tone, write_audio

RATE = 44100
pytestmark = pytest.mark.e2e
# The tiny random model scores the bursts' edges highest; these settings (the bursts are 0.8 s apart, so a
# merge gap under that) find one event per burst.
FIND = ("--threshold", "0.25,0.2", "--merge", "0.25", "--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def audacity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveAudacity]:
    yield from live.session(tmp_path_factory)


@pytest.fixture
def walk(tmp_path: Path) -> Path:
    """A 6 s stereo float tone, different in each channel."""
    return write_audio(tmp_path / "walk.wav", tone(6.0, RATE, 2), RATE)


@pytest.fixture
def bursts(tmp_path: Path) -> Path:
    """6 s of quiet stereo noise with tone bursts over 2.0-2.6 s and 3.4-4.2 s."""
    t = np.arange(6 * RATE) / RATE
    on = ((t >= 2.0) & (t < 2.6)) | ((t >= 3.4) & (t < 4.2))
    noise = 0.001 * np.random.default_rng(2).standard_normal((len(t), 2))
    return write_audio(tmp_path / "bursts.wav", (noise + 0.5 * (np.sin(2 * np.pi * 440 * t) * on)[:, None]
                                                 ).astype(np.float32), RATE)


def fresh_project(source: Path) -> None:
    """Empty the project, import ``source`` and leave nothing but its track selected."""
    with AudacityPipe() as pipe:
        count = len(project.tracks(pipe))
        if count:
            project.select_tracks(pipe, list(range(count)), count)
            pipe.command("RemoveTracks:")
        pipe.command(f'Import2: Filename="{source}"')


def select(start: float, end: float, first: int = 0, count: int = 1) -> None:
    with AudacityPipe() as pipe:
        pipe.command(f"SelectTime: Start={start} End={end}")
        pipe.command(f"SelectTracks: Track={first} TrackCount={count} Mode=Set")


def time_selection() -> tuple[float, float]:
    """Audacity's time selection (to six digits), read through a label added for the purpose."""
    with AudacityPipe() as pipe:
        pipe.command("AddLabel:")
        label = max(project.labels(pipe), key=lambda lb: lb.index if lb.text == "" else -1)
        return label.start, label.end


def exported(track: int, start: float, end: float, path: Path) -> np.ndarray:
    """What Audacity plays of ``track`` from ``start`` to ``end``, exported as float samples."""
    select(start, end, track)
    with AudacityPipe() as pipe:
        project.export_selection(pipe, path, 2)
    return sf.read(str(path), dtype="float32")[0]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def waves() -> list[tuple[str, bool, float, float]]:
    """The audio tracks: name, selected, start, end."""
    with AudacityPipe() as pipe:
        return [(t.name, t.selected, t.start, t.end) for t in project.tracks(pipe) if t.kind == "wave"]


def label_texts() -> list[tuple[float, float, str]]:
    with AudacityPipe() as pipe:
        return [(lb.start, lb.end, re.sub(r" #[0-9a-f]{6}", " #id", lb.text)) for lb in project.labels(pipe)]


def test_extract_inserts_a_sample_aligned_stem_and_keeps_the_selection(audacity: live.LiveAudacity, home: Path,
                                                                       walk: Path, tmp_path: Path) -> None:
    fresh_project(walk)
    select(1.5, 4.0)
    result = run("audacity", "extract", "dog", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "added track 'walk.dog' (1.500-4.000 s, stereo)" in result.output

    with AudacityPipe() as pipe:
        tracks = project.tracks(pipe)
    assert [(t.name, t.kind, t.selected) for t in tracks] == [("walk", "wave", True), ("Labels 1", "label", False),
                                                             ("walk.dog", "wave", False)]
    stem = tracks[2]
    assert (stem.channels, stem.start, stem.end) == (2, 1.5, 4.0)
    assert label_texts() == [(1.5, 4.0, "clapsep:dog #id done: walk.dog")]

    reference = tmp_path / "reference.wav"
    assert run("extract", "dog", walk, "--start", "1.5", "--end", "4.0", "-o", reference, "--device", "cpu",
               ).exit_code == 0
    expected = sf.read(str(reference), dtype="float32")[0]
    heard = exported(2, 1.0, 4.5, tmp_path / "heard.wav")  # Audacity ends the export where the stem ends
    half = RATE // 2
    assert heard.shape == (half + len(expected), 2) and len(expected) == int(2.5 * RATE)
    assert not heard[:half].any()
    np.testing.assert_allclose(heard[half:], expected, atol=1e-6)
    assert np.abs(expected).max() > 0.01

    select(1.5, 4.0)  # exported() moved it; check that extract leaves time and tracks as it found them
    assert run("audacity", "extract", "wind", "--residual", "--device", "cpu").exit_code == 0
    assert [w[:2] for w in waves()] == [("walk", True), ("walk.dog", False), ("walk.wind", False),
                                        ("walk.wind.residual", False)]
    assert time_selection() == (1.5, 4.0)


def test_the_stem_lands_at_the_requested_range_while_the_user_works_on(
        audacity: live.LiveAudacity, home: Path, walk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user clicks into the waveform, selects elsewhere and adds a track while the job runs."""
    fresh_project(walk)
    select(1.0, 3.0)
    finish = requests.finish

    def meanwhile(pipe: AudacityPipe, *args: object) -> list[project.Track]:
        click(audacity, 0.6, 0.3)
        pipe.command("SelectTime: Start=3.5 End=5.25")
        pipe.command("NewMonoTrack:")
        pipe.command("SelectTracks: Track=2 TrackCount=1 Mode=Set")
        return finish(pipe, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(requests, "finish", meanwhile)
    result = run("audacity", "extract", "dog", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "added track 'walk.dog' (1.000-3.000 s, stereo)" in result.output
    assert waves() == [("walk", False, 0.0, 6.0), ("Audio 1", True, 0.0, 0.0), ("walk.dog", False, 1.0, 3.0)]
    assert time_selection() == (3.5, 5.25)

    reference = tmp_path / "reference.wav"
    assert run("extract", "dog", walk, "--start", "1", "--end", "3", "-o", reference, "--device", "cpu").exit_code == 0
    heard = exported(3, 1.0, 3.0, tmp_path / "heard.wav")
    np.testing.assert_allclose(heard, sf.read(str(reference), dtype="float32")[0], atol=1e-6)

    with AudacityPipe() as pipe:
        pipe.command("Undo:")  # the label time_selection() added
    steps = []  # undo, past the user's new track too: no step has a misplaced or unnamed stem
    for _ in range(4):
        with AudacityPipe() as pipe:
            pipe.command("Undo:")
        steps.append(([w[0] for w in waves()], [text for _, _, text in label_texts()]))
    assert steps == [(["walk", "Audio 1"], ["clapsep:dog #id done: walk.dog"]),
                     (["walk", "Audio 1"], ["clapsep:dog #id 0%"]),
                     (["walk"], ["clapsep:dog #id 0%"]),  # Audacity 3.2 applies a Nyquist Prompt sent through
                     ([], [])]  # the pipe with no undo step of its own: the label went into the import's


def test_a_deleted_source_track_fails_the_request_and_inserts_nothing(
        audacity: live.LiveAudacity, home: Path, walk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_project(walk)
    with AudacityPipe() as pipe:
        pipe.command(f'Import2: Filename="{walk}"')
        pipe.command('SetTrack: Track=1 Name="other"')
    select(1.0, 2.0)
    finish = requests.finish

    def meanwhile(pipe: AudacityPipe, *args: object) -> list[project.Track]:
        pipe.command("SelectTracks: Track=0 TrackCount=1 Mode=Set")
        pipe.command("RemoveTracks:")
        return finish(pipe, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(requests, "finish", meanwhile)
    result = run("audacity", "extract", "dog", "--device", "cpu")
    why = "the source track 'walk' was deleted or renamed while the job ran; nothing inserted"
    assert result.exit_code == 1 and result.output == f"clapsep: error: {why}\n"
    assert [w[0] for w in waves()] == ["other"]
    assert label_texts() == [(1.0, 2.0, f"clapsep:dog #id failed: {why}")]


def test_undo_after_a_served_request_with_the_watcher_running(audacity: live.LiveAudacity, home: Path,
                                                             walk: Path, tmp_path: Path) -> None:
    fresh_project(walk)
    select(0.5, 2.0)
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-dog:")  # what Tools > Apply Macro > clapsep-dog does
    log = tmp_path / "watch.log"
    watcher = start_watcher(home, log)
    try:
        wait_for(lambda: any("done" in text for _, _, text in label_texts()), 180, log)
        status = clapsep(home, "audacity", "watch", "--status")
        assert status.returncode == 0 and f"watcher pid {watcher.pid}: idle" in status.stdout
        served = [("walk", True, 0.0, 6.0), ("walk.dog", False, 0.5, 2.0)]
        assert waves() == served
        history = [(served, "clapsep:dog #id done: walk.dog")]
        for _ in range(3):  # Audacity 3.2: stem, label "done", label taken, request
            with AudacityPipe() as pipe:
                pipe.command("Undo:")
            history.append((waves(), label_texts()[0][2]))
        assert history[1:] == [([("walk", True, 0.0, 6.0)], "clapsep:dog #id done: walk.dog"),
                               ([("walk", True, 0.0, 6.0)], "clapsep:dog #id 0%"),
                               ([("walk", True, 0.0, 6.0)], "clapsep:dog")]
        wait_for(lambda: "served already" in log.read_text(), 60, log)
        time.sleep(1.0)  # several more polls: nothing may be served
        assert waves() == [("walk", True, 0.0, 6.0)] and label_texts() == [(0.5, 2.0, "clapsep:dog")]
        for _ in range(3):
            with AudacityPipe() as pipe:
                pipe.command("Redo:")
        assert waves() == served
        assert log.read_text().count("added track") == 1
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    assert clapsep(home, "audacity", "watch", "--status").returncode == 1


def test_extract_through_the_warm_service_inserts_what_a_run_here_writes(
        audacity: live.LiveAudacity, home: Path, walk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clapsep_cli.service import client

    runtime = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))  # a service of this test's own
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        fresh_project(walk)
        select(1.5, 4.0)
        done = clapsep(home, "audacity", "extract", "dog", "--device", "cpu", "--server", "require")
        assert done.returncode == 0, done.stderr
        assert "added track 'walk.dog' (1.500-4.000 s, stereo)" in done.stdout
        assert client.status()["jobs_done"] == 1  # the service separated it
        reference = tmp_path / "reference.wav"
        assert run("extract", "dog", walk, "--start", "1.5", "--end", "4.0", "-o", reference, "--device", "cpu",
                   "--server", "never").exit_code == 0
        expected = sf.read(str(reference), dtype="float32")[0]
        heard = exported(2, 1.5, 4.0, tmp_path / "heard.wav")
        np.testing.assert_allclose(heard, expected, atol=1e-6)
        assert label_texts() == [(1.5, 4.0, "clapsep:dog #id done: walk.dog")]
    finally:
        client.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def start_watcher(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "clapsep_cli", "audacity", "watch", "--device", "cpu",
                                 "--poll", "0.2"], env=_env(home), stdout=out, stderr=subprocess.STDOUT)


def clapsep(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clapsep_cli", *args], env=_env(home), capture_output=True,
                          text=True, timeout=120, check=False)


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CLAPSEP_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "PYTHONUNBUFFERED": "1"}


def wait_for(condition: Callable[[], bool], limit: float, log: Path) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit:g} s; watcher said: {log.read_text()}")
        time.sleep(0.2)


def click(audacity: live.LiveAudacity, x: float, y: float) -> None:
    """A mouse click at a fraction of Audacity's main window (with Xvfb's xdotool)."""
    env = {**os.environ, "DISPLAY": audacity.env["DISPLAY"]}
    found = subprocess.run(["xdotool", "search", "--onlyvisible", "--pid", str(audacity.process.pid), "--name",
                            "Audacity"], env=env, capture_output=True, text=True, timeout=30, check=True)
    window = found.stdout.split()[0]
    subprocess.run(["xdotool", "mousemove", "--window", window, str(int(1280 * x)), str(int(1024 * y)), "click", "1"],
                   env=env, check=True, timeout=30)


def test_macro_request_is_served_by_watch(audacity: live.LiveAudacity, home: Path, walk: Path) -> None:
    fresh_project(walk)
    select(0.5, 2.0)
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-dog:")  # what Tools > Apply Macro > clapsep-dog does
        assert [(lb.start, lb.end, lb.text) for lb in project.labels(pipe)] == [(0.5, 2.0, "clapsep:dog")]
    select(3.0, 3.5)  # the request keeps the span it was made for

    result = run("audacity", "watch", "--once", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "clapsep:dog: 0.500-2.000 s" in result.output and "added track 'walk.dog'" in result.output
    assert waves() == [("walk", True, 0.0, 6.0), ("walk.dog", False, 0.5, 2.0)]
    assert label_texts() == [(0.5, 2.0, "clapsep:dog #id done: walk.dog")]
    assert time_selection() == (3.0, 3.5)


def test_request_in_the_users_label_track_leaves_the_other_labels(audacity: live.LiveAudacity, home: Path,
                                                                  walk: Path) -> None:
    fresh_project(walk)
    select(0.2, 0.3)
    with AudacityPipe() as pipe:
        pipe.command("AddLabel:")
        pipe.command('SetLabel: Label=0 Text="mine"')
    select(1.0, 2.5, 0, 2)  # the audio and the label track: the macro's label goes into the latter
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-dog:")
        assert [lb.text for lb in project.labels(pipe)] == ["mine", "clapsep:dog"]

    assert run("audacity", "watch", "--once", "--device", "cpu").exit_code == 0
    with AudacityPipe() as pipe:
        tracks = project.tracks(pipe)
    assert [(t.name, t.selected) for t in tracks] == [("walk", True), ("Labels 1", True), ("walk.dog", False)]
    assert label_texts() == [(0.2, 0.3, "mine"), (1.0, 2.5, "clapsep:dog #id done: walk.dog")]
    assert (tracks[2].start, tracks[2].end) == (1.0, 2.5)
    assert time_selection() == (1.0, 2.5)


def test_nothing_selected_is_one_clear_line(audacity: live.LiveAudacity, home: Path, walk: Path) -> None:
    fresh_project(walk)
    select(1.0, 2.0)
    with AudacityPipe() as pipe:
        pipe.command("SelectTracks: Track=0 TrackCount=1 Mode=Remove")
    result = run("audacity", "extract", "dog")
    assert result.exit_code == 1
    assert result.output == ("clapsep: error: no audio track is selected in Audacity: drag over the part of a "
                             "track to extract\n")
    select(2.0, 2.0)
    result = run("audacity", "extract", "dog")
    assert result.exit_code == 1 and "no time range with audio is selected" in result.output
    with AudacityPipe() as pipe:
        assert [t.name for t in project.tracks(pipe)] == ["walk"]


def events_of(source: Path, start: float, end: float) -> list[tuple[float, float, float]]:
    """What `clapsep find` finds in ``source`` from ``start`` to ``end`` (the file's clock)."""
    result = run("find", "dog", source, "--start", start, "--end", end, "--json", *FIND)
    assert result.exit_code == 0, result.output
    return [(e["start"], e["end"], e["confidence"]) for e in json.loads(result.output)["results"][0]["events"]]


def find_labels() -> tuple[str, list[tuple[float, float, float]]]:
    """The last track's name and its labels as (start, end, confidence)."""
    with AudacityPipe() as pipe:
        last = project.tracks(pipe)[-1]
        found = [lb for lb in project.labels(pipe) if lb.track == last.index]
    assert all(lb.text.startswith("dog ") for lb in found)
    return last.name, [(lb.start, lb.end, float(lb.text.split()[1])) for lb in found]


def test_find_labels_each_event_over_the_selection_in_one_undo_step(
        audacity: live.LiveAudacity, home: Path, bursts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user selects elsewhere and adds (and so selects) a label track while the job runs."""
    fresh_project(bursts)
    select(1.5, 5.0)
    place = finding.place_events

    def meanwhile(pipe: AudacityPipe, *args: object) -> finding.Found:
        pipe.command("SelectTime: Start=0.25 End=0.75")
        pipe.command("NewLabelTrack:")
        return place(pipe, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(finding, "place_events", meanwhile)
    result = run("audacity", "find", "dog", *FIND)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("added label track 'find: dog':\n")

    expected = events_of(bursts, 1.5, 5.0)
    name, found = find_labels()
    assert name == "find: dog" and len(found) == len(expected) >= 2
    for (start, end, confidence), want in zip(found, expected):
        assert 1.5 < start < end < 5.0
        assert (start, end, confidence) == pytest.approx(want, abs=0.006)
    with AudacityPipe() as pipe:
        assert [t.kind for t in project.tracks(pipe)] == ["wave", "label", "label", "label"]
        assert [lb.track for lb in project.labels(pipe)].count(2) == 0  # none in the user's new track
    assert label_texts()[0] == (1.5, 5.0, f"clapsep-find:dog #id done: {len(found)} events in find: dog")
    assert time_selection() == (0.25, 0.75)

    with AudacityPipe() as pipe:
        pipe.command("Undo:")  # the label time_selection() added
        pipe.command("Undo:")  # one step: the whole label track, and the request label's "done"
        assert [t.kind for t in project.tracks(pipe)] == ["wave", "label", "label"]
    assert label_texts()[0] == (1.5, 5.0, "clapsep-find:dog #id 0%")
    with AudacityPipe() as pipe:
        pipe.command("Redo:")
    assert find_labels() == (name, found)
    assert label_texts()[0][2].endswith(f"done: {len(found)} events in find: dog")


def test_find_macro_requests_are_served_by_watch_with_extraction(audacity: live.LiveAudacity, home: Path,
                                                                 bursts: Path) -> None:
    fresh_project(bursts)
    select(1.5, 5.0)
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-find-dog:")  # what Tools > Apply Macro > clapsep-find-dog does
    select(0.5, 1.0, 0, 2)  # the label track too: the macro's label goes there
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-dog:")
    select(3.0, 3.5)

    result = run("audacity", "watch", "--once", *FIND)
    assert result.exit_code == 0, result.output
    assert "clapsep:dog: 0.500-1.000 s\n  added track 'bursts.dog' (0.500-1.000 s)" in result.output
    assert "clapsep-find:dog: 1.500-5.000 s\n  added label track 'find: dog' (2 events)" in result.output
    assert [re.sub(r" #id done: .*", " done", text) for _, _, text in label_texts()[:2]] == [
        "clapsep:dog done", "clapsep-find:dog done"]
    with AudacityPipe() as pipe:
        assert [(t.name, t.kind) for t in project.tracks(pipe)] == [
            ("bursts", "wave"), ("Labels 1", "label"), ("bursts.dog", "wave"), ("find: dog", "label")]
    assert time_selection() == (3.0, 3.5)


def test_find_with_nothing_found_adds_no_track(audacity: live.LiveAudacity, home: Path, bursts: Path) -> None:
    fresh_project(bursts)
    select(1.5, 5.0)
    result = run("audacity", "find", "dog", "--threshold", "1", "--device", "cpu")
    assert result.exit_code == 0 and result.output == "no dog found\n", result.output
    with AudacityPipe() as pipe:
        assert [t.name for t in project.tracks(pipe)] == ["bursts", "Labels 1"]
    assert label_texts() == [(1.5, 5.0, "clapsep-find:dog #id done: no dog found")]
