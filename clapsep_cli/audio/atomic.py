"""Atomic file writes: a unique hidden temporary file beside the destination, renamed into place.

A temporary file is named ``.<destination name>.clapsep-<pid>-<random>.part``; the process
writing it holds a lock on ``<that name>.lock`` beside it (:class:`filelock.FileLock`: ``flock``
on POSIX systems, ``LockFileEx`` on Windows, both released by the system when the process dies)
from before the temporary file exists until after it is gone. The lock is a file of its own,
holding nothing, because Windows locks are mandatory: a lock on the temporary file itself would
stop its own writer's other handles. A killed job leaves both files behind; :func:`remove_stale`
deletes the ones no live process owns (lock free and the pid in the name not running here), and
nothing else. Published files get the mode any new file gets under the user's umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filelock import BaseFileLock

TEMP_RE = re.compile(r"^\..+\.clapsep-(\d+)-[A-Za-z0-9_]+\.part$")
LOCK_SUFFIX = ".lock"  # a temporary file's lock is the file of its name plus this
_WINDOWS = sys.platform == "win32"


def umask_bits() -> int:
    """The process's umask (read by setting and restoring it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_mode() -> int:
    """Permissions a new regular file gets from the current umask (0o666 & ~umask)."""
    return 0o666 & ~umask_bits()


def normal_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes new folders and files get under the umask."""
    umask = umask_bits()
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def lock_of(path: Path) -> Path:
    """The lock file of the temporary file ``path``."""
    return path.with_name(path.name + LOCK_SUFFIX)


def file_lock(path: Path) -> BaseFileLock:
    """An OS-level lock on ``path`` (made if missing, owner-only), for one owner whatever the
    thread, taken with ``acquire(blocking=False)``; not re-entrant across instances, so two of the
    same path conflict even in one process. Released when its process dies (unlike a
    :class:`filelock.SoftFileLock`). ``filelock`` is imported here, on first use."""
    from filelock import FileLock

    return FileLock(str(path), mode=0o600, thread_local=False)


class TempFile:
    """A locked, uniquely named temporary file beside ``dest``; :meth:`publish` or :meth:`discard` it."""

    def __init__(self, dest: Path):
        self.dest = dest
        self._lock, self.path = _claim(dest)

    def publish(self, overwrite: bool) -> None:
        """Move the finished file to ``dest``; without ``overwrite`` an existing ``dest`` is kept
        and :class:`FileExistsError` raised (the temporary file is removed either way)."""
        try:
            if overwrite:
                os.replace(self.path, self.dest)
            else:
                try:
                    os.link(self.path, self.dest)
                except FileExistsError:
                    raise
                except OSError:  # no hard links here (some network/FAT file systems)
                    if self.dest.exists():
                        raise FileExistsError(str(self.dest)) from None
                    os.replace(self.path, self.dest)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary file (if still there), then release and remove its lock."""
        self.path.unlink(missing_ok=True)
        if self._lock is not None:
            lock, self._lock = self._lock, None
            _drop(lock)


def _claim(dest: Path) -> tuple[BaseFileLock, Path]:
    """A held lock on a new uniquely named lock file beside ``dest``, and the empty temporary file
    it guards (made after the lock is held, so a temporary file whose lock is free has no writer)."""
    from filelock import Timeout

    prefix = f".{dest.name}.clapsep-{os.getpid()}-"
    for _ in range(100):
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".part" + LOCK_SUFFIX, dir=dest.parent)
        os.close(fd)
        lock = file_lock(Path(name))
        try:
            lock.acquire(blocking=False)
        except Timeout:
            continue  # a cleaner took this new lock file for a dead writer's: it removes it; take another name
        except NotImplementedError as err:  # a file system without locks (filelock before 4 says so this way)
            Path(name).unlink(missing_ok=True)
            raise OSError(errno.ENOLCK, f"cannot lock a temporary file here ({err})", name) from None
        path = Path(name.removesuffix(LOCK_SUFFIX))
        try:
            if not os.path.exists(name):
                raise FileExistsError  # a cleaner removed it just before this lock was taken: take another name
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            _drop(lock)
            continue
        except BaseException:
            _drop(lock)
            raise
        return lock, path
    raise OSError(errno.EEXIST, "no free name for a temporary file", str(dest.parent))


def _drop(lock: BaseFileLock) -> None:
    """Release ``lock`` and remove its file (on POSIX systems while still held, so nobody can
    take the lock of a file about to go; Windows refuses that, and removes it after)."""
    path = Path(lock.lock_file)
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
    lock.release()
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """A unique temporary path beside ``path`` to write to: moved to ``path`` when the block
    ends without an error, removed otherwise (see :meth:`TempFile.publish` for ``overwrite``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = TempFile(path)
    try:
        yield tmp.path
        tmp.publish(overwrite)
    finally:
        tmp.discard()


def write_text(path: Path, text: str, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half of it); see
    :meth:`TempFile.publish` for ``overwrite``."""
    with writing(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine. It is never signalled on Windows, where
    :func:`os.kill` ends a process whatever the signal: there it is opened and asked whether
    it has exited."""
    if _WINDOWS:
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's
    return True


def _windows_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    if not 0 < pid <= 0xFFFFFFFF:
        return False
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it runs, as another user's
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def remove_stale(folder: Path) -> list[Path]:
    """Delete our temporary files in ``folder`` that no live process owns; returns them."""
    return _remove_unlocked(folder, lambda match: not _alive(int(match.group(1))))


def remove_abandoned(dest: Path) -> list[Path]:
    """Delete the temporary files of ``dest`` that no process holds locked, whichever process
    (on whichever machine) wrote them: for a job whose writers have all finished, such as one
    whose workers ran elsewhere and a killed one left its file. Returns them."""
    prefix = f".{dest.name}.clapsep-"
    return _remove_unlocked(dest.parent, lambda match: match.string.startswith(prefix))


def _remove_unlocked(folder: Path, wanted: Callable[[re.Match[str]], bool]) -> list[Path]:
    """Remove the ``wanted`` temporary files in ``folder`` whose lock is free, with their locks,
    and free locks left without their temporary file; returns the temporary files removed."""
    removed: list[Path] = []
    try:
        entries = {entry.name: entry for entry in os.scandir(folder)}
    except OSError:
        return removed
    for name, entry in entries.items():
        part = name.removesuffix(LOCK_SUFFIX)
        match = TEMP_RE.match(part)
        if (not match or not entry.is_file(follow_symlinks=False) or not wanted(match)
                or (part != name and part in entries)):  # a lock beside its temporary file goes with it
            continue
        if _remove_if_free(Path(folder) / part) and part == name:
            removed.append(Path(folder) / part)
    return removed


def _remove_if_free(part: Path) -> bool:
    """Remove the temporary file ``part`` and its lock if nobody holds the lock; whether it did."""
    from filelock import Timeout

    lock_path = lock_of(part)
    try:
        if not stat.S_ISREG(lock_path.lstat().st_mode):
            return False  # not a lock of ours (a link, say): left alone
    except FileNotFoundError:
        pass  # never locked or already unlocked: taking the lock makes it
    except OSError:
        return False
    lock = file_lock(lock_path)
    try:
        lock.acquire(blocking=False)
    except (Timeout, OSError, NotImplementedError):
        return False  # held: a live writer (perhaps on another machine) owns it; or not ours to lock
    try:
        part.unlink(missing_ok=True)
    except OSError:
        lock.release()
        return False
    _drop(lock)
    return True
