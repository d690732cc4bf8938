"""Serving one request label: take its range, run a job on its audio, check that the range still
means that audio, land the outcome; extraction's stems."""

from __future__ import annotations

import contextlib
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from clapsep_cli import api
from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError
from clapsep_cli.bridges.audacity.project import (
    Label,
    Track,
    check_selection,
    chosen_sources,
    decimal_text,
    export_channels,
    export_selection,
    export_settings,
    kept_selection,
    labels,
    locate,
    quotable,
    same_audio,
    select_tracks,
    track_names,
    tracks,
)
from clapsep_cli.bridges.audacity.setup import REQUEST_PREFIX, request_command
from clapsep_cli.errors import ClapsepError

REQUEST = re.compile(rf"^{REQUEST_PREFIX}([a-z0-9][a-z0-9_-]{{0,47}})$")
TAKEN = re.compile(r"(.* #[0-9a-f]{6}) 0%")  # a request label marked and taken at once
PROGRESS_STEP = 25  # percent between progress updates of a request label
PROGRESS_EVERY = 5.0  # seconds at least between them (each is an undo step in Audacity 3.2)
T = TypeVar("T")


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
    settings: dict[str, str]  # the user's export settings then: the check after the job puts them back

    @property
    def base(self) -> str:
        """What the stems' track names start with: the source track's name, or ``mix``."""
        return self.sources[0].name if len(self.sources) == 1 else "mix"

    @property
    def span(self) -> str:
        return f"{float(self.start):.3f}-{float(self.end):.3f} s"


class Separate(Protocol):
    """Separates ``source`` for ``req``, writing stems into ``folder``."""

    def __call__(self, source: Path, req: api.Request, folder: Path, progress: api.Progress) -> list[Stem]: ...


def make_request(text: str | None, preset: str | None, negative: tuple[str, ...], residual: bool | None
                 ) -> api.Request:
    """The request of a query text and/or a preset, plus negatives (combined by the library's one
    rule, :func:`clapsep_cli.api.request`); the preset decides the residual unless ``residual``
    is given."""
    req = api.request(*([text] if text else []), preset=preset, negative=negative)
    return req if residual is None else replace(req, residual=residual)


class StemMaker:
    """Separates with one :class:`clapsep_cli.api.Executor`: a separator here, whose model is
    loaded on first use and kept for every later request, or the warm service."""

    def __init__(self, separator: api.Executor):
        self.separator = separator

    def __call__(self, source: Path, req: api.Request, folder: Path, progress: api.Progress) -> list[Stem]:
        plan = api.OutputPlan(output=folder / f"{req.tag}.wav", residual=req.residual, fmt="wav", bit_depth="32f",
                              overwrite=True)
        result = self.separator.extract([source], req, plan, progress=progress).results[0]
        if result.status != "ok" or result.target is None:
            raise ClapsepError(str(result.error).replace(str(source), "the selected audio"))
        stems = [Stem(result.target, req.tag)]
        if result.residual is not None:
            stems.append(Stem(result.residual, f"{req.tag}.residual"))
        return stems


@dataclass(frozen=True)
class Seen:
    """The project as just listed, so that the next step need not ask Audacity again."""

    tracks: list[Track]
    labels: list[Label]


def mark_selection(pipe: AudacityPipe, text: str) -> tuple[Label, Seen]:
    """Mark the selection as the request ``text``, taken at once (a label, as the macros do,
    with its id and 0%: no other label has that text); the label, and the project as seen."""
    now = tracks(pipe)
    chosen_sources(now)
    with tempfile.TemporaryDirectory(prefix="clapsep-audacity-") as tmp:
        check_selection(pipe, Path(tmp))  # an empty range stops here, before Nyquist's dialog
    marked = f"{text} #{secrets.token_hex(3)} 0%"
    pipe.command(request_command(marked))
    listing = labels(pipe)
    added = [lb for lb in listing if lb.text == marked]
    if not added:
        raise ClapsepError("Audacity did not add the request label (is a time range selected?)")
    return added[0], Seen(now, listing)


