"""Running a planned job: sources streamed through the engine into atomically written stems."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clapsep_cli.audio.reader import peak, read_blocks
from clapsep_cli.audio.writer import StemWriter
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.segments import segment_count
from clapsep_cli.engine.stream import Batcher, Source
from clapsep_cli.errors import AudioError, ClapsepError
from clapsep_cli.jobs.plan import FileResult, OutputPlan, Planned, Region, plan_job
from clapsep_cli.network.architecture import SAMPLE_RATE
from clapsep_cli.queries.embedding import EmbeddingCache, condition
from clapsep_cli.queries.spec import Query


class Progress(Protocol):
    """Receives progress of a job (the CLI draws bars; the library default ignores it)."""

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        """``segments``: the 10 s network segments ``path`` takes; ``seconds``: its audio length."""

    def advance(self, segments: int) -> None: ...

    def end_file(self) -> None: ...


class NoProgress:
    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        pass

    def advance(self, segments: int) -> None:
        pass

    def end_file(self) -> None:
        pass


class Extractor:
    """Runs one query over many files with one loaded model."""

    def __init__(self, model: Any, query: Query, options: EngineOptions, plan: OutputPlan,
                 cache: EmbeddingCache, region: Region | None = None, progress: Progress | None = None,
                 invert: bool = False):
        """``invert`` writes source minus the separated sound as the stem (and the separated
        sound as the residual): removal by subtraction."""
        self.model, self.query, self.options, self.plan, self.invert = model, query, options, plan, invert
        self.region = region or Region()
        self.progress = progress or NoProgress()
        t0 = time.perf_counter()
        self.condition = condition(model, query, cache, model.cfg.joint_embed_dim)
        self.query_seconds = time.perf_counter() - t0

    def run(self, planned: list[FileResult]) -> list[FileResult]:
        """Separate every pending result of :func:`plan_job` (in place); returns them all.

        The files' segments share the network's batches (see :class:`Batcher`): each
        stem is bit for bit what a run on its file alone writes. Files are reported to the
        progress one after another, in order; a file's ``processing_seconds`` run from the end of
        the one before it (or the start) to its own end, so together they add up to the run's.
        """
        todo = [r for r in planned if r.status == "pending" and r.planned is not None]
        if not todo:
            return planned
        stop = self.region.end is not None  # to the real end (ffmpeg lengths may be estimates)
        sources = (Source(read_blocks(p.info, p.first, p.last if stop else None), p.info.rate)
                   for p in (r.planned for r in todo if r.planned is not None))
        batcher = Batcher(self.model, self.condition, sources, self.options)
        last_end = time.perf_counter()
        with contextlib.closing(iter(batcher)) as outputs:
            index, current = self._begin(todo, 0, batcher)
            try:
                for out in outputs:
                    assert current is not None and out.index == index, "outputs come file by file"
                    try:
                        if out.error is not None:
                            raise out.error
                        current.write(out.pairs)
                        if out.segments:
                            self.progress.advance(out.segments)
                        if not out.done:
                            continue
                        current.commit(todo[index])
                    except ClapsepError as err:  # this file fails, the others go on
                        current.abort()
                        todo[index].settle("failed", err)
                        batcher.drop(index)
                    self.progress.end_file()
                    now = time.perf_counter()
                    if todo[index].status == "ok":
                        todo[index].seconds = now - last_end
                    last_end = now
                    index, current = self._begin(todo, index + 1, batcher)
            except BaseException:
                if current is not None:
                    current.abort()
                    self.progress.end_file()
                raise
        return planned

    def run_one(self, source: Path) -> FileResult:
        """Plan and separate one file."""
        try:
            result = plan_job([source], self.query, self.plan, self.region)[0]
        except ClapsepError as err:
            result = FileResult(source)
            result.settle("failed", err)
            return result
        return self.run([result])[0]

    def _begin(self, todo: list[FileResult], index: int, batcher: Batcher) -> tuple[int, _FileRun | None]:
        """Open the stems of ``todo[index]`` (or, where that fails, of the next file that can)."""
        while index < len(todo):
            result = todo[index]
            p = result.planned
            assert p is not None
            samples32 = -(-(p.last - p.first) * SAMPLE_RATE // p.info.rate)
            self.progress.start_file(result.input, segment_count(samples32, self.options),
                                     (p.last - p.first) / p.info.rate)
            try:
                return index, _FileRun(result.input, p, self.plan.overwrite, self.query.slug(), self.invert)
            except ClapsepError as err:
                result.settle("failed", err)
                batcher.drop(index)
                self.progress.end_file()
            index += 1
        return index, None


class _FileRun:
    """One file's stems being written: atomic writers, the source's peak and length."""

    def __init__(self, source: Path, p: Planned, overwrite: bool, label: str, invert: bool):
        self.source, self.invert = source, invert
        info = p.info
        self.writers = [StemWriter(p.target, info.rate, info.channels, p.fmt, p.clip, overwrite, label)]
        if p.residual is not None:
            try:
                self.writers.append(StemWriter(p.residual, info.rate, info.channels, p.fmt, p.clip,
                                                        overwrite, f"{label} residual"))
            except BaseException:
                self.abort()
                raise
        self.peak = 0.0
        self.frames = 0

    def write(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for target, src in pairs:
            self.peak = max(self.peak, peak(src))
            self.frames += len(target)
            stem = src - target if self.invert else target
            self.writers[0].write(stem)
            if len(self.writers) > 1:
                self.writers[1].write(src - stem)

    def commit(self, result: FileResult) -> None:
        """Check what was written and rename the stems into place; record the outcome."""
        if self.frames == 0:
            raise AudioError(f"{self.source}: contains no audio")
        if self.peak == 0.0:
            raise AudioError(f"{self.source}: is digital silence; there is nothing to extract")
        for w in self.writers:
            w.commit()
        result.status = "ok"
        result.frames = self.frames
        result.clipped_samples = sum(w.clipped for w in self.writers)
        if any(w.gain != 1.0 for w in self.writers):
            result.extra["rescale_gain"] = [w.gain for w in self.writers]

    def abort(self) -> None:
        for w in self.writers:
            w.abort()
