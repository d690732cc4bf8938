"""The bridge's logic (export, import, alignment, naming, selection, extraction and find requests)
on a mini project behind the fake pipe; the real Audacity is exercised in test_audacity_e2e.py."""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapsep_cli import api
from clapsep_cli.api import Progress
from clapsep_cli.bridges.audacity import finding, requests, watcher
from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError
from clapsep_cli.errors import ClapsepError
from tests.audacity.fake_pipe import FakeAudacity, greeting
from tests.audacity.mini_project import MiniProject
from tests.helpers import tone

RATE = 8000


class CopySeparate:
    """A stand-in separator: the stem is the exported selection halved (the residual the rest)."""

    def __init__(self, fail: str | None = None):
        self.sources: list[np.ndarray] = []
        self.fail = fail

    def __call__(self, source: Path, req: api.Request, folder: Path, progress: Progress) -> list[requests.Stem]:
        if self.fail:
            raise ClapsepError(self.fail)
        audio, rate = sf.read(str(source), dtype="float32", always_2d=True)
        self.sources.append(audio)
        stems = [requests.Stem(folder / f"{req.tag}.wav", req.tag)]
        sf.write(str(stems[0].path), audio / 2, rate, subtype="FLOAT")
        if req.residual:
            stems.append(requests.Stem(folder / f"{req.tag}.residual.wav", f"{req.tag}.residual"))
            shutil.copy(stems[0].path, stems[1].path)
        return stems


class FixedFind:
    """A stand-in search: the same events (seconds from the range's start) whatever the audio,
    found after doing to the project what a user might do while the job runs."""

    def __init__(self, events: list[api.Event], mini: MiniProject | None = None,
                 meddle: Callable[[MiniProject], None] = lambda mini: None):
        self.events, self.mini, self.meddle = events, mini, meddle
        self.sources: list[np.ndarray] = []

    def __call__(self, source: Path, req: api.Request, progress: Progress) -> list[api.Event]:
        self.sources.append(sf.read(str(source), dtype="float32", always_2d=True)[0])
        if self.mini is not None:
            self.meddle(self.mini)
        return self.events


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[MiniProject, FakeAudacity]]:
    mini = MiniProject(RATE)
    with FakeAudacity(tmp_path, greeting(mini)) as fake:
        yield mini, fake


def connect(fake: FakeAudacity) -> Callable[[], AudacityPipe]:
    return lambda: AudacityPipe(fake.paths, settle=0.5)


DOG = api.Request(api.Query(positive=("dog",)), residual=False)


def test_stems_are_inserted_aligned_and_named_and_the_selection_is_kept(project: tuple[MiniProject, FakeAudacity],
                                                                        ) -> None:
    mini, fake = project
    walk = tone(4.0, RATE, 2)
    mini.wave("walk", walk)
    mini.label_track("Labels", [(0.1, 0.2, "mine")], selected=True)
    mini.wave("other", tone(4.0, RATE, 1, seed=1), selected=False)
    mini.wave("voice", tone(4.0, RATE, 1, seed=2))
    mini.selection = (1.0, 2.5)
    mini.prefs["/FileFormats/ExportFormat_SF1_Type/WAV_10000"] = "4"
    separate = CopySeparate()

    with connect(fake)() as pipe:
        added = requests.extract_selection(pipe, api.Request(api.Query(positive=("dog",)), residual=True), separate)

    assert [(t.name, t.start, t.end, t.channels) for t in added] == [("mix.dog", 1.0, 2.5, 2),
                                                                      ("mix.dog.residual", 1.0, 2.5, 2)]
    assert [(lane.name, lane.selected) for lane in mini.lanes] == [
        ("walk", True), ("Labels", True), ("other", False), ("voice", True), ("mix.dog", False),
        ("mix.dog.residual", False)]
    copies = [label for label in mini.lanes[1].labels if label[2] != "mine"]  # Nyquist ran once per track
    assert len(copies) == 2 and len({text for _, _, text in copies}) == 1
    assert copies[0][:2] == (1.0, 2.5) and re.fullmatch(
        r"clapsep:dog #[0-9a-f]{6} done: mix\.dog \+ mix\.dog\.residual", copies[0][2])
    assert mini.selection == (1.0, 2.5)
    assert mini.prefs["/FileFormats/ExportFormat_SF1_Type/WAV_10000"] == "4"  # the user's setting is back
    assert "/AudioFiles/SkipSilenceAtBeginning" not in mini.prefs  # never set, at Audacity's default: left alone
    exported = separate.sources[0]
    span = slice(RATE, int(2.5 * RATE))
    np.testing.assert_array_equal(exported, walk[span] + tone(4.0, RATE, 1, seed=2)[span])
    assert 'Export2: Filename="' in "\n".join(fake.commands) and "NumChannels=2" in "\n".join(fake.commands)


