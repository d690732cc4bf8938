"""The warm service (``clapsep serve``): one process per user that keeps models loaded and runs
the jobs of every client (the command line, the Audacity and REAPER bridges) one after another,
in order of arrival, streaming their progress back.

Each connection is one request (after the handshake, see :mod:`.protocol`): ``status``, ``stop``
or ``run``. A ``run`` carries a job its client planned; it is queued, and one worker thread runs
the jobs in turn, each in its client's folder and with its client's ``PATH``, through a
:class:`~clapsep_cli.api.Separator` kept per model, device and precision. The client's plan is
run as it is: only what can have changed since is checked (each file's size and modification
time, :func:`~clapsep_cli.jobs.plan.unchanged`). While its job waits or runs, the client may send
``cancel``; a client that hangs up cancels it too; the service says ``alive`` to it every
:data:`~.protocol.HEARTBEAT_SECONDS`, so a client can tell a stopped or hung service from a
long job. A bad request gets an error reply and costs only its own connection.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import AuthenticationError, Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clapsep_cli import __version__, api
from clapsep_cli.audio.atomic import file_lock
from clapsep_cli.errors import ClapsepError
from clapsep_cli.jobs.data import RUN_FIELDS, Planned, to_data
from clapsep_cli.jobs.plan import unchanged
from clapsep_cli.service import protocol
from clapsep_cli.service.protocol import ProtocolError, expect

if TYPE_CHECKING:
    from filelock import BaseFileLock

DEFAULT_IDLE = 15 * 60.0  # seconds without a job before the service exits and gives its memory back
STOP_SECONDS = 30.0  # how long a stopping service waits for its running job to stop
POLL = 0.25  # seconds between checks of the stop flag, the idle clock and a client's cancel


class AlreadyRunning(ClapsepError):
    """Another service holds this user's lock."""


@dataclass
class Ticket:
    """A queued or running job and the connection its client waits on."""

    conn: Connection
    request: dict[str, Any]
    client: int | None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: dict[str, Any]) -> None:
        """Send to the client; a client that is gone cancels its job (the send never raises)."""
        with self.lock:
            try:
                protocol.send(self.conn, message)
            except (OSError, ValueError):
                self.cancel("the client hung up")

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise api.Cancelled(self.reason)

    def describe(self) -> dict[str, Any]:
        spec = self.request.get("job", {})
        return {"client": self.client, "items": len(spec.get("results", [])), "queued_at": self.queued_at,
                "started_at": self.started_at}


class WireProgress:
    """A job's :class:`~clapsep_cli.api.Progress`, sent to its client (each file's result once,
    with ``end_file``); it stops the job (raises :class:`~clapsep_cli.api.Cancelled`) before the
    next file or segment once the client cancelled."""

    def __init__(self, ticket: Ticket, job: api.Job):
        self.ticket = ticket
        self.index = {id(r): i for i, r in enumerate(job.results)}

    def start_job(self, files: int, place: str) -> None:
        self.ticket.check()
        self.ticket.send({"event": "start_job", "files": files, "place": place})

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        self.ticket.check()
        self.ticket.send({"event": "start_file", "path": str(path), "segments": segments, "seconds": seconds})

    def advance(self, segments: int) -> None:
        self.ticket.check()
        self.ticket.send({"event": "advance", "segments": segments})

    def end_file(self, result: api.FileResult) -> None:
        self.ticket.send({"event": "end_file", "index": self.index[id(result)], "result": to_data(result)})


