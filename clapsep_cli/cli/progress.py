"""Progress bars for jobs (rich), shown only on an interactive terminal."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from clapsep_cli.api import FileResult


def wanted(json_output: bool) -> bool:
    """Bars only when stdout is a terminal and no machine-readable output was asked for."""
    return not json_output and sys.stdout.isatty()


class RichProgress:
    """The bars of a job, local or on a cluster (:class:`clapsep_cli.api.Progress`): a per-file
    bar counting the file's 10 s segments with audio seconds processed per second, and, for
    several files or a cluster, an overall bar counting files with the audio done and the
    throughput.

    Drawn on a copy of stdout taken when it is made: while a cluster job runs, the library
    sends file descriptor 1 (Ray's notices) to stderr."""

    def __init__(self) -> None:
        self._out: TextIO | None = _terminal_copy()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
            console=Console(file=self._out or sys.stdout), transient=True)
        self._overall: TaskID | None = None
        self._file: TaskID | None = None
        self._seconds_per_segment = 0.0
        self._started = self._job_started = 0.0
        self._done = 0  # segments of the current file (task ids are not indices into rich's task list)
        self._files = 0
        self._audio = 0.0

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, err, tb)
        if self._out is not None:
            self._out.close()

    def start_job(self, files: int, place: str) -> None:
        self._job_started = time.perf_counter()
        if files > 1 or place:
            self._overall = self._progress.add_task(f"files {place}".strip(), total=files, speed="")

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        self._seconds_per_segment = seconds / max(segments, 1)
        self._started = time.perf_counter()
        self._done = 0
        self._file = self._progress.add_task(f"{path.name}, 10 s segments", total=segments, speed="")

    def advance(self, segments: int) -> None:
        if self._file is None:
            return
        self._progress.advance(self._file, segments)
        self._done += segments
        elapsed = time.perf_counter() - self._started
        speed = self._done * self._seconds_per_segment / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._file, speed=f"{speed:.1f} audio s/s")

    def end_file(self, result: FileResult) -> None:
        if self._file is not None:
            self._progress.remove_task(self._file)
            self._file = None
        self._files += 1
        if result.status == "ok" and result.rate:
            self._audio += result.frames / result.rate
        if self._overall is not None:
            elapsed = max(time.perf_counter() - self._job_started, 1e-9)
            self._progress.update(self._overall, advance=1, speed=f"{self._audio / 3600:.2f} audio h, "
                                  f"{self._files / elapsed:.2f} files/s, {self._audio / elapsed:.1f} audio s/s")


def _terminal_copy() -> TextIO | None:
    """A new stream on a duplicate of stdout's descriptor, or None if stdout has none."""
    try:
        return os.fdopen(os.dup(sys.stdout.fileno()), "w")
    except (AttributeError, OSError, ValueError):
        return None
