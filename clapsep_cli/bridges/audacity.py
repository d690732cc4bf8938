"""The Audacity bridge: separate a time range of a running Audacity and put the stems back.

Every extraction is a *request*: a label ``clapsep:<name>`` over the time range (the macros of
:mod:`.audacity_setup` add one; ``clapsep audacity extract`` adds one with the same Nyquist
code). Serving it has three parts:

1. *take*: the label becomes ``clapsep:<name> #<id> 0%`` and its ends are set to the times
   ``GetInfo`` printed (six significant digits), so the range is two numbers the bridge knows
   exactly; the selected tracks are exported over it (32-bit float WAV at the project rate).
2. the job runs; the label shows its progress (``... 50%``) now and then.
3. *finish*: the label must still be there, unmoved, and the source tracks must still hold the
   same audio over the range (exported again and compared); then the label says ``... done``
   and each stem is imported, named, and its clip moved to the range's start (``SetClip:
   Start=``). Otherwise the label says ``... failed: <why>`` and nothing is inserted. The time
   and track selection the user has then are given back.

Undo, from Audacity 3.2's source and measured: commands sent through the pipe run as in a macro,
so scripting commands (``Select*``, ``SetTrack``, ``SetClip``, ``GetInfo``) and effects (the
Nyquist Prompt) record no undo state, while ``SetLabel`` and menu commands like ``Import2``
record one each. ``ToggleSpectralSelection`` rewrites the current state without adding one: sent
twice (a no-op) after naming and moving an imported stem, it makes the import's own undo state
hold the finished track, so no undo state has a stem that is unnamed or in the wrong place.

A request is served at most once: a taken label carries an id and no longer reads as a request,
and the watcher remembers the requests it took, so one that undo brings back is not served again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from clapsep_cli import api, atomic
from clapsep_cli.bridges.audacity_pipe import AudacityPipe, PipeError, PipePaths
from clapsep_cli.bridges.audacity_setup import REQUEST_PREFIX, request_command
from clapsep_cli.errors import ClapsepError
from clapsep_cli.extract import OutputPlan, Progress
from clapsep_cli.queries import Query

WAV_ENCODING = "/FileFormats/ExportFormat_SF1_Type/WAV_10000"  # libsndfile subtype of Audacity's WAV export
SKIP_LEADING_SILENCE = "/AudioFiles/SkipSilenceAtBeginning"
DEFAULTS = {WAV_ENCODING: "0", SKIP_LEADING_SILENCE: "0"}  # what Audacity does with the setting unset
SF_FORMAT_FLOAT = 6
REQUEST = re.compile(rf"^{REQUEST_PREFIX}([a-z0-9][a-z0-9_-]{{0,47}})$")
PROGRESS_STEP = 25  # percent between progress updates of a request label
PROGRESS_EVERY = 5.0  # seconds at least between them (each is an undo step in Audacity 3.2)


@dataclass(frozen=True)
class Track:
    """A track as ``GetInfo: Type=Tracks`` lists it (stereo tracks count once)."""

    index: int
    name: str
    kind: str
    selected: bool
    channels: int = 0
    start: float = 0.0
    end: float = 0.0
    mute: bool = False
    solo: bool = False


@dataclass(frozen=True)
class Label:
    """A label; ``index`` counts over all label tracks, as ``SetLabel: Label=`` does."""

    index: int
    track: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Job:
    """What to extract: a query, whether the residual comes too, and the tag in track names."""

    query: Query
    residual: bool

    @property
    def tag(self) -> str:
        return self.query.slug()


@dataclass(frozen=True)
class Stem:
    """A separated file and the tag its track name gets."""

    path: Path
    tag: str


@dataclass(frozen=True)
class Taken:
    """A request being served: its label's text up to the id, its range as decimal texts that
    Audacity reads back as the very numbers the bridge compares, the tracks and audio used."""

    head: str
    start: str
    end: str
    sources: tuple[Track, ...]
    audio: Path

    @property
    def base(self) -> str:
        """What the stems' track names start with: the source track's name, or ``mix``."""
        return self.sources[0].name if len(self.sources) == 1 else "mix"

    @property
    def span(self) -> str:
        return f"{float(self.start):.3f}-{float(self.end):.3f} s"


class Separate(Protocol):
    """Separates ``source`` for ``job``, writing stems into ``folder``."""

    def __call__(self, source: Path, job: Job, folder: Path, progress: Progress) -> list[Stem]: ...


def make_job(text: str | None, preset: str | None, negative: tuple[str, ...], residual: bool | None) -> Job:
    """A job from a query text and/or a preset, plus negatives (combined by the library's one
    rule, :func:`clapsep_cli.api.request`); the preset decides the residual unless ``residual``
    is given."""
    req = api.request(*([text] if text else []), preset=preset, negative=negative)
    return Job(req.query, req.residual if residual is None else residual)


class StemMaker:
    """Separates with one :class:`clapsep_cli.api.Separator`, whose model is loaded on first use
    and kept for every later request."""

    def __init__(self, separator: api.Separator):
        self.separator = separator

    def __call__(self, source: Path, job: Job, folder: Path, progress: Progress) -> list[Stem]:
        plan = OutputPlan(output=folder / f"{job.tag}.wav", residual=job.residual, fmt="wav", bit_depth="32f",
                          overwrite=True)
        result = self.separator.extract([source], api.Request(job.query), plan, progress=progress).results[0]
        if result.status != "ok" or result.target is None:
            raise ClapsepError(str(result.error).replace(str(source), "the selected audio"))
        stems = [Stem(result.target, job.tag)]
        if result.residual is not None:
            stems.append(Stem(result.residual, f"{job.tag}.residual"))
        return stems


def tracks(pipe: AudacityPipe) -> list[Track]:
    """The project's tracks, in order."""
    out = []
    for i, item in enumerate(_json(pipe, "GetInfo: Type=Tracks Format=JSON")):
        out.append(Track(i, str(item.get("name", "")), str(item.get("kind", "")), bool(item.get("selected")),
                         int(item.get("channels", 0)), float(item.get("start", 0.0)), float(item.get("end", 0.0)),
                         bool(item.get("mute")), bool(item.get("solo"))))
    return out


