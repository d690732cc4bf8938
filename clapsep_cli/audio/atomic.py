"""Atomic file writes: a unique hidden temporary file beside the destination, renamed into place.

A temporary file is named ``.<destination name>.clapsep-<pid>-<random>.part`` and is locked
(``flock``, on POSIX systems) by the process writing it for as long as it exists. A killed job leaves such a file
behind; :func:`remove_stale` deletes the ones no live process owns (lock free and the pid in the
name not running here), and nothing else. Published files get the mode any new file gets under
the user's umask, not the owner-only mode of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: temporary files are not locked, and stale ones are left for the user
    fcntl = None  # type: ignore[assignment]

TEMP_RE = re.compile(r"^\..+\.clapsep-(\d+)-[A-Za-z0-9_]+\.part$")


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


class TempFile:
    """A locked, uniquely named temporary file beside ``dest``; :meth:`publish` or :meth:`discard` it."""

    def __init__(self, dest: Path):
        self.dest = dest
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.clapsep-{os.getpid()}-", suffix=".part", dir=dest.parent)
        self.path = Path(name)
        self._lock_fd = fd
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, default_mode())
        else:
            os.chmod(name, default_mode())

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
        """Remove the temporary file (if still there) and release its lock."""
        self.path.unlink(missing_ok=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    removed: list[Path] = []
    if fcntl is None:  # without locks a live writer cannot be told from a dead one
        return removed
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_RE.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False) or not wanted(match):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # locked: a live writer (perhaps on another machine) owns it
        finally:
            os.close(fd)
    return removed
