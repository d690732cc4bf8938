"""Find requests: where a sound occurs in a request's range, as a label track over that range.

The events become labels through one Nyquist Prompt step run on one source track over the
range (Nyquist reads them from a file; its label times count from the range's start, and it
puts them into a new label track when none is selected), so the whole track is one undo step; Audacity 3.2 puts the
request label's "done" into that step too. No audio is written back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from clapsep_cli import api
from clapsep_cli.bridges.audacity.pipe import AudacityPipe
from clapsep_cli.bridges.audacity.project import Label, Track, select_tracks, tracks
from clapsep_cli.bridges.audacity.requests import (
    Seen,
    Taken,
    mark_selection,
    name_new_track,
    serve,
    set_taken_text,
    verified,
)
from clapsep_cli.bridges.audacity.setup import FIND_PREFIX
from clapsep_cli.errors import ClapsepError

FIND_REQUEST = re.compile(rf"^{re.escape(FIND_PREFIX)}([a-z0-9][a-z0-9_-]{{0,47}})$")
TRACK_PREFIX = "find: "


class Find(Protocol):
    """The events of the sound ``req`` describes in ``source``, in seconds from its start."""

    def __call__(self, source: Path, req: api.Request, progress: api.Progress) -> list[api.Event]: ...


class EventSearch:
    """Finds with one :class:`clapsep_cli.api.Executor` (a separator here, its model loaded on first
    use and kept for every later request, or the warm service) and fixed
    :class:`clapsep_cli.api.DetectOptions`."""

    def __init__(self, separator: api.Executor, options: api.DetectOptions | None = None):
        self.separator, self.options = separator, options or api.DetectOptions()

    def __call__(self, source: Path, req: api.Request, progress: api.Progress) -> list[api.Event]:
        result = self.separator.find([source], req, api.EventPlan(self.options), progress=progress).results[0]
        if result.status != "ok" or result.events is None:
            raise ClapsepError(str(result.error).replace(str(source), "the selected audio"))
        return result.events


@dataclass(frozen=True)
class Found:
    """What a find request added: its events in project time, and their label track (None when
    nothing was found: then no track is added)."""

    events: list[api.Event]
    track: Track | None


def find_selection(pipe: AudacityPipe, req: api.Request, find: Find,
                   report: Callable[[str], None] = lambda text: None) -> Found:
    """Mark the selection as a find request and serve it at once."""
    request, seen = mark_selection(pipe, f"{FIND_PREFIX}{req.tag}")
    return find_request(pipe, request, req, find, report, seen)


def find_request(pipe: AudacityPipe, request: Label, req: api.Request, find: Find,
                 report: Callable[[str], None] = lambda text: None, seen: Seen | None = None) -> Found:
    """Serve the find ``request`` (``seen``: the project as just listed, if known): its events
    as labels over its range."""
    return serve(pipe, request, lambda taken, folder, progress: place_events(
        pipe, taken, req.tag, find(taken.audio, req, progress), folder), report, seen)


def place_events(pipe: AudacityPipe, taken: Taken, tag: str, events: list[api.Event], folder: Path) -> Found:
    """Check that the request still means the audio it was taken with, then add the events
    (seconds from the range's start) as a label track ``find: <tag>`` over the range, labels
    ``<tag> <confidence>``; with no events, only the request label says so."""
    span = float(taken.end) - float(taken.start)
    events = [replace(e, start=min(e.start, span), end=min(e.end, span)) for e in events]
    command = labels_command(events, folder) if events else None
    with verified(pipe, taken, folder) as found:
        if command is None:
            set_taken_text(pipe, taken.head, f"{taken.head} done: no {tag} found", found.labels)
            found.added.append(0)
            return Found([], None)
        name = TRACK_PREFIX + tag
        set_taken_text(pipe, taken.head, f"{taken.head} done: {event_count(events)} in {name}", found.labels)
        select_tracks(pipe, [found.sources[0].index], len(found.now))  # one track: Nyquist labels once per track
        pipe.command(command)
        name_new_track(pipe, len(found.now), name)
        after = tracks(pipe)
        found.added.append(len(after) - len(found.now))
    offset = float(taken.start)
    return Found([replace(e, start=offset + e.start, end=offset + e.end) for e in events], after[len(found.now)])


def labels_command(events: list[api.Event], folder: Path) -> str:
    """The Nyquist Prompt step that adds ``events`` (seconds from the selection's start) as
    labels ``<label> <confidence>``: Nyquist reads them from a file in ``folder`` (a command
    line holds only about 20, see :data:`~clapsep_cli.bridges.audacity.pipe.LINE_LIMIT`).
    Labels are query tags, so nothing in them needs escaping."""
    path = folder / "labels.lsp"
    if any(c in str(path) for c in '"\\'):
        raise ClapsepError(f"the temporary folder {folder} has a quote or backslash in its path, which Nyquist "
                           "cannot be given: set TMPDIR to another folder")
    items = "".join(f'({e.start:.6f} {e.end:.6f} "{e.label} {e.confidence:.2f}")\n' for e in events)
    path.write_text(f"(\n{items})\n", encoding="utf-8")
    return f'NyquistPrompt: Command="(let ((f (open \\"{path}\\"))) (prog1 (read f) (close f)))" Version=4'


def event_count(events: list[api.Event]) -> str:
    """``1 event``, ``2 events``."""
    return f"{len(events)} event{'s' if len(events) != 1 else ''}"
