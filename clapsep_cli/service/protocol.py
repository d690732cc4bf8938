"""The service's wire: where it listens, how a client proves it is the service's user, and how
jobs, results and errors travel. Torch-free: a client imports only this and the plan's types.

Transport: a Unix domain socket in the user's runtime folder (platformdirs; the folder is the
user's alone, mode 0700, and the socket 0600), framed and authenticated by the standard
library's :mod:`multiprocessing.connection`: length-prefixed messages and its HMAC
challenge-response in both directions, with a 32-byte key in a 0600 file beside the socket that
the service writes anew each time it starts. Payloads are JSON (never pickles: a message that
passed the handshake is still only data), at most :data:`MAX_MESSAGE` bytes; jobs, results and
errors in them are in the job's one plain-data form (:func:`~clapsep_cli.jobs.data.to_data`),
which decodes only into the job's own types (:data:`~clapsep_cli.jobs.data.WIRE_TYPES`) and
errors keep their class.

A ``run`` request carries the planned job (its results with their plans); the service runs that
plan and sends each result back once, as its file ends (``end_file``), or before the run where
the file changed since it was planned (``settled``); ``done`` carries only what the run filled
in besides (:data:`~clapsep_cli.jobs.data.RUN_FIELDS`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import stat
import struct
import sys
import warnings
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

import platformdirs

from clapsep_cli import __version__
from clapsep_cli.errors import ClapsepError
from clapsep_cli.jobs.data import from_data

PROTOCOL = 2
MAX_MESSAGE = 1 << 24  # bytes; a planned job of thousands of files fits, a larger message is refused
HANDSHAKE_SECONDS = 10.0  # a peer that says nothing for this long during the handshake is dropped
SILENCE_SECONDS = 10.0  # a client takes a service that says nothing for this long for stopped or hung
SILENCE_ENV = "CLAPSEP_SERVICE_TIMEOUT"  # seconds, instead of SILENCE_SECONDS
HEARTBEAT_SECONDS = 1.0  # while a client's job waits or runs, the service says it is alive this often


class ProtocolError(ClapsepError):
    """A message that is not one of the service's: not JSON, too large, of the wrong shape."""


# --- where -------------------------------------------------------------------------------------

def runtime_dir() -> Path:
    """The user's runtime folder for the service (``$XDG_RUNTIME_DIR/clapsep`` on Linux, from
    platformdirs), made if missing; refused unless this user owns it, nobody else may enter it
    and nobody else may replace it (its parent is closed to others' writes, or sticky as /tmp is)."""
    with warnings.catch_warnings():  # platformdirs warns when it falls back to /tmp/runtime-<uid>
        warnings.simplefilter("ignore")
        folder = Path(platformdirs.user_runtime_dir("clapsep"))
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    _check_private(folder, directory=True)
    parent = folder.parent.stat()
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        raise ClapsepError(f"{folder.parent}: others may write in it, so they could replace {folder.name}/; "
                           "the clapsep service will not use it")
    return folder


def _check_private(path: Path, directory: bool) -> None:
    info = path.lstat()
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok or (hasattr(os, "getuid") and info.st_uid != os.getuid()) or info.st_mode & 0o077:
        raise ClapsepError(f"{path}: must be this user's own {'folder' if directory else 'file'}, closed to "
                           "others (mode 0700 for a folder, 0600 for a file); the clapsep service will not use it")


def socket_path() -> Path:
    path = runtime_dir() / "service.sock"
    if len(os.fsencode(path)) >= 104:  # sun_path holds 104 bytes on macOS, 108 on Linux
        raise ClapsepError(f"{path}: too long a path for a socket (set XDG_RUNTIME_DIR to a shorter folder)")
    return path


def key_path() -> Path:
    return runtime_dir() / "service.key"


def lock_path() -> Path:
    return runtime_dir() / "service.lock"


def log_path() -> Path:
    return runtime_dir() / "service.log"


def pid_path() -> Path:
    """The running service's pid, beside its lock (never read from inside the locked file)."""
    return runtime_dir() / "service.pid"