def test_a_single_mono_track_gives_a_mono_export_named_after_it(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("voice", tone(3.0, RATE, 1))
    mini.selection = (0.5, 1.0)
    with connect(fake)() as pipe:
        added = requests.extract_selection(pipe, DOG, CopySeparate())
    assert [(t.name, t.channels, t.start, t.end) for t in added] == [("voice.dog", 1, 0.5, 1.0)]
    assert any(c.endswith("NumChannels=1") for c in fake.commands)


def test_nothing_selected_stops_before_exporting(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(2.0, RATE, 2), selected=False)
    mini.selection = (0.5, 1.0)
    with connect(fake)() as pipe, pytest.raises(ClapsepError, match="no audio track is selected"):
        requests.extract_selection(pipe, DOG, CopySeparate())
    assert not any(c.startswith(("Export2", "SetPreference")) for c in fake.commands)


def test_an_empty_time_selection_is_refused(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(2.0, RATE, 2))
    mini.selection = (1.0, 1.0)
    with connect(fake)() as pipe, pytest.raises(ClapsepError, match="no time range with audio is selected"):
        requests.extract_selection(pipe, DOG, CopySeparate())
    assert not any(c.startswith("Import2") for c in fake.commands)


def test_muted_selection_is_refused(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(2.0, RATE, 2)).mute = True
    mini.selection = (0.5, 1.0)
    with connect(fake)() as pipe, pytest.raises(ClapsepError, match="muted"):
        requests.extract_selection(pipe, DOG, CopySeparate())


def test_leading_silence_is_exported_and_the_users_skipping_comes_back(project: tuple[MiniProject, FakeAudacity]
                                                                        ) -> None:
    """A user who has Audacity skip leading silence gets it back; the exports still start at the
    range's start, and a range that is silent throughout is not taken for an empty one."""
    mini, fake = project
    walk = tone(4.0, RATE, 2)
    walk[: 2 * RATE] = 0
    mini.wave("walk", walk)
    mini.prefs["/AudioFiles/SkipSilenceAtBeginning"] = "1"
    separate = CopySeparate()
    for start, end in ((1.0, 3.0), (0.5, 1.5)):
        mini.selection = (start, end)
        with connect(fake)() as pipe:
            requests.extract_selection(pipe, DOG, separate)
        np.testing.assert_array_equal(separate.sources[-1], walk[int(start * RATE):int(end * RATE)])
        assert mini.prefs["/AudioFiles/SkipSilenceAtBeginning"] == "1"
    assert len(separate.sources) == 2 and not separate.sources[1].any()


def test_a_request_costs_few_commands(project: tuple[MiniProject, FakeAudacity]) -> None:
    """Audacity answers one command per turn of its main loop (about 45 ms here): the check before
    the label is one export with the user's settings, the label is made taken (no renaming, no
    listing before), a setting already right is not set and all are read once, the labels and
    tracks are listed once where nothing between could change them."""
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.selection = (1.0, 2.5)
    with connect(fake)() as pipe:
        requests.extract_selection(pipe, DOG, CopySeparate())
    sent = [c.split(":")[0] for c in fake.commands]
    assert sent.count("Export2") == 3 and sent.count("SetPreference") == 4  # the float encoding, set and put back
    assert sent.count("GetInfo") == 6 and sent.count("GetPreference") == 2
    assert len(sent) == 32, sent  # 54, then 38 before


def test_same_audio_reads_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison after a job holds two blocks in memory, however long the range."""
    from clapsep_cli.bridges.audacity import project

    audio = tone(30.0, RATE, 2)
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    for path in (first, second):
        sf.write(str(path), audio, RATE, subtype="FLOAT")
    sizes: list[int] = []
    real_read = sf.SoundFile.read

    def read(self: sf.SoundFile, frames: int = -1, *args: object, **kwargs: object) -> np.ndarray:
        sizes.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("a whole file was read"))
    assert project.same_audio(first, second, block=4096)
    assert sizes and set(sizes) == {4096}
    changed = audio.copy()
    changed[-1, 1] += 1e-7
    sf.write(str(second), changed, RATE, subtype="FLOAT")
    assert not project.same_audio(first, second, block=4096)
    sf.write(str(second), audio[:-1], RATE, subtype="FLOAT")
    assert not project.same_audio(first, second)
    sf.write(str(second), audio, RATE // 2, subtype="FLOAT")
    assert not project.same_audio(first, second)


def test_a_failed_export_still_puts_the_settings_back(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(2.0, RATE, 2))
    mini.selection = (0.5, 1.0)
    mini.failing.add("Export2")
    with connect(fake)() as pipe, pytest.raises(ClapsepError, match="could not do 'Export2"):
        requests.extract_selection(pipe, DOG, CopySeparate())
    assert mini.prefs["/FileFormats/ExportFormat_SF1_Type/WAV_10000"] == "0"  # unset before: Audacity's default
    assert not any(c.startswith("Import2") for c in fake.commands)


def test_requests_count_once_and_other_labels_are_not_requests(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog"), (0.5, 1.5, "clapsep:dog"), (2.0, 2.5, "clapsep:rain")])
    mini.label_track("notes", [(0.1, 0.2, "clapsep:Dog"), (0.3, 0.4, "clapsep:dog failed: x"), (1, 2, "mine")])
    with connect(fake)() as pipe:
        found = [label for label, _ in watcher.pending_requests(pipe, [watcher.Extracting(CopySeparate())])]
    assert [(r.index, r.track, r.text, r.start, r.end) for r in found] == [
        (0, 1, "clapsep:dog", 0.5, 1.5), (2, 1, "clapsep:rain", 2.0, 2.5)]


TAKEN = r"clapsep:dog #[0-9a-f]{6}"


def test_a_request_is_served_over_its_span_once(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    walk = tone(4.0, RATE, 2)
    mini.wave("walk", walk)
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog"), (0.5, 1.5, "clapsep:dog")])  # a macro over 2 tracks
    mini.wave("voice", tone(4.0, RATE, 2, seed=3), selected=False)
    mini.selection = (3.0, 3.5)  # moved since the request was made
    separate = CopySeparate()

    lines = list(watcher.watch(connect(fake), [watcher.Extracting(separate)], once=True))

    assert lines == ["clapsep:dog: 0.500-1.500 s", "  added track 'walk.dog' (0.500-1.500 s)"]
    assert [(lane.name, lane.selected, lane.start) for lane in mini.lanes] == [
        ("walk", True, 0.0), ("Labels 1", False, 0.0), ("voice", False, 0.0), ("walk.dog", False, 0.5)]
    assert [label[:2] for label in mini.labels()] == [(0.5, 1.5)] * 2
    assert [re.sub(TAKEN, "#", label[2]) for label in mini.labels()] == ["# done: walk.dog"] * 2
    assert mini.selection == (3.0, 3.5)
    np.testing.assert_array_equal(separate.sources[0], walk[RATE // 2:int(1.5 * RATE)])
    np.testing.assert_array_equal(mini.lanes[3].audio, walk[RATE // 2:int(1.5 * RATE)] / 2)
    assert list(watcher.watch(connect(fake), [watcher.Extracting(separate)], once=True)) == []


class Meddling(CopySeparate):
    """Separates, but first does to the project what a user might do while the job runs."""

    def __init__(self, mini: MiniProject, meddle: Callable[[MiniProject], None]):
        super().__init__()
        self.mini, self.meddle = mini, meddle

    def __call__(self, source: Path, req: api.Request, folder: Path, progress: Progress) -> list[requests.Stem]:
        self.meddle(self.mini)
        return super().__call__(source, req, folder, progress)


def _move_selection(mini: MiniProject) -> None:
    mini.selection = (2.25, 3.75)
    mini.lanes[0].selected = False
    mini.wave("new take", tone(4.0, RATE, 1, seed=5), selected=True)


def test_the_stem_lands_at_the_requests_range_whatever_is_selected_meanwhile(
        project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    walk = tone(4.0, RATE, 2)
    mini.wave("walk", walk)
    mini.selection = (1.0, 2.0)
    with connect(fake)() as pipe:
        added = requests.extract_selection(pipe, DOG, Meddling(mini, _move_selection))
    assert [(t.name, t.start, t.end) for t in added] == [("walk.dog", 1.0, 2.0)]
    assert mini.selection == (2.25, 3.75)
    assert [(lane.name, lane.selected) for lane in mini.lanes] == [
        ("walk", False), ("Labels 1", False), ("new take", True), ("walk.dog", False)]
    np.testing.assert_array_equal(mini.lanes[3].audio, walk[RATE:2 * RATE] / 2)


def _delete_source(mini: MiniProject) -> None:
    mini.lanes = [lane for lane in mini.lanes if lane.name != "walk"]


def _edit_source(mini: MiniProject) -> None:
    mini.lanes[0].audio[int(1.2 * RATE)] *= 0.5


def _delete_label(mini: MiniProject) -> None:
    mini.lanes = [lane for lane in mini.lanes if lane.kind != "label"]


def _move_label(mini: MiniProject) -> None:
    lane = next(lane for lane in mini.lanes if lane.kind == "label")
    lane.labels = [(start + 0.25, end + 0.25, text) for start, end, text in lane.labels]


@pytest.mark.parametrize("kind", ["extract", "find"])
@pytest.mark.parametrize("meddle, why", [
    (_delete_source, "the source track 'walk' was deleted or renamed while the job ran; nothing inserted"),
    (_edit_source, "the audio of 'walk' over 1.000-2.000 s changed while the job ran; nothing inserted"),
    (_move_label, "the request label was moved from 1.000-2.000 s while the job ran; nothing inserted"),
    (_delete_label, "the request label is gone (deleted, or undone); nothing inserted"),
])
def test_a_request_whose_range_no_longer_means_the_same_audio_fails_and_inserts_nothing(
        project: tuple[MiniProject, FakeAudacity], meddle: Callable[[MiniProject], None], why: str,
        kind: str) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.wave("other", tone(4.0, RATE, 2, seed=1), selected=False)
    mini.selection = (1.0, 2.0)
    with connect(fake)() as pipe, pytest.raises(ClapsepError) as caught:
        if kind == "extract":
            requests.extract_selection(pipe, DOG, Meddling(mini, meddle))
        else:
            finding.find_selection(pipe, DOG, FixedFind(EVENTS, mini, meddle))
    assert str(caught.value) == why
    assert not any(c.startswith("Import2") for c in fake.commands)
    assert sum(c.startswith("NyquistPrompt") for c in fake.commands) == 1  # the request's label only
    assert mini.selection == (1.0, 2.0)
    prefix = "clapsep:dog" if kind == "extract" else "clapsep-find:dog"
    for label in mini.labels():
        assert re.fullmatch(re.escape(prefix) + r" #[0-9a-f]{6} failed: " + re.escape(why), label[2])


def test_a_request_undo_brings_back_is_not_served_again(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog")])
    separate = CopySeparate()
    watching = watcher.watch(connect(fake), [watcher.Extracting(separate)], poll=0.01)
    assert list(itertools.islice(watching, 2))[1].startswith("  added track 'walk.dog'")
    mini.lanes = mini.lanes[:2]  # what undo does: the stem goes, the label reads as the request again
    mini.lanes[1].labels = [(0.5, 1.5, "clapsep:dog")]
    assert next(watching) == ("clapsep:dog: 0.500-1.500 s was served already (undo brought it back?); "
                              "not serving it again")
    mini.label_track("Labels 2", [(2.0, 2.5, "clapsep:dog")])  # a new request is served
    assert next(watching) == "clapsep:dog: 2.000-2.500 s"
    assert next(watching) == "  added track 'walk.dog' (2.000-2.500 s)"
    watching.close()
    assert len(separate.sources) == 2


def test_the_label_shows_progress_in_steps(project: tuple[MiniProject, FakeAudacity],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    mini, fake = project
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog #abcdef 0%")])
    monkeypatch.setattr(requests, "PROGRESS_EVERY", 0.0)
    reports: list[str] = []
    with connect(fake)() as pipe:
        progress = requests.LabelProgress(pipe, "clapsep:dog #abcdef", reports.append)
        progress.start_file(Path("x.wav"), 8, 1.0)
        shown = []
        for _ in range(8):
            progress.advance(1)
            shown.append(mini.labels()[0][2])
    assert shown == ["clapsep:dog #abcdef 0%", "clapsep:dog #abcdef 25%", "clapsep:dog #abcdef 25%",
                     "clapsep:dog #abcdef 50%", "clapsep:dog #abcdef 50%", "clapsep:dog #abcdef 75%",
                     "clapsep:dog #abcdef 75%", "clapsep:dog #abcdef 75%"]
    assert reports[-1] == "clapsep:dog #abcdef 100%"
    assert sum(c.startswith("SetLabel") for c in fake.commands) == 3


def test_progress_updates_are_spaced_in_time(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog #abcdef 0%")])
    with connect(fake)() as pipe:
        progress = requests.LabelProgress(pipe, "clapsep:dog #abcdef", lambda text: None)
        progress.start_file(Path("x.wav"), 4, 1.0)
        for _ in range(4):
            progress.advance(1)
    assert mini.labels()[0][2] == "clapsep:dog #abcdef 0%"  # a quick job adds no undo steps for progress


@pytest.mark.parametrize("text, separate, why", [
    ("clapsep:nosuch", CopySeparate(), "unknown preset 'nosuch'"),
    ("clapsep:dog", CopySeparate(fail="the selected audio: is digital silence"), "is digital silence"),
])
def test_a_failed_request_says_why_in_its_label_and_is_not_served_again(
        project: tuple[MiniProject, FakeAudacity], text: str, separate: CopySeparate, why: str) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("Labels 1", [(0.5, 1.5, text)])
    lines = list(watcher.watch(connect(fake), [watcher.Extracting(separate)], once=True))
    assert lines[0] == f"{text}: 0.500-1.500 s" and lines[1].startswith(f"{text} failed: ") and why in lines[1]
    (label,) = mini.labels()
    assert re.match(re.escape(text) + r"( #[0-9a-f]{6})? failed: ", label[2]) and why in label[2]
    assert [lane.name for lane in mini.lanes] == ["walk", "Labels 1"]
    assert list(watcher.watch(connect(fake), [watcher.Extracting(separate)], once=True)) == []


def test_watcher_status_says_whether_one_is_alive(tmp_path: Path) -> None:
    from clapsep_cli.bridges.audacity.pipe import PipePaths

    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "clapsep-audacity.0.lock")
    first, second = watcher.WatcherStatus(paths), watcher.WatcherStatus(paths)
    assert second.read() is None
    first.claim()
    first.write("serving clapsep:dog #abcdef 50%")
    assert second.read() is not None and "serving clapsep:dog #abcdef 50%" in str(second.read())
    with pytest.raises(ClapsepError, match="another watcher is running"):
        second.claim()
    first.release()
    assert second.read() is None


def test_watch_waits_for_audacity_and_carries_on_when_it_comes(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep:dog")])
    attempts = iter([False, False, True])

    def flaky() -> AudacityPipe:
        if not next(attempts, True):
            raise PipeError("nothing answers")
        return connect(fake)()

    watching = watcher.watch(flaky, [watcher.Extracting(CopySeparate())], poll=0.01)
    lines = list(itertools.islice(watching, 4))
    watching.close()
    assert lines == ["waiting for Audacity (nothing answers)", "Audacity is here", "clapsep:dog: 0.500-1.500 s",
                     "  added track 'walk.dog' (0.500-1.500 s)"]


def test_watch_once_without_audacity_is_an_error(tmp_path: Path) -> None:
    from clapsep_cli.bridges.audacity.pipe import PipePaths

    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "lock")
    with pytest.raises(PipeError, match="does not exist"):
        list(watcher.watch(lambda: AudacityPipe(paths, settle=0.1), [watcher.Extracting(CopySeparate())], once=True))


def test_make_request_from_a_text_or_a_preset() -> None:
    req = requests.make_request("dog barking", None, ("rain",), None)
    assert (req.query.positive, req.query.negative, req.residual, req.tag) == (("dog barking",), ("rain",), False,
                                                                              "dog_barking")
    req = requests.make_request(None, "dog", ("wind",), True)
    assert req.tag == "dog" and req.residual and req.query.negative[-1] == "wind"
    both = requests.make_request("a dog growls", "dog", (), None)  # the library's rule: the preset plus the text
    preset = requests.make_request(None, "dog", (), None)
    assert both.query.positive == preset.query.positive + ("a dog growls",) and both.tag == "dog"
    with pytest.raises(ClapsepError, match="empty query"):
        requests.make_request(None, None, (), None)


EVENTS = [api.Event(0.1, 0.5, 0.8, "dog"), api.Event(0.75, 1.25, 0.3456, "dog")]  # the second ends past 1 s
FOUND = r"clapsep-find:dog #[0-9a-f]{6}"


def test_find_adds_one_label_track_over_the_request_and_keeps_the_selection(
        project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    walk, voice = tone(4.0, RATE, 2), tone(4.0, RATE, 1, seed=2)
    mini.wave("walk", walk)
    mini.wave("voice", voice)
    mini.selection = (1.0, 2.0)
    search = FixedFind(EVENTS)

    with connect(fake)() as pipe:
        found = finding.find_selection(pipe, DOG, search)

    assert [(lane.name, lane.selected) for lane in mini.lanes] == [
        ("walk", True), ("voice", True), ("Labels 1", False), ("find: dog", False)]
    assert mini.lanes[3].labels == [(1.1, 1.5, "dog 0.80"), (1.75, 2.0, "dog 0.35")]  # once, though 2 tracks
    assert [re.sub(FOUND, "#", text) for _, _, text in mini.lanes[2].labels] == ["# done: 2 events in find: dog"] * 2
    assert found.track is not None and found.track.name == "find: dog"
    assert [(e.start, e.end) for e in found.events] == [(1.1, 1.5), (1.75, 2.0)]
    assert mini.selection == (1.0, 2.0)
    span = slice(RATE, 2 * RATE)
    np.testing.assert_array_equal(search.sources[0], walk[span] + voice[span])
    assert not any(c.startswith(("Import2", "SetClip")) for c in fake.commands)  # no audio comes back


def test_find_with_nothing_found_adds_no_track_and_says_so(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.selection = (1.0, 2.0)
    with connect(fake)() as pipe:
        found = finding.find_selection(pipe, DOG, FixedFind([]))
    assert found == finding.Found([], None)
    assert [lane.name for lane in mini.lanes] == ["walk", "Labels 1"]
    assert [re.sub(FOUND, "#", text) for _, _, text in mini.labels()] == ["# done: no dog found"]


def test_the_labels_land_at_the_requests_range_whatever_is_selected_meanwhile(
        project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("notes", [(0.1, 0.2, "mine")])
    mini.selection = (1.0, 2.0)

    def meddle(mini: MiniProject) -> None:
        _move_selection(mini)
        mini.lanes[1].selected = True  # a label track selected: the events must not go there

    with connect(fake)() as pipe:
        finding.find_selection(pipe, DOG, FixedFind(EVENTS, mini, meddle))
    assert [(lane.name, lane.selected) for lane in mini.lanes] == [
        ("walk", False), ("notes", True), ("Labels 2", False), ("new take", True), ("find: dog", False)]
    assert mini.lanes[1].labels == [(0.1, 0.2, "mine")]
    assert mini.lanes[4].labels == [(1.1, 1.5, "dog 0.80"), (1.75, 2.0, "dog 0.35")]
    assert mini.selection == (2.25, 3.75)


def test_the_watcher_serves_find_and_extraction_requests(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(4.0, RATE, 2))
    mini.label_track("Labels 1", [(0.5, 1.5, "clapsep-find:dog"), (2.0, 3.0, "clapsep:dog"),
                                  (3.0, 3.5, "clapsep-find:nosuch")])
    search = FixedFind(EVENTS[:1])
    kinds = [watcher.Extracting(CopySeparate()), watcher.Finding(search)]

    lines = list(watcher.watch(connect(fake), kinds, once=True))

    assert lines[:4] == ["clapsep-find:dog: 0.500-1.500 s", "  added label track 'find: dog' (1 event)",
                         "clapsep:dog: 2.000-3.000 s", "  added track 'walk.dog' (2.000-3.000 s)"]
    assert lines[4] == "clapsep-find:nosuch: 3.000-3.500 s" and "unknown preset 'nosuch'" in lines[5]
    assert [(lane.name, lane.start) for lane in mini.lanes] == [
        ("walk", 0.0), ("Labels 1", 0.0), ("find: dog", 0.0), ("walk.dog", 2.0)]
    assert mini.lanes[2].labels == [(0.6, 1.0, "dog 0.80")]
    assert [re.sub(r" #[0-9a-f]{6}", "", text) for _, _, text in mini.lanes[1].labels] == [
        "clapsep-find:dog done: 1 event in find: dog", "clapsep:dog done: walk.dog",
        "clapsep-find:nosuch failed: unknown preset 'nosuch' (see `clapsep presets list`)"]
    assert list(watcher.watch(connect(fake), kinds, once=True)) == []


def test_many_events_are_one_nyquist_step_of_a_short_command(project: tuple[MiniProject, FakeAudacity]) -> None:
    mini, fake = project
    mini.wave("walk", tone(40.0, RATE, 1))
    mini.selection = (1.0, 39.0)
    events = [api.Event(0.1 * i, 0.1 * i + 0.05, 0.5, "dog") for i in range(300)]
    with connect(fake)() as pipe:  # a command over the pipe's line limit would be refused
        finding.find_selection(pipe, DOG, FixedFind(events))
    assert len(mini.lanes[-1].labels) == 300 and mini.lanes[-1].labels[-1][2] == "dog 0.50"
    assert sum(c.startswith("NyquistPrompt") for c in fake.commands) == 2  # the request's label, the events