def labels(pipe: AudacityPipe) -> list[Label]:
    """Every label, numbered as ``SetLabel`` numbers them."""
    out: list[Label] = []
    for track, items in _json(pipe, "GetInfo: Type=Labels Format=JSON"):
        for start, end, text in items:
            out.append(Label(len(out), int(track), float(start), float(end), str(text)))
    return out


def extract_selection(pipe: AudacityPipe, job: Job, separate: Separate,
                      report: Callable[[str], None] = lambda text: None) -> list[Track]:
    """Mark the selection as a request (a label, as the macros do) and serve it at once; the
    added tracks (times to six digits, as Audacity reports them)."""
    chosen_sources(tracks(pipe))
    with tempfile.TemporaryDirectory(prefix="clapsep-audacity-") as tmp:
        export_selection(pipe, Path(tmp) / "check.wav", 1)  # an empty range stops here, before Nyquist's dialog
    before = {_key(lb) for lb in labels(pipe)}
    text = f"{REQUEST_PREFIX}{job.tag}"
    pipe.command(request_command(text))
    added = [lb for lb in labels(pipe) if lb.text == text and _key(lb) not in before]
    if not added:
        raise ClapsepError("Audacity did not add the request label (is a time range selected?)")
    return serve(pipe, added[0], job, separate, report)


def chosen_sources(now: list[Track]) -> list[Track]:
    """The tracks Audacity would export: the selected audio tracks that are heard."""
    chosen = [t for t in now if t.kind == "wave" and t.selected]
    if not chosen:
        raise ClapsepError("no audio track is selected in Audacity: drag over the part of a track to extract")
    soloing = any(t.solo for t in now if t.kind == "wave")
    chosen = [t for t in chosen if (t.solo if soloing else not t.mute)]
    if not chosen:
        raise ClapsepError("the selected tracks are muted (or others are soloed), so Audacity would export nothing")
    return chosen


def serve(pipe: AudacityPipe, request: Label, job: Job, separate: Separate,
          report: Callable[[str], None] = lambda text: None) -> list[Track]:
    """Take ``request``, separate its range, and finish it; the added tracks. A failure is
    written into the request label (so it is not served again) and raised."""
    with tempfile.TemporaryDirectory(prefix="clapsep-audacity-") as tmp:
        folder = Path(tmp)
        try:
            taken = take(pipe, request, folder)
        except PipeError:
            raise
        except ClapsepError as err:
            _rename_copies(pipe, request, f"{request.text} failed: {err}")
            raise
        try:
            stems = separate(taken.audio, job, folder, LabelProgress(pipe, taken.head, report))
            return finish(pipe, taken, stems, folder)
        except PipeError:
            raise
        except ClapsepError as err:
            set_taken_text(pipe, taken.head, f"{taken.head} failed: {err}")
            raise