def write_pid() -> None:
    """Record this process as the service (under a temporary name, then renamed)."""
    path = pid_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def read_pid() -> int | None:
    """The pid the service recorded, or None (none recorded, or unreadable)."""
    try:
        return int(pid_path().read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def write_key() -> bytes:
    """A new key, written (mode 0600 from the start) under a temporary name, then renamed."""
    key = secrets.token_bytes(32)
    path = key_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.hex().encode())
    os.replace(tmp, path)
    return key


def read_key() -> bytes | None:
    """The running service's key, or None if there is none (refused if others could read it)."""
    path = key_path()
    try:
        _check_private(path, directory=False)
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # being written or damaged: no usable service


# --- connections -------------------------------------------------------------------------------

def silence_seconds() -> float:
    """How long a client waits for the service to say anything before taking it for stopped or
    hung: :data:`SILENCE_SECONDS`, or ``$CLAPSEP_SERVICE_TIMEOUT``; never under two heartbeats."""
    try:
        seconds = float(os.environ.get(SILENCE_ENV) or SILENCE_SECONDS)
    except ValueError:
        return SILENCE_SECONDS
    return max(seconds, 2 * HEARTBEAT_SECONDS) if math.isfinite(seconds) else SILENCE_SECONDS


def receive_timeout(conn: Connection, seconds: float) -> None:
    """Reads on ``conn`` fail after ``seconds`` of silence (0: wait for ever), at the socket level."""
    _socket_timeouts(conn, seconds, send=False)


def silence_limit(conn: Connection, seconds: float) -> None:
    """Reads and writes on ``conn`` fail with :class:`BlockingIOError` once the peer has taken
    nothing or said nothing for ``seconds``: a stopped or hung peer cannot hold this end for ever."""
    _socket_timeouts(conn, seconds, send=True)


def _socket_timeouts(conn: Connection, seconds: float, send: bool) -> None:
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        if send:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    finally:
        sock.close()


def authenticate(conn: Connection, key: bytes, server: bool, seconds: float = HANDSHAKE_SECONDS) -> None:
    """Mutual HMAC challenge-response over ``conn`` (the service challenges first, as
    :class:`multiprocessing.connection.Listener` does), each step within ``seconds``. Raises
    :class:`AuthenticationError`; :class:`BlockingIOError` where the peer fell silent."""
    receive_timeout(conn, seconds)
    if server:
        deliver_challenge(conn, key)
        answer_challenge(conn, key)
    else:
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
    receive_timeout(conn, 0)


def send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, ensure_ascii=False).encode("utf-8"))


def receive(conn: Connection) -> dict[str, Any]:
    """The next message; :class:`ProtocolError` for one that is too large or not a JSON object,
    :class:`EOFError` or :class:`OSError` when the peer is gone."""
    try:
        data = conn.recv_bytes(MAX_MESSAGE)
    except OSError as err:
        if "bad message length" in str(err):
            raise ProtocolError(f"a message larger than {MAX_MESSAGE} bytes was refused") from None
        raise
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"a message that is not UTF-8 JSON was refused ({err})") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def hello() -> dict[str, Any]:
    """What every request carries, so a service of another version or model store says so."""
    from clapsep_cli.models.store import store_root

    return {"protocol": PROTOCOL, "version": __version__, "store": str(store_root()), "python": sys.version}


# --- values ------------------------------------------------------------------------------------

def decode(data: Any) -> Any:
    """:func:`~clapsep_cli.jobs.data.from_data`; :class:`ProtocolError` for data that is not one
    of the job's types or does not fit it."""
    try:
        return from_data(data)
    except ValueError as err:
        raise ProtocolError(f"in a message: {err}") from None


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind`` (a boolean only where ``kind`` says so), else
    :class:`ProtocolError` naming ``what``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ProtocolError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def error_from(data: Any) -> ClapsepError:
    """The error an ``error`` message carries, of its own class (any message, for a bad one)."""
    try:
        err = from_data(data)
    except (ValueError, ClapsepError):
        err = None
    return err if isinstance(err, ClapsepError) else ClapsepError(f"the clapsep service failed ({data!r})")