class Service:
    """The service of this user: :meth:`serve` until stopped or idle for ``idle`` seconds.
    ``say`` receives what the service reports about itself (its log)."""

    def __init__(self, idle: float = DEFAULT_IDLE, say: Callable[[str], None] = lambda _line: None):
        self.idle, self.say = idle, say
        self.started = time.time()
        self.last_active = time.monotonic()
        self.stopping = threading.Event()
        self.queue: queue.Queue[Ticket] = queue.Queue()
        self.waiting: list[Ticket] = []  # queued, in order (the queue itself cannot be listed)
        self.current: Ticket | None = None
        self.sessions: dict[tuple[Any, ...], api.Separator] = {}
        self.jobs_done = 0
        self.connections = 0  # being answered now: the service is not idle while one is open
        self.counting = threading.Lock()
        self.key = b""
        self.store = ""

    # --- life ------------------------------------------------------------------------------

    def serve(self) -> None:
        """Take this user's lock (else :class:`AlreadyRunning`), listen, and serve until
        stopped (``stop``, SIGTERM, Ctrl-C) or idle; then remove the socket and the key."""
        from clapsep_cli.models.store import store_root

        lock = _take_lock()
        path = protocol.socket_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if path.exists() or path.is_symlink():
                path.unlink()  # we hold the lock: a socket here was left by a service that died
                self.say(f"removed the stale socket {path}")
            self.key = protocol.write_key()
            self.store = str(store_root())
            old_mask = os.umask(0o177)
            try:
                listener.bind(str(path))
            finally:
                os.umask(old_mask)
            listener.listen(64)
            listener.settimeout(POLL)
            self.say(f"clapsep {__version__} service (pid {os.getpid()}) listening on {path}; model store "
                     f"{self.store}; exits after {self.idle:g} s idle")
            threading.Thread(target=self._work, name="clapsep-worker", daemon=True).start()
            with _stop_on_sigterm(self.stopping):
                self._accept(listener)
        finally:
            listener.close()
            self._drain("the clapsep service stopped")
            deadline = time.monotonic() + STOP_SECONDS
            while self.current is not None and time.monotonic() < deadline:
                time.sleep(0.02)  # the running job stops at its next segment and removes its temporary files
            for leftover in (path, protocol.key_path(), protocol.pid_path()):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            lock.release()
            self.say("stopped")

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            busy = self.current is not None or self.waiting or self.connections
            if not busy and time.monotonic() - self.last_active > self.idle:
                self.say(f"idle for {self.idle:g} s: exiting")
                return
            try:
                sock, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            sock.setblocking(True)
            with self.counting:
                self.connections += 1
            threading.Thread(target=self._handle, args=(Connection(sock.detach()),), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.cancel("the clapsep service was stopped")

    def _drain(self, reason: str) -> None:
        """Tell every waiting client that its job will not run."""
        if self.current is not None:
            self.current.cancel(reason)
        while True:
            try:
                ticket = self.queue.get_nowait()
            except queue.Empty:
                return
            ticket.send({"event": "error", "error": to_data(ClapsepError(reason))})
            ticket.done.set()

    # --- requests --------------------------------------------------------------------------

    def _handle(self, conn: Connection) -> None:
        try:
            self._answer(conn)
        finally:
            with self.counting:
                self.connections -= 1

    def _answer(self, conn: Connection) -> None:
        with conn:
            try:
                protocol.authenticate(conn, self.key, server=True)
                protocol.receive_timeout(conn, protocol.HANDSHAKE_SECONDS)
                message = protocol.receive(conn)
                protocol.receive_timeout(conn, 0)
            except (AuthenticationError, EOFError, OSError):
                return  # not our user, or gone
            except ProtocolError as err:
                _reply(conn, {"event": "error", "error": to_data(err)})
                return
            try:
                self._dispatch(conn, message)
            except ProtocolError as err:
                _reply(conn, {"event": "error", "error": to_data(err)})
            except Exception as err:  # noqa: BLE001 - one request's failure, the service goes on
                self.say(traceback.format_exc())
                _reply(conn, {"event": "error", "error": to_data(_internal(err))})

    def _dispatch(self, conn: Connection, message: dict[str, Any]) -> None:
        verb = message.get("verb")
        if message.get("protocol") != protocol.PROTOCOL or message.get("version") != __version__:
            _reply(conn, {"event": "mismatch", "reason": f"the service is clapsep {__version__} "
                          f"(protocol {protocol.PROTOCOL})"})
            return
        if verb == "status":
            _reply(conn, {"event": "status", **self.status()})
        elif verb == "stop":
            _reply(conn, {"event": "stopping", "pid": os.getpid()})
            self.say("stop requested")
            self.stop()
        elif verb == "run":
            if message.get("store") != self.store:
                _reply(conn, {"event": "mismatch", "reason": f"the service uses the model store {self.store}"})
                return
            self._submit(conn, message)
        else:
            raise ProtocolError(f"unknown request {verb!r} (the service knows status, stop and run)")

    def _submit(self, conn: Connection, message: dict[str, Any]) -> None:
        """Queue a job, then wait for it, passing on a cancel (or the client hanging up)."""
        expect(message.get("job"), dict, "'job'")
        client = message.get("client")
        ticket = Ticket(conn, message, client if isinstance(client, int) and not isinstance(client, bool) else None)
        if self.stopping.is_set():
            raise ProtocolError("the clapsep service is stopping")
        self.waiting.append(ticket)
        self.last_active = time.monotonic()
        self.queue.put(ticket)
        ticket.send({"event": "queued", "ahead": len(self.waiting) - 1 + (self.current is not None)})
        beat = time.monotonic()
        while not ticket.done.wait(POLL):
            beat = _heartbeat(ticket, beat)
            try:
                if conn.poll(0) and protocol.receive(conn).get("verb") == "cancel":
                    ticket.cancel("cancelled by the client")
            except (EOFError, OSError):
                ticket.cancel("the client hung up")
                ticket.done.wait()
            except ProtocolError:
                pass  # anything but a cancel is ignored while the job runs

    # --- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            ticket = self.queue.get()
            with contextlib.suppress(ValueError):
                self.waiting.remove(ticket)
            if self.stopping.is_set():
                ticket.send({"event": "error", "error": to_data(ClapsepError("the clapsep service stopped"))})
                ticket.done.set()
                continue
            self.current, ticket.started_at = ticket, time.time()
            try:
                ticket.send(self._run(ticket))
            finally:
                self.current = None
                self.jobs_done += 1
                self.last_active = time.monotonic()
                ticket.done.set()

    def _run(self, ticket: Ticket) -> dict[str, Any]:
        """Run one planned job; the message that ends it (done, cancelled or error). Each result
        goes to the client once: a file changed since it was planned fails before the run
        (``settled``), the others as they end (``end_file``)."""
        try:
            ticket.check()
            session = self._session(expect(ticket.request.get("session"), dict, "'session'"))
            with _client_context(ticket.request):
                job = _job(ticket.request.get("job"))
                for index, result in enumerate(job.results):
                    if result.status == "pending" and not unchanged(result):
                        ticket.send({"event": "settled", "index": index, "result": to_data(result)})
                session.run(job, WireProgress(ticket, job))
            return {"event": "done", "ran": to_data({name: getattr(job, name) for name in RUN_FIELDS})}
        except api.Cancelled as why:
            self.say(f"job of client {ticket.client} cancelled: {why}")
            return {"event": "cancelled", "reason": str(why)}
        except ClapsepError as err:
            return {"event": "error", "error": to_data(err)}
        except Exception as err:  # noqa: BLE001 - one job's failure, the service goes on
            self.say(traceback.format_exc())
            return {"event": "error", "error": to_data(_internal(err))}

    def _session(self, wanted: dict[str, Any]) -> api.Separator:
        """The separator for these settings: one per model, device and precision, shared by every
        engine setting (loaded on its first job)."""
        model = expect(wanted.get("model"), str, "'session.model'")
        device = expect(wanted.get("device"), str, "'session.device'")
        precision = expect(wanted.get("precision"), str, "'session.precision'")
        overlap = float(expect(wanted.get("overlap", api.DEFAULT_OVERLAP), (int, float), "'session.overlap'"))
        batch_size = wanted.get("batch_size")
        if batch_size is not None:
            expect(batch_size, int, "'session.batch_size'")
        key = (model, device, precision, overlap, batch_size)
        self._forget_replaced(model)
        if key not in self.sessions:
            base = next((s for k, s in self.sessions.items() if k[:3] == key[:3]), None)
            self.sessions[key] = (base.with_engine(overlap, batch_size) if base is not None else
                                  api.Separator(model, device=device, precision=precision, overlap=overlap,
                                                batch_size=batch_size, log=self._log))
        return self.sessions[key]

    def _forget_replaced(self, model: str) -> None:
        """Drop the loaded copies of ``model`` if the store now holds another (reinstalled,
        retrained or removed since it was loaded): the next job loads what is installed."""
        from clapsep_cli.models.store import get_model

        loaded = [k for k, s in self.sessions.items() if k[0] == model and s.loaded]
        if not loaded:
            return
        try:
            installed = get_model(model).fingerprint
        except ClapsepError:
            installed = None
        if installed != self.sessions[loaded[0]].model.installed.fingerprint:
            self.say(f"model {model!r} changed in the store: loading it again")
            for k in [k for k in self.sessions if k[0] == model]:
                del self.sessions[k]

    def _log(self, line: str) -> None:
        """What loading a model says (a download) goes to the client whose job asked for it."""
        self.say(line)
        if (current := self.current) is not None:
            current.send({"event": "log", "line": line})

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "store": self.store, "started": self.started,
                "idle_exit": self.idle, "idle_for": round(time.monotonic() - self.last_active, 1)
                if self.current is None else 0.0,
                "running": self.current.describe() if self.current else None,
                "queued": [t.describe() for t in list(self.waiting)],
                "models": [{"model": s.model_name, "device": str(s.device), "precision": s.precision,
                            "overlap": s.options.overlap, "batch_size": s.options.batch_size, "loaded": s.loaded}
                           for s in list(self.sessions.values())],
                "jobs_done": self.jobs_done, "rss_bytes": resident_bytes()}