def take(pipe: AudacityPipe, request: Label, folder: Path) -> Taken:
    """Give the request (and its copies) an id and the range it printed, and export the
    selected tracks over that range."""
    if not request.end > request.start:
        raise ClapsepError("the request covers no time: select a time range, not a point")
    now = tracks(pipe)
    sources = chosen_sources(now)
    head = f"{request.text} #{secrets.token_hex(3)}"
    start, end = _decimal(request.start), _decimal(request.end)
    with _kept_selection(pipe, now):
        for _ in [lb for lb in labels(pipe) if _same_request(lb, request)]:
            copy = next(lb for lb in labels(pipe) if _same_request(lb, request))
            pipe.command(f'SetLabel: Label={copy.index} Text="{_quotable(head)} 0%" Start={start} End={end}')
        pipe.command(f"SelectTime: Start={start} End={end}")
        audio = export_selection(pipe, folder / "request.wav", _channels(sources))
    return Taken(head, start, end, tuple(sources), audio)


def finish(pipe: AudacityPipe, taken: Taken, stems: list[Stem], folder: Path) -> list[Track]:
    """Check that the request still means the audio it was taken with, then insert the stems
    over its range (one undo step each, holding the finished track)."""
    label = find_taken(pipe, taken.head)
    if (label.start, label.end) != (float(taken.start), float(taken.end)):
        raise ClapsepError(f"the request label was moved from {taken.span} while the job ran; nothing inserted")
    now = tracks(pipe)
    sources = _locate(now, taken.sources)
    names = [f"{taken.base}.{stem.tag}" for stem in stems]
    with _kept_selection(pipe, now):
        select_tracks(pipe, [t.index for t in sources], len(now))
        pipe.command(f"SelectTime: Start={taken.start} End={taken.end}")
        again = export_selection(pipe, folder / "again.wav", _channels(list(taken.sources)))
        if not _same_audio(taken.audio, again):
            raise ClapsepError(f"the audio of {_names(sources)} over {taken.span} changed while the job ran; "
                               "nothing inserted")
        set_taken_text(pipe, taken.head, f"{taken.head} done: {' + '.join(names)}")
        for i, (stem, name) in enumerate(zip(stems, names)):
            pipe.command(f'Import2: Filename="{stem.path}"')
            count = len(tracks(pipe))
            if count != len(now) + i + 1:
                raise ClapsepError(f"Audacity imported {count - len(now) - i} tracks for one stem")
            select_tracks(pipe, [count - 1], count)
            pipe.command(f'SetTrack: Name="{_quotable(name)}"')
            pipe.command(f'SetClip: Start={taken.start} Name="{_quotable(taken.head)}"')
            pipe.command("ToggleSpectralSelection:")  # twice: a no-op that writes the above into
            pipe.command("ToggleSpectralSelection:")  # the import's undo state
    return tracks(pipe)[len(now):]


def find_taken(pipe: AudacityPipe, head: str) -> Label:
    """The label of a request being served (the first, if a macro made copies)."""
    for label in labels(pipe):
        if _is_taken(label, head):
            return label
    raise ClapsepError("the request label is gone (deleted, or undone); nothing inserted")


def set_taken_text(pipe: AudacityPipe, head: str, text: str) -> None:
    """Set the text of a taken request's label (and its copies); one undo step each."""
    text = _quotable(text)
    for _ in [lb for lb in labels(pipe) if _is_taken(lb, head)]:  # each rename may reorder the labels
        label = next((lb for lb in labels(pipe) if _is_taken(lb, head) and lb.text != text), None)
        if label is None:
            return
        pipe.command(f'SetLabel: Label={label.index} Text="{text}"')


class LabelProgress:
    """Shows a job's progress in its request label: in steps of ``PROGRESS_STEP`` percent and at
    most every ``PROGRESS_EVERY`` seconds, as each update is an undo step in Audacity 3.2."""

    def __init__(self, pipe: AudacityPipe, head: str, report: Callable[[str], None]):
        self.pipe, self.head, self.report = pipe, head, report
        self.total = self.done = self.shown = 0
        self.last = time.monotonic()

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        self.total, self.done = max(segments, 1), 0

    def advance(self, segments: int) -> None:
        self.done += segments
        percent = 100 * self.done // self.total // PROGRESS_STEP * PROGRESS_STEP
        self.report(f"{self.head} {100 * self.done // self.total}%")
        if self.shown < percent < 100 and time.monotonic() - self.last >= PROGRESS_EVERY:
            set_taken_text(self.pipe, self.head, f"{self.head} {percent}%")
            self.shown, self.last = percent, time.monotonic()

    def end_file(self) -> None:
        pass


