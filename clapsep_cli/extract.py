"""Extraction jobs: many files, one query, one model load; the library behind ``clapsep extract``.

Planning comes first and needs no model: every file is probed, its stem (and residual) paths
planned, existing stems marked skipped unless overwriting, and the whole job refused if two
inputs would write one path or a stem would land on an input. Then the planned files are
separated by the streaming engine, short files sharing the network's batches, into temporary
files renamed into place only when complete.
A failing file (unreadable, a write error such as a full disk) is recorded and the job goes on.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clapsep_cli import atomic, audio_io, engine
from clapsep_cli.architecture import SAMPLE_RATE
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.queries import EmbeddingCache, Query, condition

DEFAULT_NAME = "{stem}.{query}.{ext}"
NAME_FIELDS = {
    "stem": "the source's name without its extension",
    "query": "the query's tag (a preset's suffix, else the texts)",
    "ext": "the stem format's extension",
    "name": "the source's full file name",
    "suffix": "the source's extension, without the dot",
}


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


@dataclass(frozen=True)
class OutputPlan:
    """Where a source's stems go and how they are written."""

    name_template: str = DEFAULT_NAME
    out_dir: Path | None = None
    output: Path | None = None  # exact target path (single input only)
    residual: bool = False
    fmt: str | None = None
    bit_depth: str | None = None
    clip: str | None = None
    overwrite: bool = False

    def paths(self, source: Path, query: Query, fmt: audio_io.OutputFormat) -> tuple[Path, Path | None]:
        """(target path, residual path or None) for ``source``."""
        if self.output is not None:
            target = self.output
        else:
            fields = {"stem": source.stem, "query": query.slug(), "ext": fmt.extension, "name": source.name,
                      "suffix": source.suffix.lstrip(".")}
            try:
                name = self.name_template.format(**fields)
            except (KeyError, IndexError, ValueError, AttributeError) as err:
                raise SettingError("name_template", f"{self.name_template!r} is not a usable template: fields are "
                                   f"{', '.join('{' + f + '}' for f in NAME_FIELDS)} ({err})") from None
            if not name or "/" in name or name in (".", ".."):
                raise SettingError("name_template", f"{self.name_template!r} must give a file name")
            target = (self.out_dir or source.parent) / name
        residual = None
        if self.residual:
            stem = target.name[: -len(target.suffix)] if target.suffix else target.name
            residual = target.with_name(f"{stem}.residual{target.suffix}")
        return target, residual


# How far past a source's length a region may end (seconds); such ends are clamped to the length.
# Editors measure compressed sources with their own decoders, whose lengths can differ from the
# one clapsep decodes by an encoder delay or padding (an MP3 or AAC frame or two).
END_TOLERANCE = 0.1


@dataclass(frozen=True)
class Region:
    """A part of a source, in seconds; ``end`` None means to the end."""

    start: float = 0.0
    end: float | None = None

    def frames(self, info: audio_io.AudioInfo) -> tuple[int, int]:
        first = int(round(self.start * info.rate))
        last = info.frames if self.end is None else int(round(self.end * info.rate))
        if self.end is not None and self.end <= self.start:
            raise ClapsepError(f"region end ({self.end:g} s) must come after its start ({self.start:g} s)")
        if first >= info.frames:
            raise AudioError(f"{info.path}: region starts at {self.start:g} s, after the end of the file "
                             f"({info.duration:.3f} s)")
        if self.end is not None and last > info.frames and self.end - info.duration <= END_TOLERANCE:
            last = info.frames
        if self.end is not None and last > info.frames:
            raise AudioError(f"{info.path}: region ends at {self.end:g} s, after the end of the file "
                             f"({info.duration:.3f} s)")
        return first, last


@dataclass(frozen=True)
class Planned:
    """One input, probed, with its outputs decided: what separating it needs besides the model."""

    info: audio_io.AudioInfo
    first: int
    last: int
    fmt: audio_io.OutputFormat
    clip: str
    target: Path
    residual: Path | None


