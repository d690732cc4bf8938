"""The watcher: serves request labels as they appear, one watcher per user."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator

from clapsep_cli.audio import atomic
from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError, PipePaths
from clapsep_cli.bridges.audacity.project import Label, labels
from clapsep_cli.bridges.audacity.requests import REQUEST, Separate, label_key, make_request, rename_copies, serve
from clapsep_cli.errors import ClapsepError


def pending_requests(pipe: AudacityPipe) -> list[Label]:
    """One label per request waiting (copies made by a macro run over several tracks count once)."""
    seen: dict[tuple[int, str, float, float], Label] = {}
    for label in labels(pipe):
        if REQUEST.match(label.text):
            seen.setdefault((label.track, *label_key(label)), label)
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
                    key = label_key(request)
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
        req = make_request(None, REQUEST.match(request.text).group(1), (), residual)  # type: ignore[union-attr]
    except ClapsepError as err:
        rename_copies(pipe, request, f"{request.text} failed: {err}")
        yield f"{request.text} failed: {err}"
        return
    try:
        added = serve(pipe, request, req, separate, lambda text: note(f"serving {text}"))
    except PipeError:
        raise
    except ClapsepError as err:
        yield f"{request.text} failed: {err}"
        return
    yield from (f"  added track '{t.name}' ({t.start:.3f}-{t.end:.3f} s)" for t in added)
