"""A stand-in for Audacity's mod-script-pipe: its two FIFOs in a test folder, served by a thread.

Like Audacity, the server opens the command FIFO for reading, then the reply FIFO for writing,
answers each command line, and after the client leaves deletes and re-creates both FIFOs. An
answer is the reply text, or a list of pieces: bytes to write, pauses (seconds) and ``CLOSE``
(Audacity going away in mid-reply).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clapsep_cli.bridges.audacity.pipe import PipePaths

CLOSE = object()
Piece = bytes | float | object
Answer = str | list[Piece]


def ok(output: str = "") -> str:
    """A successful reply as Audacity writes it."""
    return f"{output}\nBatchCommand finished: OK\n\n"


def failed(output: str = "") -> str:
    return f"{output}\nBatchCommand finished: Failed!\n\n"


def greeting(answer: Callable[[str], Answer]) -> Callable[[str], Answer]:
    """``answer``, with clapsep's greeting (``Message: Text=...``) echoed as Audacity does."""
    def answering(command: str) -> Answer:
        if command.startswith("Message: Text="):
            return ok(command.partition("=")[2])
        return answer(command)
    return answering


class FakeAudacity:
    """Serves ``answer(command)`` on FIFOs in ``folder`` until :meth:`stop`."""

    def __init__(self, folder: Path, answer: Callable[[str], Answer]):
        self.paths = PipePaths(folder / "to", folder / "from", folder / "lock")
        self.answer = answer
        self.commands: list[str] = []
        self.clients = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeAudacity:
        self._make_fifos()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        try:  # wake the server from opening the command FIFO
            os.close(os.open(self.paths.to_audacity, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the fake Audacity did not stop"

    def _make_fifos(self) -> None:
        for path in (self.paths.to_audacity, self.paths.from_audacity):
            path.unlink(missing_ok=True)
            os.mkfifo(path, 0o600)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            with open(self.paths.to_audacity, "rb") as commands:
                replies = self._open_replies()
                if replies is None:
                    return
                self.clients += 1
                try:
                    for line in commands:
                        command = line.decode().rstrip("\n")
                        self.commands.append(command)
                        if not self._write(replies, self.answer(command)):
                            break
                finally:
                    os.close(replies)
            self._make_fifos()

    def _open_replies(self) -> int | None:
        """Open the reply FIFO once the client has (None when stopping instead)."""
        while not self._stopping.is_set():
            try:
                return os.open(self.paths.from_audacity, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
                time.sleep(0.005)
        return None

    @staticmethod
    def _write(fd: int, answer: Answer) -> bool:
        """Write one answer; False when it says to close the connection."""
        os.set_blocking(fd, True)
        for piece in [answer.encode()] if isinstance(answer, str) else answer:
            if piece is CLOSE:
                return False
            if isinstance(piece, float):
                time.sleep(piece)
            else:
                assert isinstance(piece, bytes)
                os.write(fd, piece)
        return True