def extract_selection(pipe: AudacityPipe, req: api.Request, separate: Separate,
                      report: Callable[[str], None] = lambda text: None) -> list[Track]:
    """Mark the selection as an extraction request and serve it at once; the added tracks
    (times to six digits, as Audacity reports them)."""
    request, seen = mark_selection(pipe, f"{REQUEST_PREFIX}{req.tag}")
    return extract_request(pipe, request, req, separate, report, seen)


def extract_request(pipe: AudacityPipe, request: Label, req: api.Request, separate: Separate,
                    report: Callable[[str], None] = lambda text: None, seen: Seen | None = None) -> list[Track]:
    """Serve the extraction ``request`` (``seen``: the project as just listed, if known): its
    stems as tracks over its range; the added tracks."""
    return serve(pipe, request, lambda taken, folder, progress: finish(
        pipe, taken, separate(taken.audio, req, folder, progress), folder), report, seen)


def serve(pipe: AudacityPipe, request: Label, work: Callable[[Taken, Path, api.Progress], T],
          report: Callable[[str], None] = lambda text: None, seen: Seen | None = None) -> T:
    """Take ``request`` and do ``work`` on it (given the taken request, a scratch folder and the
    label's progress; it runs the job and lands the outcome); what ``work`` returns. A failure
    is written into the request label (so it is not served again) and raised."""
    with tempfile.TemporaryDirectory(prefix="clapsep-audacity-") as tmp:
        folder = Path(tmp)
        try:
            taken = take(pipe, request, folder, seen)
        except PipeError:
            raise
        except ClapsepError as err:
            rename_copies(pipe, request, f"{request.text} failed: {err}")
            raise
        try:
            return work(taken, folder, LabelProgress(pipe, taken.head, report))
        except PipeError:
            raise
        except ClapsepError as err:
            set_taken_text(pipe, taken.head, f"{taken.head} failed: {err}")
            raise


def take(pipe: AudacityPipe, request: Label, folder: Path, seen: Seen | None = None) -> Taken:
    """Give the request (and its copies) an id, unless it was marked taken, and export the
    selected tracks over the range it printed (``seen``: the project as just listed, if known)."""
    if not request.end > request.start:
        raise ClapsepError("the request covers no time: select a time range, not a point")
    seen = seen or Seen(tracks(pipe), labels(pipe))
    sources = chosen_sources(seen.tracks)
    marked = TAKEN.fullmatch(request.text)
    head = marked.group(1) if marked else f"{request.text} #{secrets.token_hex(3)}"
    start, end = decimal_text(request.start), decimal_text(request.end)
    with kept_selection(pipe, None):  # the track selection stays as it is
        listing = seen.labels
        for n in range(0 if marked else sum(_same_request(lb, request) for lb in listing)):
            listing = listing if n == 0 else labels(pipe)  # each change may reorder the labels
            copy = next(lb for lb in listing if _same_request(lb, request))
            pipe.command(f'SetLabel: Label={copy.index} Text="{quotable(head)} 0%" Start={start} End={end}')
        pipe.command(f"SelectTime: Start={start} End={end}")
        settings = export_settings(pipe)
        audio = export_selection(pipe, folder / "request.wav", export_channels(sources), settings)
    return Taken(head, start, end, tuple(sources), audio, settings)


@contextlib.contextmanager
def verified(pipe: AudacityPipe, taken: Taken, folder: Path) -> Iterator[Verified]:
    """Check that the request still means the audio it was taken with; inside, what was found
    (see :class:`Verified`), with the sources and the request's range selected (the user's
    selection comes back afterwards)."""
    listing = labels(pipe)
    label = find_taken(pipe, taken.head, listing)
    if (label.start, label.end) != (float(taken.start), float(taken.end)):
        raise ClapsepError(f"the request label was moved from {taken.span} while the job ran; nothing inserted")
    now = tracks(pipe)
    sources = locate(now, taken.sources)
    with kept_selection(pipe, now) as added:
        select_tracks(pipe, [t.index for t in sources], len(now))
        pipe.command(f"SelectTime: Start={taken.start} End={taken.end}")
        again = export_selection(pipe, folder / "again.wav", export_channels(list(taken.sources)), taken.settings)
        if not same_audio(taken.audio, again):
            raise ClapsepError(f"the audio of {track_names(sources)} over {taken.span} changed while the job ran; "
                               "nothing inserted")
        yield Verified(now, sources, listing, added)