def _job(data: Any) -> api.Job:
    """The planned job a ``run`` request carries, checked for the types the run relies on."""
    job = expect(protocol.decode(expect(data, dict, "'job'")), api.Job, "'job'")
    expect(job.request, api.Request, "'request'")
    expect(job.request.query, api.Query, "'request.query'")
    expect(job.plan, (api.OutputPlan, api.EventPlan), "'plan'")
    for result in expect(job.results, list, "'results'"):
        expect(result, api.FileResult, "a result")
        expect(result.input, Path, "a result's input")
        if result.status == "pending":
            expect(result.planned, Planned, "a pending result's plan")
    return job


def _internal(err: Exception) -> ClapsepError:
    return ClapsepError(f"internal error in the clapsep service ({type(err).__name__}: {err})")


def _heartbeat(ticket: Ticket, last: float) -> float:
    """Tell the job's client that the service lives, if :data:`protocol.HEARTBEAT_SECONDS` have
    passed since ``last`` (a client takes silence for a stopped or hung service, however long
    the job waits or a step takes); when it last did."""
    now = time.monotonic()
    if now - last < protocol.HEARTBEAT_SECONDS:
        return last
    ticket.send({"event": "alive"})
    return now


def _reply(conn: Connection, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):
        protocol.send(conn, message)