@dataclass
class FileResult:
    """Outcome for one input."""

    input: Path
    status: str = "pending"  # ok | skipped | failed
    target: Path | None = None
    residual: Path | None = None
    error: str | None = None
    problem: ClapsepError | None = field(default=None, repr=False)
    rate: int | None = None
    channels: int | None = None
    offset_frames: int = 0
    frames: int = 0
    seconds: float = 0.0
    clipped_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    planned: Planned | None = field(default=None, repr=False)

    def settle(self, status: str, problem: ClapsepError) -> None:
        """Mark the result failed or skipped, for the reason ``problem``."""
        self.status, self.problem, self.error = status, problem, str(problem)

    def message(self, name: Callable[[str], str] = str) -> str | None:
        """Why it failed or was skipped, naming settings by ``name`` (see :meth:`ClapsepError.render`)."""
        return self.problem.render(name) if self.problem else self.error

    def to_json(self, name: Callable[[str], str] = str) -> dict[str, Any]:
        out: dict[str, Any] = {"input": str(self.input), "status": self.status}
        if self.target:
            out["target"] = str(self.target)
        if self.residual:
            out["residual"] = str(self.residual)
        if self.error:
            out["error"] = self.message(name)
        if self.rate:
            out.update({
                "rate": self.rate, "channels": self.channels,
                "offset": {"frames": self.offset_frames, "seconds": self.offset_frames / self.rate},
                "frames": self.frames, "duration": self.frames / self.rate,
                "processing_seconds": round(self.seconds, 3),
                "realtime_factor": round(self.frames / self.rate / self.seconds, 2) if self.seconds else None,
            })
        if self.clipped_samples:
            out["clipped_samples"] = self.clipped_samples
        out.update(self.extra)
        return out


def collect_inputs(paths: Iterable[Path], pattern: str | None = None,
                   include_stems: bool = False) -> tuple[list[Path], list[Path]]:
    """Files named directly, plus files found under named folders (recursively, hidden entries
    skipped, sorted) that match ``pattern`` or, without one, have an audio file extension.
    Stems clapsep wrote (tagged, see :func:`audio_io.is_stem`) found in folders are left out
    unless ``include_stems``; a file named directly is always taken.

    Returns (inputs in order, stems left out).
    """
    out: list[Path] = []
    stems: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or (pattern and not fnmatch.fnmatch(name, pattern)):
                    continue
                if pattern is None and Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                found = Path(root) / name
                if not include_stems and audio_io.is_stem(found):
                    stems.append(found)
                else:
                    out.append(found)
    return list(dict.fromkeys(out)), stems


def check_query_audio(query: Query) -> None:
    """Probe the query's reference clips (one clear line if one is missing or not audio)."""
    for ref in (*query.positive_audio, *query.negative_audio):
        audio_io.probe(ref.path)


def plan_file(source: Path, query: Query, plan: OutputPlan, region: Region) -> Planned:
    """Probe ``source`` and decide its outputs."""
    info = audio_io.probe(source)
    first, last = region.frames(info)
    fmt = audio_io.choose_format(info, plan.fmt, plan.bit_depth)
    clip = audio_io.resolve_clip(plan.clip, fmt)
    target, residual = plan.paths(source, query, fmt)
    _refuse_source_overwrite(source, [target, residual])
    return Planned(info, first, last, fmt, clip, target, residual)


