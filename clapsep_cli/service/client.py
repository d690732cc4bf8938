"""Clients of the warm service: find it, start it, ask its status, stop it, say whether a job
should go to it (:func:`usable`), and run jobs on it through :class:`ServiceExecutor`, an
:class:`~clapsep_cli.api.Executor` like :class:`~clapsep_cli.api.Separator` (``run``,
``extract``, ``find``) whose work happens in the service. Torch-free, so a command line that
hands its job to a warm service starts in a fraction of a second.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import AuthenticationError, Connection
from pathlib import Path
from typing import Any

from clapsep_cli import __version__, api
from clapsep_cli.audio import atomic
from clapsep_cli.errors import ClapsepError
from clapsep_cli.jobs.data import RUN_FIELDS, FileResult, to_data
from clapsep_cli.models.store import DEFAULT_MODEL
from clapsep_cli.service import protocol

SERVER_MODES = ("auto", "never", "require")  # use a running service; run here; use one, starting it if need be
START_SECONDS = 60.0  # how long a client waits for a service it started to listen
CANCEL_SECONDS = 30.0  # how long a cancelled job may take to stop before the client stops waiting
LOG_LIMIT = 1 << 20  # bytes of service log kept when a client starts a new service


class Unresponsive(ClapsepError):
    """A service holds the socket but says nothing within :func:`protocol.silence_seconds`:
    stopped (Ctrl-Z, SIGSTOP) or hung."""


def unresponsive(during_job: bool = False) -> Unresponsive:
    """The one line that says the service fell silent, naming its pid where it recorded one."""
    pid = protocol.read_pid()
    who = f"the clapsep service (pid {pid})" if pid else "the clapsep service"
    seconds = f"{protocol.silence_seconds():g} s"
    what = (f"{who} stopped answering during the job (nothing for {seconds})" if during_job else
            f"{who} did not answer within {seconds}")
    hint = f"`kill -CONT {pid}` resumes a stopped one, `kill -KILL {pid}` ends a hung one" if pid else ""
    return Unresponsive(f"{what}: is it stopped or hung?{f' ({hint})' if hint else ''}"
                        + ("; the job there stops when it resumes: run the command again" if during_job else ""))


def connect() -> Connection | None:
    """An authenticated connection to this user's service, or None where none listens (no
    socket, or a stale one left by a service that died); :class:`Unresponsive` where one holds
    the socket but does not answer. Reads and writes on it fail with :class:`BlockingIOError`
    once the service says nothing for :func:`protocol.silence_seconds`."""
    path = protocol.socket_path()
    key = protocol.read_key()
    if key is None or not path.exists():
        return None
    silence = protocol.silence_seconds()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(silence)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except (TimeoutError, BlockingIOError):  # its queue of connections is full: it accepts none
        sock.close()
        raise unresponsive() from None
    except OSError as err:
        sock.close()
        raise ClapsepError(f"{path}: cannot reach the clapsep service ({err.strerror or err})") from None
    sock.setblocking(True)
    conn = Connection(sock.detach())
    try:
        protocol.authenticate(conn, key, server=False, seconds=silence)
    except BlockingIOError:
        conn.close()
        raise unresponsive() from None
    except (AuthenticationError, EOFError, OSError):
        conn.close()
        return None  # a service starting up under a new key, or one going away
    protocol.silence_limit(conn, silence)
    return conn


def ask(message: dict[str, Any]) -> dict[str, Any] | None:
    """Send one request and return the first reply (None where no service listens;
    :class:`Unresponsive` where it does not answer)."""
    conn = connect()
    if conn is None:
        return None
    with conn:
        try:
            protocol.send(conn, {**protocol.hello(), **message})
            return protocol.receive(conn)
        except BlockingIOError:
            raise unresponsive() from None
        except (EOFError, OSError):
            return None


def status() -> dict[str, Any] | None:
    """The running service's status (pid, version, model store, running job, queue, models,
    memory), or None where none runs."""
    reply = ask({"verb": "status"})
    if reply is None or reply.pop("event", None) != "status":
        return None
    return reply


def stop(wait: float = 35.0) -> int | None:
    """Stop the running service and wait (up to ``wait`` seconds) until it is gone; its pid,
    or None where none ran."""
    reply = ask({"verb": "stop"})
    if reply is None or reply.get("event") != "stopping":
        return None
    deadline = time.monotonic() + wait
    while protocol.socket_path().exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(reply["pid"])


def start(idle: float | None = None) -> None:
    """Start this user's service in the background unless one answers; return once it listens.
    Two clients starting it at once end with one service (the second ``clapsep serve`` finds the
    lock taken and exits 0, and its client waits for the first)."""
    if status() is not None:
        return
    log = protocol.log_path()
    if log.exists() and log.stat().st_size > LOG_LIMIT:
        log.unlink()
    command = [sys.executable, "-m", "clapsep_cli", "serve", *(["--idle", f"{idle:g}"] if idle else [])]
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if status() is not None:
            return
        if proc.poll() not in (None, 0):
            break
        time.sleep(0.05)
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise ClapsepError(f"the clapsep service did not start ({tail[0] if tail else 'no message'}; log: {log})")


def usable(mode: str, log: Callable[[str], None] | None = None) -> bool:
    """Whether jobs should go to the service in ``mode`` (:data:`SERVER_MODES`): ``auto`` when one
    runs with this clapsep's version and model store; ``require`` always (starting one if none
    runs; one of another version or store is an error); ``never`` not. A service that does not
    answer (:class:`Unresponsive`) is an error for ``require``; ``auto`` says so to ``log`` and
    runs here."""
    if mode not in SERVER_MODES:
        raise ClapsepError(f"{{setting}} must be one of {', '.join(SERVER_MODES)} (got {mode!r})", setting="server")
    if mode == "never":
        return False
    try:
        found = status()
        if found is None and mode == "require":
            start()
            found = status()
    except Unresponsive as err:
        if mode == "require":
            raise
        if log is not None:
            log(f"clapsep: {err}; running the job here instead")
        return False
    hello = protocol.hello()
    matches = found is not None and found.get("version") == __version__ and found.get("store") == hello["store"]
    if mode == "require" and not matches:
        where = f"clapsep {found.get('version')} on the model store {found.get('store')}" if found else "none"
        raise ClapsepError(f"the running clapsep service does not match this clapsep ({where}; this is clapsep "
                           f"{__version__} on {hello['store']}): stop it with `clapsep serve --stop`")
    return matches


class ServiceExecutor(api.Executor):
    """Runs planned jobs in the service (``extract`` and ``find`` as on every
    :class:`~clapsep_cli.api.Executor`): the same settings as a
    :class:`~clapsep_cli.api.Separator`, the same results (the stems are the same bytes), the
    same :class:`~clapsep_cli.api.Progress` calls. ``log`` receives what the service says while
    loading a model. Stopping the job here (Ctrl-C, or the progress raising) cancels it there."""

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", precision: str = api.DEFAULT_PRECISION,
                 overlap: float = api.DEFAULT_OVERLAP, batch_size: int | None = None,
                 log: Callable[[str], None] | None = None):
        self.settings = {"model": model, "device": device, "precision": precision,
                         "overlap": overlap, "batch_size": batch_size}
        self.log = log or (lambda _line: None)

    def run(self, job: api.Job, progress: api.Progress | None = None) -> api.Job:
        """Run the planned ``job`` in the service (its plan as it is, in this process's folder; a
        file changed since it was planned fails there) and fill in its results. A job with
        nothing to separate never contacts the service."""
        started = time.perf_counter()
        job.model, job.device, job.precision = self.settings["model"], None, None
        if job.pending:
            conn = connect()
            if conn is None:
                raise ClapsepError("no clapsep service is running (start one with `clapsep serve`)")
            with conn:
                _send_job(conn, {**protocol.hello(), "verb": "run", "client": os.getpid(), "cwd": os.getcwd(),
                                 "path": os.environ.get("PATH"), "umask": atomic.umask_bits(),
                                 "session": self.settings, "job": to_data(job)})
                _Reception(conn, job, progress, self.log).follow()
        job.total_seconds += time.perf_counter() - started
        return job


def _send_job(conn: Connection, message: dict[str, Any]) -> None:
    """Send the job; :class:`Unresponsive` where the service stopped taking it in."""
    try:
        protocol.send(conn, message)
    except BlockingIOError:
        conn.close()
        raise unresponsive() from None


class _Reception:
    """Follows one job's messages from the service into the job and its progress: each result
    once (``end_file``, or ``settled`` for a file that changed since it was planned), then what
    the run filled in (``done``). ``alive``, the service's heartbeat, only shows it lives; silence
    beyond the bound is :class:`Unresponsive`."""

    def __init__(self, conn: Connection, job: api.Job, progress: api.Progress | None,
                 log: Callable[[str], None]):
        self.conn, self.job, self.progress, self.log = conn, job, progress, log

    def follow(self) -> None:
        try:
            while not self._take(self._next()):
                pass
        except BaseException:
            if not self.conn.closed:
                self._cancel()
            raise

    def _next(self) -> dict[str, Any]:
        try:
            return protocol.receive(self.conn)
        except BlockingIOError:  # silent past the bound: hanging up cancels the job there once it runs again
            self.conn.close()
            raise unresponsive(during_job=True) from None
        except (EOFError, OSError):
            self.conn.close()
            for folder in {out.parent for r in self.job.results for out in (r.target, r.residual) if out}:
                atomic.remove_stale(folder)
            raise ClapsepError("the clapsep service stopped during the job (was it killed?); no stem it had not "
                               "finished was kept: run the command again") from None

    def _take(self, message: dict[str, Any]) -> bool:
        """Act on one message; True once the job is over."""
        event = message.get("event")
        if event == "log":
            self.log(str(message.get("line")))
        elif event in ("start_job", "start_file", "advance") and self.progress is not None:
            if event == "start_job":
                self.progress.start_job(message["files"], message["place"])
            elif event == "start_file":
                self.progress.start_file(Path(message["path"]), message["segments"], message["seconds"])
            else:
                self.progress.advance(message["segments"])
        elif event in ("end_file", "settled"):
            result = self._result(message)
            if event == "end_file" and self.progress is not None:
                self.progress.end_file(result)
        elif event == "done":
            self._ran(message)
            return True
        elif event == "cancelled":
            raise ClapsepError(f"the job was stopped in the clapsep service ({message.get('reason')})")
        elif event in ("error", "mismatch"):
            raise (protocol.error_from(message.get("error")) if event == "error" else
                   ClapsepError(f"the clapsep service cannot run this job: {message.get('reason')}"))
        return False

    def _ran(self, message: dict[str, Any]) -> None:
        """What the run filled in besides the results (:data:`~clapsep_cli.jobs.data.RUN_FIELDS`)."""
        ran = protocol.expect(protocol.decode(message.get("ran")), dict, "'ran'")
        for name in RUN_FIELDS:
            if name in ran:
                setattr(self.job, name, ran[name])

    def _result(self, message: dict[str, Any]) -> FileResult:
        """The job's result the message fills in (with what the service made of it)."""
        result = self.job.results[protocol.expect(message.get("index"), int, "'index'")]
        result.take(protocol.expect(protocol.decode(message.get("result")), FileResult, "'result'"))
        return result

    def _cancel(self) -> None:
        """Ask the service to stop the job, and take what it finished (bounded wait)."""
        try:
            protocol.send(self.conn, {"verb": "cancel"})
            deadline = time.monotonic() + CANCEL_SECONDS
            heard = time.monotonic()
            while time.monotonic() < deadline:
                if not self.conn.poll(min(1.0, max(deadline - time.monotonic(), 0.0))):
                    if time.monotonic() - heard > protocol.silence_seconds():
                        return  # stopped or hung: it cancels the job when it reads again
                    continue
                heard = time.monotonic()
                message = protocol.receive(self.conn)
                if message.get("event") in ("end_file", "settled"):
                    self._result(message)  # what it finished before it stopped
                elif message.get("event") == "done":  # it finished first
                    self._ran(message)
                    return
                elif message.get("event") in ("cancelled", "error"):
                    return
        except (EOFError, OSError, ClapsepError):
            return
