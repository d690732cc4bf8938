"""Progress bars for jobs (rich), shown only on an interactive terminal."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from clapsep_cli.jobs.plan import FileResult


def wanted(json_output: bool) -> bool:
    """Bars only when stdout is a terminal and no machine-readable output was asked for."""
    return not json_output and sys.stdout.isatty()


class RichProgress:
    """A per-file bar counting the file's 10 s segments, with audio seconds processed per
    second, and (for several files) an overall bar counting files."""

    def __init__(self, files: int):
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
            console=Console(stderr=False), transient=True)
        self._overall = self._progress.add_task("files", total=files, speed="") if files > 1 else None
        self._file: TaskID | None = None
        self._seconds_per_segment = 0.0
        self._started = 0.0
        self._done = 0  # segments of the current file (task ids are not indices into rich's task list)

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, err, tb)

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
        done = self._done
        elapsed = time.perf_counter() - self._started
        speed = done * self._seconds_per_segment / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._file, speed=f"{speed:.1f} audio s/s")

    def end_file(self) -> None:
        if self._file is not None:
            self._progress.remove_task(self._file)
            self._file = None
        if self._overall is not None:
            self._progress.advance(self._overall, 1)


class ClusterBar:
    """Files done on a cluster, with audio hours done and throughput (files and audio per second).

    Drawn on a copy of the terminal's stdout taken when it is made: while the job runs, the
    library sends file descriptor 1 (Ray's notices) to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=Console(file=self._out, force_terminal=True), transient=True)
        self._task: TaskID | None = None
        self._started = 0.0
        self._audio = 0.0

    def __enter__(self) -> ClusterBar:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, err, tb)
        self._out.close()

    def start(self, files: int, workers: int) -> None:
        self._started = time.perf_counter()
        self._task = self._progress.add_task(f"files on {workers} Ray workers", total=files, stats="")

    def file_done(self, result: FileResult) -> None:
        if self._task is None:
            return
        if result.rate:
            self._audio += result.frames / result.rate
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        done = self._progress.tasks[0].completed + 1
        self._progress.update(self._task, advance=1, stats=f"{self._audio / 3600:.2f} audio h, "
                              f"{done / elapsed:.2f} files/s, {self._audio / elapsed:.1f} audio s/s")