@contextlib.contextmanager
def _client_context(request: dict[str, Any]) -> Iterator[None]:
    """The job runs in its client's folder (relative paths mean what they meant there), with its
    ``PATH`` (where it finds ffmpeg) and its umask (the modes its stems get); only the worker
    thread touches these, one job at a time."""
    cwd = expect(request.get("cwd"), str, "'cwd'")
    path = request.get("path")
    umask = expect(request.get("umask", 0o022), int, "'umask'") & 0o777
    saved = os.environ.get("PATH")
    try:
        os.chdir(cwd)
    except OSError as err:
        raise ClapsepError(f"{cwd}: the client's folder cannot be entered ({err.strerror or err})") from None
    if isinstance(path, str):
        os.environ["PATH"] = path
    old_mask = os.umask(umask)
    try:
        yield
    finally:
        os.umask(old_mask)
        os.chdir("/")
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


def _take_lock() -> BaseFileLock:
    """This user's service lock, held until released or the process ends (then by the system),
    and its pid recorded beside it; :class:`AlreadyRunning` if another service holds it."""
    from filelock import Timeout

    lock = file_lock(protocol.lock_path())
    try:
        lock.acquire(blocking=False)
    except Timeout:
        pid = protocol.read_pid()
        raise AlreadyRunning(f"a clapsep service is already running{f' (pid {pid})' if pid else ''}") from None
    try:
        protocol.write_pid()
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def _stop_on_sigterm(stopping: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
