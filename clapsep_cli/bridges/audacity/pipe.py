"""A client for Audacity's mod-script-pipe: one command at a time, each reply read to its end.

Audacity (Linux, macOS) serves two FIFOs: ``/tmp/audacity_script_pipe.to.<uid>`` takes one command
per line and ``.from.<uid>`` answers. A reply is the command's output, a line
``BatchCommand finished: OK`` (or ``Failed!``) and a blank line; with no project open it is a lone
blank line. Audacity builds a whole reply before writing it, writes it in one burst, and dies of
SIGPIPE if nobody reads it: so once a command is sent its reply is always read to the end (a first
Ctrl-C waits for it). After a client disconnects Audacity deletes and re-creates both FIFOs, so
connecting retries briefly; a lock file keeps two clapsep processes from interleaving commands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

from clapsep_cli.audio.atomic import file_lock
from clapsep_cli.errors import ClapsepError

if TYPE_CHECKING:
    from filelock import BaseFileLock

PIPE_DIR_ENV = "CLAPSEP_AUDACITY_PIPE_DIR"
FINISHED = "BatchCommand finished: "
HELLO = "clapsep"
EMPTY_REPLY_GRACE = 1.0  # a lone blank line followed by this much silence is a whole reply
BUSY_NOTICE = 5.0  # seconds without an answer before saying that Audacity is busy
LINE_LIMIT = 1022  # bytes a command may have: Audacity reads a line into 1024 bytes, newline and NUL included


class PipeError(ClapsepError):
    """Audacity cannot be reached through its pipe, or went away while talking."""


class NoProjectError(PipeError):
    """Audacity answers, but has no project to work on."""


@dataclass(frozen=True)
class PipePaths:
    """The two FIFOs Audacity serves, and the lock clapsep processes share."""

    to_audacity: Path
    from_audacity: Path
    lock: Path

    @classmethod
    def default(cls) -> PipePaths:
        """Audacity's own paths (in ``$CLAPSEP_AUDACITY_PIPE_DIR`` instead of /tmp when set)."""
        if not hasattr(os, "getuid"):
            raise ClapsepError("the Audacity bridge works on Linux and macOS (Audacity's Windows pipes differ)")
        folder = Path(os.environ.get(PIPE_DIR_ENV) or "/tmp")
        uid = os.getuid()
        return cls(folder / f"audacity_script_pipe.to.{uid}", folder / f"audacity_script_pipe.from.{uid}",
                   folder / f"clapsep-audacity.{uid}.lock")


@dataclass(frozen=True)
class Reply:
    """What Audacity answered: its output, and whether the command succeeded."""

    output: str
    ok: bool


