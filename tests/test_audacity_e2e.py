"""The Audacity bridge against the real Audacity (3.2, mod-script-pipe) under Xvfb.

Skipped where Audacity or Xvfb is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from clapsep_cli.bridges import audacity as bridge
from clapsep_cli.bridges.audacity_pipe import PIPE_DIR_ENV, AudacityPipe
from clapsep_cli.cli import main
from tests.audacity import live
from tests.conftest import tone, write_audio

RATE = 44100
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def audacity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveAudacity]:
    if os.environ.get(PIPE_DIR_ENV):
        pytest.fail(f"unset {PIPE_DIR_ENV}: these tests talk to the real Audacity's pipes")
    reason = live.missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and the Audacity end-to-end tests cannot run: {reason}")
        pytest.skip(reason)
    session = live.start(tmp_path_factory.mktemp("audacity"))
    try:
        yield session
    finally:
        live.stop(session)


@pytest.fixture
def walk(tmp_path: Path) -> Path:
    """A 6 s stereo float tone, different in each channel."""
    return write_audio(tmp_path / "walk.wav", tone(6.0, RATE, 2), RATE)


def fresh_project(source: Path) -> None:
    """Empty the project, import ``source`` and leave nothing but its track selected."""
    with AudacityPipe() as pipe:
        count = len(bridge.tracks(pipe))
        if count:
            bridge.select_tracks(pipe, list(range(count)), count)
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
        label = max(bridge.labels(pipe), key=lambda lb: lb.index if lb.text == "" else -1)
        return label.start, label.end


def exported(track: int, start: float, end: float, path: Path) -> np.ndarray:
    """What Audacity plays of ``track`` from ``start`` to ``end``, exported as float samples."""
    select(start, end, track)
    with AudacityPipe() as pipe:
        bridge.export_selection(pipe, path, 2)
    return sf.read(str(path), dtype="float32")[0]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_extract_inserts_a_sample_aligned_stem_and_keeps_the_selection(audacity: live.LiveAudacity, home: Path,
                                                                       walk: Path, tmp_path: Path) -> None:
    fresh_project(walk)
    select(1.5, 4.0)
    result = run("audacity", "extract", "dog", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "added track 'walk.dog' (1.500-4.000 s, stereo)" in result.output

    with AudacityPipe() as pipe:
        tracks = bridge.tracks(pipe)
    assert [(t.name, t.kind, t.selected) for t in tracks] == [("walk", "wave", True), ("walk.dog", "wave", False)]
    stem = tracks[1]
    assert (stem.channels, stem.start, stem.end) == (2, 1.5, 4.0)

    reference = tmp_path / "reference.wav"
    assert run("extract", "dog", walk, "--start", "1.5", "--end", "4.0", "-o", reference, "--device", "cpu",
               ).exit_code == 0
    expected = sf.read(str(reference), dtype="float32")[0]
    heard = exported(1, 1.0, 4.5, tmp_path / "heard.wav")  # Audacity ends the export where the stem ends
    half = RATE // 2
    assert heard.shape == (half + len(expected), 2) and len(expected) == int(2.5 * RATE)
    assert not heard[:half].any()
    np.testing.assert_allclose(heard[half:], expected, atol=1e-6)
    assert np.abs(expected).max() > 0.01

    select(1.5, 4.0)  # exported() moved it; check that extract leaves time and tracks as it found them
    assert run("audacity", "extract", "wind", "--residual", "--device", "cpu").exit_code == 0
    with AudacityPipe() as pipe:
        names = [(t.name, t.selected) for t in bridge.tracks(pipe)]
    assert names[2:] == [("walk.wind", False), ("walk.wind.residual", False)] and names[0] == ("walk", True)
    assert time_selection() == (1.5, 4.0)


def test_macro_request_is_served_by_watch(audacity: live.LiveAudacity, home: Path, walk: Path) -> None:
    fresh_project(walk)
    select(0.5, 2.0)
    with AudacityPipe() as pipe:
        pipe.command("Macro_clapsep-dog:")  # what Tools > Apply Macro > clapsep-dog does
        assert [(lb.start, lb.end, lb.text) for lb in bridge.labels(pipe)] == [(0.5, 2.0, "clapsep:dog")]
    select(3.0, 3.5)  # the request keeps the span it was made for

    result = run("audacity", "watch", "--once", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "clapsep:dog: 0.500-2.000 s" in result.output and "added track 'walk.dog'" in result.output
    with AudacityPipe() as pipe:
        tracks, labels = bridge.tracks(pipe), bridge.labels(pipe)
    assert [(t.name, t.kind, t.selected, t.start, t.end) for t in tracks] == [
        ("walk", "wave", True, 0.0, 6.0), ("walk.dog", "wave", False, 0.5, 2.0)]
    assert labels == []


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
        assert [lb.text for lb in bridge.labels(pipe)] == ["mine", "clapsep:dog"]

    assert run("audacity", "watch", "--once", "--device", "cpu").exit_code == 0
    with AudacityPipe() as pipe:
        tracks, labels = bridge.tracks(pipe), bridge.labels(pipe)
    assert [(t.name, t.selected) for t in tracks] == [("walk", True), ("Labels 1", True), ("walk.dog", False)]
    assert [(lb.start, lb.end, lb.text) for lb in labels] == [(0.2, 0.3, "mine")]
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
        assert [t.name for t in bridge.tracks(pipe)] == ["walk"]
