"""What a running job reports as it goes: the :class:`Progress` protocol every executor
calls (local, Ray, the service) and every front end implements, and :class:`Cancelled`, which a
progress raises to stop the job. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from clapsep_cli.jobs.data import FileResult


class Cancelled(Exception):
    """Nobody waits for the job any more (its client cancelled or hung up, the service stops, the
    REAPER action was stopped): raised from a :class:`Progress` call, it stops the job before its
    next file or segment; the message says why."""


class Progress(Protocol):
    """Receives a job's progress, local or on a cluster (the CLI draws bars, the editors write
    labels and logs; the library default ignores it). A job first calls ``start_job``, then
    reports its files one after another: ``start_file``, any number of ``advance``,
    ``end_file``. A cluster reports each file as it finishes on a worker, all three calls at
    once."""

    def start_job(self, files: int, place: str) -> None:
        """``files`` are to be separated; ``place`` is ``""`` in this process, else where they
        run (``"on 2 Ray workers"``)."""

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        """``segments``: the 10 s network segments ``path`` takes; ``seconds``: its audio length."""

    def advance(self, segments: int) -> None:
        """``segments`` more of the current file's segments are separated."""

    def end_file(self, result: FileResult) -> None:
        """The current file is done: ``result`` says how (ok, failed, or still pending when the
        job was stopped)."""


class NoProgress:
    def start_job(self, files: int, place: str) -> None:
        pass

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        pass

    def advance(self, segments: int) -> None:
        pass

    def end_file(self, result: FileResult) -> None:
        pass