def export_selection(pipe: AudacityPipe, path: Path, channels: int) -> Path:
    """Export the selected span of the selected tracks as 32-bit float WAV, from the very start
    of the selection (Audacity can be set to skip leading silence); the user's settings are
    put back afterwards."""
    with _preferences(pipe, {WAV_ENCODING: str(SF_FORMAT_FLOAT), SKIP_LEADING_SILENCE: "0"}):
        pipe.command(f'Export2: Filename="{path}" NumChannels={channels}')
    try:
        frames = sf.info(str(path)).frames
    except (sf.LibsndfileError, RuntimeError):
        raise ClapsepError(f"Audacity did not export the selection to {path}") from None
    if frames == 0:
        raise ClapsepError("no time range with audio is selected in Audacity: drag over the part of a track to "
                           "extract")
    return path


@contextlib.contextmanager
def _preferences(pipe: AudacityPipe, values: dict[str, str]) -> Iterator[None]:
    """Set Audacity preferences for a while (one never set before is left at its default)."""
    previous = {name: pipe.preference(name) for name in values}
    try:
        for name, value in values.items():
            pipe.command(f'SetPreference: Name="{name}" Value="{value}"')
        yield
    finally:
        for name, value in previous.items():
            pipe.command(f'SetPreference: Name="{name}" Value="{DEFAULTS[name] if value is None else value}"')


@contextlib.contextmanager
def _kept_selection(pipe: AudacityPipe, now: list[Track]) -> Iterator[None]:
    """Give back the track selection of ``now`` and the time selection (through Audacity's
    stored selection, exactly; Audacity 3.2 leaves a selection of 0-0 s unrestored)."""
    pipe.command("SelSave:")
    try:
        yield
    finally:
        select_tracks(pipe, [t.index for t in now if t.selected], len(tracks(pipe)))
        pipe.command("SelRestore:")