@dataclass(frozen=True)
class Verified:
    """A request found unchanged: the project's tracks and the sources among them, its labels
    as listed then, and a list to which the caller adds the number of tracks it adds."""

    now: list[Track]
    sources: list[Track]
    labels: list[Label]
    added: list[int]


def finish(pipe: AudacityPipe, taken: Taken, stems: list[Stem], folder: Path) -> list[Track]:
    """Check that the request still means the audio it was taken with, then insert the stems
    over its range (one undo step each, holding the finished track)."""
    names = [f"{taken.base}.{stem.tag}" for stem in stems]
    with verified(pipe, taken, folder) as found:
        set_taken_text(pipe, taken.head, f"{taken.head} done: {' + '.join(names)}", found.labels)
        for i, (stem, name) in enumerate(zip(stems, names)):
            pipe.command(f'Import2: Filename="{stem.path}"')
            name_new_track(pipe, len(found.now) + i, name,
                           f'SetClip: Start={taken.start} Name="{quotable(taken.head)}"')
        after = tracks(pipe)  # the added tracks as Audacity reports them; the count for giving the selection back
        found.added.append(len(after) - len(found.now))
    return after[len(found.now):]


def name_new_track(pipe: AudacityPipe, count: int, name: str, *commands: str) -> None:
    """Name the one track just added below the ``count`` there were, and send ``commands`` to it,
    all written into the undo step that added it."""
    now = len(tracks(pipe))
    if now != count + 1:
        raise ClapsepError(f"Audacity added {now - count} tracks where clapsep expected one")
    select_tracks(pipe, [count], now)
    pipe.command(f'SetTrack: Name="{quotable(name)}"')
    for command in commands:
        pipe.command(command)
    pipe.command("ToggleSpectralSelection:")  # twice: a no-op that writes the above into
    pipe.command("ToggleSpectralSelection:")  # the undo state that added the track


def find_taken(pipe: AudacityPipe, head: str, listing: list[Label] | None = None) -> Label:
    """The label of a request being served (the first, if a macro made copies), among
    ``listing`` if given."""
    for label in labels(pipe) if listing is None else listing:
        if _is_taken(label, head):
            return label
    raise ClapsepError("the request label is gone (deleted, or undone); nothing inserted")


def set_taken_text(pipe: AudacityPipe, head: str, text: str, listing: list[Label] | None = None) -> None:
    """Set the text of a taken request's label (and its copies); one undo step each.
    ``listing``: the labels as just listed, if the caller has them."""
    text = quotable(text)
    listing = labels(pipe) if listing is None else listing
    for n in range(sum(_is_taken(lb, head) for lb in listing)):
        listing = listing if n == 0 else labels(pipe)  # each rename may reorder the labels
        label = next((lb for lb in listing if _is_taken(lb, head) and lb.text != text), None)
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

    def start_job(self, files: int, place: str) -> None:
        pass

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        self.total, self.done = max(segments, 1), 0

    def advance(self, segments: int) -> None:
        self.done += segments
        percent = 100 * self.done // self.total // PROGRESS_STEP * PROGRESS_STEP
        self.report(f"{self.head} {100 * self.done // self.total}%")
        if self.shown < percent < 100 and time.monotonic() - self.last >= PROGRESS_EVERY:
            set_taken_text(self.pipe, self.head, f"{self.head} {percent}%")
            self.shown, self.last = percent, time.monotonic()

    def end_file(self, result: api.FileResult) -> None:
        pass


def rename_copies(pipe: AudacityPipe, request: Label, text: str) -> None:
    for label in labels(pipe):
        if _same_request(label, request):
            pipe.command(f'SetLabel: Label={label.index} Text="{quotable(text)}"')


def _is_taken(label: Label, head: str) -> bool:
    return label.text == head or label.text.startswith(head + " ")


def label_key(label: Label) -> tuple[str, float, float]:
    return label.text, label.start, label.end


def _same_request(label: Label, request: Label) -> bool:
    return (label.track, *label_key(label)) == (request.track, *label_key(request))
