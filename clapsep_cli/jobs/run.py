"""Running a planned job: sources streamed through the engine into atomically written stems."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from clapsep_cli.audio import atomic
from clapsep_cli.audio.reader import peak, read_blocks
from clapsep_cli.audio.writer import StemWriter
from clapsep_cli.engine.batch import SeparationModel
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.segments import segment_count
from clapsep_cli.engine.stream import Batcher, Source
from clapsep_cli.errors import AudioError, ClapsepError
from clapsep_cli.events.detect import Detector, Event
from clapsep_cli.events.formats import EventFormat
from clapsep_cli.jobs.data import FileResult, Planned, pending
from clapsep_cli.jobs.progress import NoProgress, Progress
from clapsep_cli.network.architecture import SAMPLE_RATE


def segments_of(planned: Planned, options: EngineOptions) -> int:
    """The 10 s segments separating ``planned`` takes."""
    return segment_count(-(-(planned.last - planned.first) * SAMPLE_RATE // planned.info.rate), options)


class Runner:
    """Separates planned files with one loaded model and one ready condition, into stems or,
    for files planned with an :class:`~clapsep_cli.jobs.plan.EventPlan`, into events.

    ``condition`` is the (1, 1024) conditioning vector of the job's query; ``invert`` writes
    source minus the separated sound as the stem (and the separated sound as the residual):
    removal by subtraction.
    """

    def __init__(self, model: SeparationModel, condition: torch.Tensor, options: EngineOptions,
                 progress: Progress | None = None, invert: bool = False):
        self.model, self.condition, self.options, self.invert = model, condition, options, invert
        self.progress = progress or NoProgress()

    def run(self, planned: list[FileResult]) -> list[FileResult]:
        """Separate every pending result of :func:`~clapsep_cli.jobs.plan.plan_results` (in
        place); returns them all.

        The files' segments share the network's batches (see :class:`Batcher`): each
        stem is bit for bit what a run on its file alone writes. Files are reported to the
        progress one after another, in order; a file's ``processing_seconds`` run from the end of
        the one before it (or the start) to its own end, so together they add up to the run's.
        """
        todo = pending(planned)
        if not todo:
            return planned
        self.progress.start_job(len(todo), "")
        # An open region reads to the real end (ffmpeg's lengths may be estimates).
        sources = (Source(read_blocks(p.info, p.first, p.last if p.bounded else None), p.info.rate)
                   for p in (r.planned for r in todo if r.planned is not None))
        finding = todo[0].planned is not None and todo[0].planned.detect is not None
        batcher = Batcher(self.model, self.condition, sources, self.options, model_rate=finding)
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
                    now = time.perf_counter()
                    if todo[index].status == "ok":
                        todo[index].seconds = now - last_end
                    last_end = now
                    self.progress.end_file(todo[index])
                    current = None  # done with: a progress that stops the job in start_file leaves nothing open
                    index, current = self._begin(todo, index + 1, batcher)
            except BaseException:
                if current is not None:
                    current.abort()
                    self.progress.end_file(todo[index])
                raise
        return planned

    def _begin(self, todo: list[FileResult], index: int, batcher: Batcher
               ) -> tuple[int, _FileRun | _FileFind | None]:
        """Open the stems of ``todo[index]`` (or, where that fails, of the next file that can)."""
        while index < len(todo):
            result = todo[index]
            p = result.planned
            assert p is not None
            self.progress.start_file(result.input, segments_of(p, self.options), (p.last - p.first) / p.info.rate)
            try:
                return index, _FileFind(result.input, p) if p.detect else _FileRun(result.input, p, self.invert)
            except ClapsepError as err:
                result.settle("failed", err)
                batcher.drop(index)
                self.progress.end_file(result)
            index += 1
        return index, None


class _FileRun:
    """One file's stems being written: atomic writers, the source's peak and length."""

    def __init__(self, source: Path, p: Planned, invert: bool):
        self.source, self.invert = source, invert
        info, overwrite, tag = p.info, p.overwrite, p.tag
        self.writers = [StemWriter(p.target, info.rate, info.channels, p.fmt, p.clip, overwrite, tag)]
        if p.residual is not None:
            try:
                self.writers.append(StemWriter(p.residual, info.rate, info.channels, p.fmt, p.clip,
                                                        overwrite, f"{tag} residual"))
            except BaseException:
                self.abort()
                raise
        self.peak = 0.0
        self.frames = 0
        self.gate = None if p.gate is None else _Gate(p)

    def write(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for target, src in pairs:
            self.peak = max(self.peak, peak(src))
            self.frames += len(target)
            if self.gate is not None:  # written when the events are known
                self.gate.push(target, src)
            else:
                self._write(target, src)

    def _write(self, target: np.ndarray, src: np.ndarray) -> None:
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
        if self.gate is not None:
            result.events = self.gate.finish()
            for target, src in self.gate.gated():
                self._write(target, src)
        for w in self.writers:
            w.commit()
        result.status = "ok"
        result.frames = self.frames
        result.clipped_samples = sum(w.clipped for w in self.writers)
        if any(w.gain != 1.0 for w in self.writers):
            result.extra["rescale_gain"] = [w.gain for w in self.writers]

    def abort(self) -> None:
        if self.gate is not None:
            self.gate.close()
        for w in self.writers:
            w.abort()


GATE_FADE = 0.05  # seconds of raised-cosine fade outside each event's edges


class _Gate:
    """A stem kept only inside its events: the separated sound is spooled to an unnamed
    temporary file (gone with the process, whatever ends it) while its events are found at the
    file's rate; then it is read back block by block beside the source, read again, and faded
    in before each event and out after it. Memory stays flat; the spool takes the stem's
    length in float32 on disk."""

    def __init__(self, p: Planned):
        assert p.gate is not None and p.target is not None
        self.planned = p
        self.detector = Detector(p.gate, p.tag, offset=p.first / p.info.rate, rate=p.info.rate)
        self.spool = tempfile.TemporaryFile(dir=p.target.parent)
        self.events: list[Event] = []

    def push(self, target: np.ndarray, src: np.ndarray) -> None:
        self.events += self.detector.push(target, src)
        np.ascontiguousarray(target, np.float32).tofile(self.spool)

    def finish(self) -> list[Event]:
        self.events += self.detector.finish()
        return self.events

    def gated(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(estimate inside the events, source) blocks, in order."""
        p, rate = self.planned, self.planned.info.rate
        self.spool.seek(0)
        done = passed = 0  # frames given; events wholly before the current block
        try:
            for src in read_blocks(p.info, p.first, p.first + self.detector.samples):
                target = np.fromfile(self.spool, np.float32, src.size).reshape(src.shape)
                times = (done + np.arange(len(src))) / rate + p.first / rate
                while passed < len(self.events) and self.events[passed].end + GATE_FADE < times[0]:
                    passed += 1
                yield target * gate(self.events[passed:], times)[:, None], src
                done += len(src)
        finally:
            self.close()

    def close(self) -> None:
        self.spool.close()