def plan_job(inputs: list[Path], query: Query, plan: OutputPlan, region: Region) -> list[FileResult]:
    """A result per input: ``failed`` (bad input), ``skipped`` (its stems exist) or ``pending``
    with its plan. Refuses the whole job (:class:`ClapsepError`) if two inputs would write one
    path, or a stem to be written is one of the inputs. Our temporary files that killed runs
    left in the output folders are removed (see :func:`atomic.remove_stale`)."""
    results = []
    for source in inputs:
        result = FileResult(source)
        try:
            planned = plan_file(source, query, plan, region)
        except ClapsepError as err:
            result.settle("failed", err)
            results.append(result)
            continue
        result.target, result.residual = planned.target, planned.residual
        result.rate, result.channels, result.offset_frames = planned.info.rate, planned.info.channels, planned.first
        existing = [p for p in (planned.target, planned.residual) if p is not None and p.exists()]
        if existing and not plan.overwrite:
            exists = ClapsepError(f"{existing[0]} exists ({{setting}} replaces it)", setting="overwrite")
            result.settle("skipped", exists)
        else:
            result.planned = planned
        results.append(result)
    _refuse_collisions(results)
    for folder in {out.parent for r in results if r.planned for out in (r.target, r.residual) if out is not None}:
        atomic.remove_stale(folder)
    return results


def _refuse_collisions(results: list[FileResult]) -> None:
    writers: dict[Path, Path] = {}
    for r in results:
        for out in (r.target, r.residual):
            if out is None:
                continue
            key = out.resolve()
            if key in writers:
                raise ClapsepError(f"{writers[key]} and {r.input} would both write {out}; nothing was written "
                                   "(give a {setting} that tells them apart, e.g. \"{name}.{query}.{ext}\")",
                                   setting="name_template")
            writers[key] = r.input
    sources = {r.input.resolve(): r.input for r in results}
    for r in results:
        for out in (r.target, r.residual) if r.planned else ():
            if out is not None and out.resolve() in sources:
                raise ClapsepError(f"{out}: is also an input of this job; refusing to write over it")


AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".rf64",
                  ".caf", ".au", ".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka"}


class Extractor:
    """Runs one query over many files with one loaded model."""

    def __init__(self, model: Any, query: Query, options: engine.EngineOptions, plan: OutputPlan,
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

        The files' segments share the network's batches (see :class:`engine.Batcher`): each
        stem is bit for bit what a run on its file alone writes. Files are reported to the
        progress one after another, in order; a file's ``processing_seconds`` run from the end of
        the one before it (or the start) to its own end, so together they add up to the run's.
        """
        todo = [r for r in planned if r.status == "pending" and r.planned is not None]
        if not todo:
            return planned
        stop = self.region.end is not None  # to the real end (ffmpeg lengths may be estimates)
        sources = (engine.Source(audio_io.read_blocks(p.info, p.first, p.last if stop else None), p.info.rate)
                   for p in (r.planned for r in todo if r.planned is not None))
        batcher = engine.Batcher(self.model, self.condition, sources, self.options)
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

    def _begin(self, todo: list[FileResult], index: int, batcher: engine.Batcher) -> tuple[int, _FileRun | None]:
        """Open the stems of ``todo[index]`` (or, where that fails, of the next file that can)."""
        while index < len(todo):
            result = todo[index]
            p = result.planned
            assert p is not None
            samples32 = -(-(p.last - p.first) * SAMPLE_RATE // p.info.rate)
            self.progress.start_file(result.input, engine.segment_count(samples32, self.options),
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
        self.writers = [audio_io.StemWriter(p.target, info.rate, info.channels, p.fmt, p.clip, overwrite, label)]
        if p.residual is not None:
            try:
                self.writers.append(audio_io.StemWriter(p.residual, info.rate, info.channels, p.fmt, p.clip,
                                                        overwrite, f"{label} residual"))
            except BaseException:
                self.abort()
                raise
        self.peak = 0.0
        self.frames = 0

    def write(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for target, src in pairs:
            self.peak = max(self.peak, audio_io.peak(src))
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


def _refuse_source_overwrite(source: Path, outputs: list[Path | None]) -> None:
    src = source.resolve()
    for out in outputs:
        if out is not None and out.resolve() == src:
            raise ClapsepError(f"{out}: refusing to write over the source file")