class AudacityPipe:
    """A connection to a running Audacity; use as a context manager."""

    def __init__(self, paths: PipePaths | None = None, settle: float = 1.0, answer_within: float = 5.0,
                 greet: bool = True):
        """``settle``: how long a missing or unattended pipe is retried (Audacity re-creates it
        after each client); ``answer_within``: how long to wait for Audacity to open its end;
        ``greet``: whether to greet Audacity on connecting. Each command costs Audacity a redraw
        of its window, so a client that polls skips the greeting, and its first command is then
        the one that finds out whether Audacity answers (without retrying)."""
        self.paths = paths or PipePaths.default()
        self.settle, self.answer_within, self.greet = settle, answer_within, greet
        self._lock: BaseFileLock | None = None
        self._to: int | None = None
        self._from: int | None = None
        self._writer_seen = False

    def __enter__(self) -> AudacityPipe:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, connect, and greet Audacity (which also proves a project is open)."""
        self._lock = _take_lock(self.paths.lock)
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._close_fifos()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_fifos(self) -> None:
        for fd in (self._to, self._from):
            if fd is not None:
                os.close(fd)
        self._to = self._from = None
        self._writer_seen = False

    def send(self, command: str) -> Reply:
        """Send one command and read its whole reply. A longer command than Audacity reads in
        one piece is refused (Audacity would run its pieces as several commands)."""
        if "\n" in command or "\r" in command:
            raise ValueError(f"a command is one line: {command!r}")
        if len(command.encode("utf-8")) > LINE_LIMIT:
            raise ClapsepError(f"a command for Audacity's script pipe takes at most {LINE_LIMIT} bytes: "
                               f"{command[:60]}... has {len(command.encode('utf-8'))}")
        if self._to is None:
            raise PipeError("not connected to Audacity")
        with _reply_owed():
            try:
                os.write(self._to, (command + "\n").encode("utf-8"))
            except BrokenPipeError:
                raise PipeError("Audacity closed its script pipe (did it quit?)") from None
            return self._read_reply(command)

    def command(self, command: str) -> str:
        """Send one command; its output, or a :class:`ClapsepError` naming it if it failed."""
        reply = self.send(command)
        if not reply.ok:
            detail = f": {reply.output.strip()}" if reply.output.strip() else ""
            raise ClapsepError(f"Audacity could not do '{command}'{detail}")
        return reply.output

    def preference(self, name: str) -> str | None:
        """An Audacity preference's value, or None where it is not set."""
        reply = self.send(f'GetPreference: Name="{name}"')
        return reply.output if reply.ok else None

    def _connect(self) -> None:
        """Open both FIFOs and greet Audacity, retrying for ``settle`` seconds while the FIFOs
        are missing, unattended, or being replaced (Audacity re-creates them after a client)."""
        deadline = time.monotonic() + self.settle
        while True:
            try:
                self._to = _open_writer(self.paths.to_audacity)
                self._from = _open_reader(self.paths.from_audacity)
                if not self.greet:
                    return
                reply = self.send(f"Message: Text={HELLO}")
                break
            except NoProjectError:
                raise
            except PipeError:
                self._close_fifos()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        if reply.output.strip() != HELLO:
            raise PipeError(f"unexpected greeting from Audacity's script pipe: {reply.output.strip()!r}")

    def _replaced(self) -> bool:
        """Whether the FIFOs now at the paths are not the ones this connection opened."""
        for fd, path in ((self._to, self.paths.to_audacity), (self._from, self.paths.from_audacity)):
            try:
                if fd is None or os.stat(path).st_ino != os.fstat(fd).st_ino:
                    return True
            except FileNotFoundError:
                return True
        return False

    def _read_reply(self, command: str) -> Reply:
        """Read until the ``BatchCommand finished`` line and the blank line after it.

        Reading the reply FIFO without blocking tells whether Audacity holds its end: then
        there is "nothing yet" and the reply is awaited however long it takes (Audacity may be
        busy); otherwise it reads as the end of the file, and is given up on after
        ``answer_within`` seconds (safe: nobody can answer on it), or at once if Audacity held
        its end before (it has gone).
        """
        assert self._from is not None
        data = b""
        started = last = time.monotonic()
        told = False
        while not _complete(data):
            select.select([self._from], [], [], 0.1)
            try:
                chunk: bytes | None = os.read(self._from, 1 << 16)
            except BlockingIOError:
                chunk = None
            now = time.monotonic()
            if chunk:
                self._writer_seen = True
                data, last = data + chunk, now
            elif chunk is None:
                self._writer_seen = True
                if data == b"\n" and now - last > EMPTY_REPLY_GRACE:
                    raise NoProjectError("Audacity has no project open: open or create one, then try again")
                if not told and now - started > BUSY_NOTICE:
                    _notice(f"clapsep: Audacity is busy; waiting for its answer to '{command}'...")
                    told = True
            elif self._writer_seen or self._replaced():
                raise PipeError("Audacity closed its script pipe (did it quit?)")
            elif now - started > self.answer_within:
                raise PipeError(f"Audacity did not answer on its script pipe within {self.answer_within:g} s "
                                "(restart Audacity if this persists)")
            else:
                time.sleep(0.02)
        return _parse(data)


def _complete(data: bytes) -> bool:
    if not data.endswith(b"\n\n"):
        return False
    last = data[:-2].rsplit(b"\n", 1)[-1]
    return last.startswith(FINISHED.encode())


def _parse(data: bytes) -> Reply:
    lines = data[:-2].decode("utf-8", errors="replace").split("\n")
    status = lines[-1][len(FINISHED):].strip()
    return Reply("\n".join(lines[:-1]).strip("\n"), status == "OK")


def _open_writer(path: Path) -> int:
    """Open Audacity's command FIFO without ever blocking: an unattended FIFO is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PipeError(f"Audacity is not running with mod-script-pipe ({path} does not exist): start Audacity; "
                        "`clapsep audacity setup` enables mod-script-pipe") from None
    if not stat.S_ISFIFO(mode):
        raise PipeError(f"{path} is not a pipe; Audacity cannot be reached through it")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PipeError(f"Audacity's script pipe {path} vanished; try again") from None
    except PermissionError:
        raise PipeError(f"{path} belongs to another user") from None
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise PipeError(f"nothing answers on {path}: Audacity is not running, or its script pipe broke "
                            "(restart Audacity; a plug-in scan at its start can break the pipe)") from None
        raise PipeError(f"cannot open {path}: {err.strerror}") from None
    os.set_blocking(fd, True)
    return fd


def _open_reader(path: Path) -> int:
    """Open Audacity's reply FIFO (never blocks: reads tell whether Audacity holds its end)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise PipeError(f"cannot open {path}: {err.strerror}") from None


def _take_lock(path: Path) -> BaseFileLock:
    """An exclusive lock on ``path``; says so on stderr when it has to wait for another clapsep."""
    from filelock import Timeout

    lock = file_lock(path)
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            _notice("clapsep: waiting for another clapsep command that is talking to Audacity...")
            lock.acquire()  # until the other one is done (Ctrl-C stops waiting)
    except OSError as err:
        raise PipeError(f"cannot create the lock file {path}: {err.strerror or err}") from None
    return lock


@contextlib.contextmanager
def _reply_owed() -> Iterator[None]:
    """Hold back a first Ctrl-C until Audacity's reply is read (raised afterwards); a second one
    stops at once, at the risk of Audacity dying of SIGPIPE."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []

    def held(signum: int, frame: FrameType | None) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        _notice("clapsep: waiting for Audacity to finish its answer (Ctrl-C again to stop anyway; "
                "Audacity may then quit)")

    previous = signal.signal(signal.SIGINT, held)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