def gate(events: list[Event], times: np.ndarray) -> np.ndarray:
    """The gain at ``times`` (seconds, sorted) of ``events`` (in order, as found): 1 inside an
    event, a raised-cosine fade over :data:`GATE_FADE` before and after it, 0 elsewhere."""
    out = np.zeros(len(times))
    if not len(times):
        return out
    for e in events:
        if e.start - GATE_FADE > times[-1]:
            break  # this one and all later ones begin after these times
        if e.end + GATE_FADE < times[0]:
            continue
        ramp = np.clip(np.minimum(times - (e.start - GATE_FADE), (e.end + GATE_FADE) - times) / GATE_FADE, 0, 1)
        out = np.maximum(out, np.sin(0.5 * np.pi * ramp) ** 2)
    return out


class _FileFind:
    """One file's events being found from 32 kHz (estimate, mixture) pairs, written
    (atomically) when the file is done."""

    def __init__(self, source: Path, p: Planned):
        assert p.detect is not None
        self.source, self.planned = source, p
        self.detector = Detector(p.detect, p.tag, offset=p.first / p.info.rate)
        self.events: list[Event] = []

    def write(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for target, mixture in pairs:
            self.events += self.detector.push(target, mixture)

    def commit(self, result: FileResult) -> None:
        """Find the last events, write the events file where one is planned; record the outcome."""
        if self.detector.samples == 0:
            raise AudioError(f"{self.source}: contains no audio")
        self.events += self.detector.finish()
        p = self.planned
        if p.target is not None:
            assert isinstance(p.fmt, EventFormat)
            try:
                atomic.write_text(p.target, p.fmt.render(self.events, self.source, p.tag), p.overwrite)
            except FileExistsError:
                raise ClapsepError(f"{p.target}: appeared while finding ({{setting}} replaces it)",
                                   setting="overwrite") from None
            except OSError as err:
                raise AudioError(f"{p.target}: cannot write ({err.strerror or err})") from None
        result.status = "ok"
        result.frames = p.last - p.first
        result.events = self.events

    def abort(self) -> None:
        pass
