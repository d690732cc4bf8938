"""The watcher: serves request labels as they appear, one watcher per user."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from clapsep_cli import api
from clapsep_cli.audio import atomic
from clapsep_cli.bridges.audacity.finding import FIND_REQUEST, Find, event_count, find_request
from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError, PipePaths
from clapsep_cli.bridges.audacity.project import Label, labels
from clapsep_cli.bridges.audacity.requests import (
    REQUEST,
    Separate,
    extract_request,
    label_key,
    make_request,
    rename_copies,
)
from clapsep_cli.errors import ClapsepError

if TYPE_CHECKING:
    from filelock import BaseFileLock


class Kind(Protocol):
    """A kind of request the watcher serves: labels ``pattern`` matches (group 1: the preset)."""

    pattern: ClassVar[re.Pattern[str]]

    def request(self, preset: str) -> api.Request:
        """The request a label of ``preset`` asks for."""
        ...

    def serve(self, pipe: AudacityPipe, label: Label, req: api.Request, report: Callable[[str], None]
              ) -> list[str]:
        """Serve ``label``; lines saying what was added."""
        ...


@dataclass(frozen=True)
class Extracting:
    """Extraction requests (``clapsep:<preset>``): the stems as new tracks; ``residual``
    overrides the presets' choice."""

    separate: Separate
    residual: bool | None = None
    pattern: ClassVar[re.Pattern[str]] = REQUEST

    def request(self, preset: str) -> api.Request:
        return make_request(None, preset, (), self.residual)

    def serve(self, pipe: AudacityPipe, label: Label, req: api.Request, report: Callable[[str], None]
              ) -> list[str]:
        added = extract_request(pipe, label, req, self.separate, report)
        return [f"  added track '{t.name}' ({t.start:.3f}-{t.end:.3f} s)" for t in added]


@dataclass(frozen=True)
class Finding:
    """Find requests (``clapsep-find:<preset>``): the events as a new label track."""

    find: Find
    pattern: ClassVar[re.Pattern[str]] = FIND_REQUEST

    def request(self, preset: str) -> api.Request:
        return make_request(None, preset, (), None)

    def serve(self, pipe: AudacityPipe, label: Label, req: api.Request, report: Callable[[str], None]
              ) -> list[str]:
        found = find_request(pipe, label, req, self.find, report)
        if found.track is None:
            return [f"  no {req.tag} found"]
        return [f"  added label track '{found.track.name}' ({event_count(found.events)})"]


def pending_requests(pipe: AudacityPipe, kinds: Sequence[Kind]) -> list[tuple[Label, Kind]]:
    """One label per request waiting, with its kind (copies made by a macro run over several
    tracks count once)."""
    seen: dict[tuple[int, str, float, float], tuple[Label, Kind]] = {}
    for label in labels(pipe):
        kind = next((k for k in kinds if k.pattern.match(label.text)), None)
        if kind is not None:
            seen.setdefault((label.track, *label_key(label)), (label, kind))
    return list(seen.values())


class WatcherStatus:
    """What a running watcher is doing, in a file next to the pipe's lock, beside an exclusive
    lock it holds while it lives (so a dead watcher never reads as alive). Nothing is read from
    the lock file itself (a Windows lock would forbid it)."""

    def __init__(self, paths: PipePaths | None = None):
        lock = (paths or PipePaths.default()).lock
        self.path = lock.with_name(lock.name.replace("clapsep-audacity", "clapsep-audacity-watch")
                                   .replace(".lock", ".json"))
        self.lock_path = self.path.with_suffix(".lock")
        self._lock: BaseFileLock | None = None
        self._state = ""

    def claim(self) -> None:
        """Become the watcher, or fail naming the one running."""
        from filelock import Timeout

        lock = atomic.file_lock(self.lock_path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            raise ClapsepError(f"another watcher is running: {self.read()}") from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self.path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def note(self, state: str) -> None:
        """Record ``state`` if it is news (the file says since when it holds)."""
        if state != self._state:
            self._state = state
            self.write(state)

    def write(self, state: str) -> None:
        atomic.write_text(self.path, json.dumps({"pid": os.getpid(), "state": state, "time": time.time()}))

    def read(self) -> str | None:
        """A line on the running watcher, or None when none runs."""
        if not self._watcher_holds_lock():
            return None
        try:
            info = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return "a watcher is starting"
        stamp = time.strftime("%H:%M:%S", time.localtime(info["time"]))
        return f"watcher pid {info['pid']}: {info['state']} (since {stamp})"

    def _watcher_holds_lock(self) -> bool:
        """Whether a watcher (this one, or another process) holds the lock: taking it for a
        moment tells; a missing lock file means nobody does."""
        from filelock import Timeout

        if self._lock is not None:
            return True
        if not os.path.lexists(self.lock_path):
            return False
        probe = atomic.file_lock(self.lock_path)
        try:
            probe.acquire(blocking=False)
        except Timeout:
            return True
        except OSError:
            return False  # not a lock file we can take (a link, another user's): no watcher of ours
        probe.release()
        return False


def watch(connect: Callable[[], AudacityPipe], kinds: Sequence[Kind], poll: float = 2.0, once: bool = False,
          status: WatcherStatus | None = None) -> Iterator[str]:
    """Serve requests of ``kinds`` as they appear, saying what happens in lines of text. Waits
    for Audacity while it is not there, unless ``once``: then serves what waits now and returns."""
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
                for request, kind in pending_requests(pipe, kinds):
                    key = label_key(request)
                    if key in taken:
                        if key not in told:
                            told.add(key)
                            yield (f"{request.text}: {request.start:.3f}-{request.end:.3f} s was served already "
                                   "(undo brought it back?); not serving it again")
                        continue
                    taken.add(key)
                    yield f"{request.text}: {request.start:.3f}-{request.end:.3f} s"
                    yield from _serve_one(pipe, request, kind, note)
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


def _serve_one(pipe: AudacityPipe, request: Label, kind: Kind, note: Callable[[str], None]) -> Iterator[str]:
    note(f"serving {request.text}")
    try:
        req = kind.request(kind.pattern.match(request.text).group(1))  # type: ignore[union-attr]
    except ClapsepError as err:
        rename_copies(pipe, request, f"{request.text} failed: {err}")
        yield f"{request.text} failed: {err}"
        return
    try:
        lines = kind.serve(pipe, request, req, lambda text: note(f"serving {text}"))
    except PipeError:
        raise
    except ClapsepError as err:
        yield f"{request.text} failed: {err}"
        return
    yield from lines