def select_tracks(pipe: AudacityPipe, indices: list[int], count: int) -> None:
    """Select exactly the tracks ``indices`` of ``count`` (the time selection stays)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if not runs:
        pipe.command(f"SelectTracks: Track=0 TrackCount={count} Mode=Remove")
    for n, run in enumerate(runs):
        pipe.command(f"SelectTracks: Track={run[0]} TrackCount={len(run)} Mode={'Set' if n == 0 else 'Add'}")


def pending_requests(pipe: AudacityPipe) -> list[Label]:
    """One label per request waiting (copies made by a macro run over several tracks count once)."""
    seen: dict[tuple[int, str, float, float], Label] = {}
    for label in labels(pipe):
        if REQUEST.match(label.text):
            seen.setdefault((label.track, *_key(label)), label)
    return list(seen.values())


class WatcherStatus:
    """What a running watcher is doing, in a file next to the pipe's lock, under an exclusive
    lock it holds while it lives (so a dead watcher never reads as alive)."""

    def __init__(self, paths: PipePaths | None = None):
        lock = (paths or PipePaths.default()).lock
        self.path = lock.with_name(lock.name.replace("clapsep-audacity", "clapsep-audacity-watch")
                                   .replace(".lock", ".json"))
        self.lock_path = self.path.with_suffix(".lock")
        self._fd: int | None = None
        self._state = ""

    def claim(self) -> None:
        """Become the watcher, or fail naming the one running."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClapsepError(f"another watcher is running: {self.read()}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def note(self, state: str) -> None:
        """Record ``state`` if it is news (the file says since when it holds)."""
        if state != self._state:
            self._state = state
            self.write(state)

    def write(self, state: str) -> None:
        atomic.write_text(self.path, json.dumps({"pid": os.getpid(), "state": state, "time": time.time()}))

    def read(self) -> str | None:
        """A line on the running watcher, or None when none runs."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        try:
            info = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return "a watcher is starting"
        stamp = time.strftime("%H:%M:%S", time.localtime(info["time"]))
        return f"watcher pid {info['pid']}: {info['state']} (since {stamp})"


def watch(connect: Callable[[], AudacityPipe], separate: Separate, residual: bool | None = None,
          poll: float = 2.0, once: bool = False, status: WatcherStatus | None = None) -> Iterator[str]:
    """Serve requests as they appear, saying what happens in lines of text. Waits for Audacity
    while it is not there, unless ``once``: then serves what waits now and returns."""
    absent: str | None = None
    taken: set[tuple[str, float, float]] = set()
    told: set[tuple[str, float, float]] = set()
    note = status.note if status else (lambda state: None)
    while True:
        try:
            with connect() as pipe:
                if absent is not None:
                    yield "Audacity is here"
                    absent = None
                for request in pending_requests(pipe):
                    key = _key(request)
                    if key in taken:
                        if key not in told:
                            told.add(key)
                            yield (f"{request.text}: {request.start:.3f}-{request.end:.3f} s was served already "
                                   "(undo brought it back?); not serving it again")
                        continue
                    taken.add(key)
                    yield f"{request.text}: {request.start:.3f}-{request.end:.3f} s"
                    yield from _serve_one(pipe, request, separate, residual, note)
                note("idle, Audacity connected")
        except PipeError as err:
            if once:
                raise
            if absent is None:
                yield f"waiting for Audacity ({err})"
                note(f"waiting for Audacity ({err})")
            absent = str(err)
        if once:
            return
        time.sleep(poll)


def _serve_one(pipe: AudacityPipe, request: Label, separate: Separate, residual: bool | None,
               note: Callable[[str], None]) -> Iterator[str]:
    note(f"serving {request.text}")
    try:
        job = make_job(None, REQUEST.match(request.text).group(1), (), residual)  # type: ignore[union-attr]
    except ClapsepError as err:
        _rename_copies(pipe, request, f"{request.text} failed: {err}")
        yield f"{request.text} failed: {err}"
        return
    try:
        added = serve(pipe, request, job, separate, lambda text: note(f"serving {text}"))
    except PipeError:
        raise
    except ClapsepError as err:
        yield f"{request.text} failed: {err}"
        return
    yield from (f"  added track '{t.name}' ({t.start:.3f}-{t.end:.3f} s)" for t in added)


def _locate(now: list[Track], sources: tuple[Track, ...]) -> list[Track]:
    """The source tracks in ``now``: at their old place if still named so, else the one track
    with their name."""
    found = []
    for track in sources:
        if track.index < len(now) and now[track.index].name == track.name and now[track.index].kind == "wave":
            found.append(now[track.index])
            continue
        same = [t for t in now if t.name == track.name and t.kind == "wave"]
        if len(same) != 1:
            why = "was deleted or renamed" if not same else "is now ambiguous (several tracks have that name)"
            raise ClapsepError(f"the source track '{track.name}' {why} while the job ran; nothing inserted")
        found.append(same[0])
    return found


def _same_audio(first: Path, second: Path) -> bool:
    a, rate_a = sf.read(str(first), dtype="float32", always_2d=True)
    b, rate_b = sf.read(str(second), dtype="float32", always_2d=True)
    return rate_a == rate_b and a.shape == b.shape and bool(np.array_equal(a, b))


def _channels(sources: list[Track]) -> int:
    return 2 if any(t.channels > 1 for t in sources) else 1


def _names(sources: list[Track]) -> str:
    return ", ".join(f"'{t.name}'" for t in sources)


def _rename_copies(pipe: AudacityPipe, request: Label, text: str) -> None:
    for label in labels(pipe):
        if _same_request(label, request):
            pipe.command(f'SetLabel: Label={label.index} Text="{_quotable(text)}"')


def _is_taken(label: Label, head: str) -> bool:
    return label.text == head or label.text.startswith(head + " ")


def _key(label: Label) -> tuple[str, float, float]:
    return label.text, label.start, label.end


def _same_request(label: Label, request: Label) -> bool:
    return (label.track, *_key(label)) == (request.track, *_key(request))


def _decimal(value: float) -> str:
    """A time as plain decimal text that reads back as the same number (no exponent)."""
    return format(Decimal(repr(value)), "f")


def _quotable(text: str) -> str:
    """Text that fits in a double-quoted command parameter (Audacity has no escapes there)."""
    return " ".join(text.replace('"', "'").split())


def _json(pipe: AudacityPipe, command: str) -> Any:
    output = pipe.command(command)
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise ClapsepError(f"cannot read Audacity's answer to '{command}': {output[:200]!r}") from None
