"""Extraction jobs: many files, one query, one model load; the library behind ``clapsep extract``.

Each file is probed, its stem (and residual) names planned, existing stems skipped unless
overwriting, then separated by the streaming engine into temporary files that are renamed
into place only when complete. A failing file is recorded and the job goes on.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clapsep_cli import audio_io, engine
from clapsep_cli.config import SAMPLE_RATE
from clapsep_cli.errors import AudioError, ClapsepError
from clapsep_cli.queries import EmbeddingCache, Query, condition

DEFAULT_NAME = "{stem}.{query}.{ext}"
NAME_FIELDS = ("stem", "query", "ext", "name", "suffix")


class Progress(Protocol):
    """Receives progress of a job (the CLI draws bars; the library default ignores it)."""

    def start_file(self, path: Path, segments: int, seconds: float) -> None: ...

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
            except (KeyError, IndexError, ValueError) as err:
                raise ClapsepError(f"bad --name template {self.name_template!r}: fields are "
                                   f"{', '.join('{' + f + '}' for f in NAME_FIELDS)} ({err})") from None
            if not name or "/" in name or name in (".", ".."):
                raise ClapsepError(f"bad --name template {self.name_template!r}: it must give a file name")
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


@dataclass
class FileResult:
    """Outcome for one input."""

    input: Path
    status: str = "pending"  # ok | skipped | failed
    target: Path | None = None
    residual: Path | None = None
    error: str | None = None
    rate: int | None = None
    channels: int | None = None
    offset_frames: int = 0
    frames: int = 0
    seconds: float = 0.0
    clipped_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": str(self.input), "status": self.status}
        if self.target:
            out["target"] = str(self.target)
        if self.residual:
            out["residual"] = str(self.residual)
        if self.error:
            out["error"] = self.error
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


def collect_inputs(paths: Iterable[Path], pattern: str | None = None) -> tuple[list[Path], frozenset[Path]]:
    """Files named directly, plus files found under named folders (recursively, hidden entries
    skipped, sorted) that match ``pattern`` or, without one, have an audio file extension.

    Returns (inputs in order, the subset found by scanning folders).
    """
    out: list[Path] = []
    scanned: set[Path] = set()
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
                out.append(Path(root) / name)
                scanned.add(Path(root) / name)
    return list(dict.fromkeys(out)), frozenset(scanned)


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

    def run(self, inputs: list[Path], scanned: frozenset[Path] = frozenset()) -> list[FileResult]:
        """Separate each input. Files found by scanning folders (``scanned``) that are this
        job's own outputs, an earlier run's stems, are skipped rather than separated again."""
        own_outputs = set()
        for path in scanned:
            fmt = audio_io.choose_format_for_name(path, self.plan.fmt, self.plan.bit_depth)
            if fmt is not None:
                own_outputs.update(p for p in self.plan.paths(path, self.query, fmt) if p is not None)
        results = []
        for path in inputs:
            if path in own_outputs:
                results.append(FileResult(path, "skipped", error="is a stem written by this command"))
            else:
                results.append(self.run_one(path))
        return results

    def run_one(self, source: Path) -> FileResult:
        result = FileResult(source)
        try:
            self._separate(source, result)
        except ClapsepError as err:
            result.status, result.error = "failed", str(err)
        return result

    def _separate(self, source: Path, result: FileResult) -> None:
        info = audio_io.probe(source)
        first, last = self.region.frames(info)
        fmt = audio_io.choose_format(info, self.plan.fmt, self.plan.bit_depth)
        clip = audio_io.resolve_clip(self.plan.clip, fmt)
        target_path, residual_path = self.plan.paths(source, self.query, fmt)
        _refuse_source_overwrite(source, [target_path, residual_path])
        result.rate, result.channels, result.offset_frames = info.rate, info.channels, first
        existing = [p for p in (target_path, residual_path) if p is not None and p.exists()]
        if existing and not self.plan.overwrite:
            result.status, result.target, result.residual = "skipped", target_path, residual_path
            result.error = f"{existing[0]} exists (pass --overwrite to replace it)"
            return
        writers = [audio_io.StemWriter(target_path, info.rate, info.channels, fmt, clip, self.plan.overwrite)]
        if residual_path is not None:
            writers.append(audio_io.StemWriter(residual_path, info.rate, info.channels, fmt, clip, self.plan.overwrite))
        start = time.perf_counter()
        samples32 = -(-(last - first) * SAMPLE_RATE // info.rate)
        self.progress.start_file(source, engine.segment_count(samples32, self.options), (last - first) / info.rate)
        try:
            peak = 0.0
            frames = 0
            stop = None if self.region.end is None else last  # to the real end (ffmpeg lengths are estimates)
            stream = engine.separate_stream(self.model, self.condition, audio_io.read_blocks(info, first, stop),
                                            info.rate, self.options, self.progress.advance)
            for target, src in stream:
                peak = max(peak, float(np.max(np.abs(src))))
                frames += len(target)
                stem = src - target if self.invert else target
                writers[0].write(stem)
                if residual_path is not None:
                    writers[1].write(src - stem)
            if frames == 0:
                raise AudioError(f"{source}: contains no audio")
            if peak == 0.0:
                raise AudioError(f"{source}: is digital silence; there is nothing to extract")
            for w in writers:
                w.commit()
        except BaseException:
            for w in writers:
                w.abort()
            raise
        finally:
            self.progress.end_file()
        result.status, result.target, result.residual = "ok", target_path, residual_path
        result.frames, result.seconds = frames, time.perf_counter() - start
        result.clipped_samples = sum(w.clipped for w in writers)
        if any(w.gain != 1.0 for w in writers):
            result.extra["rescale_gain"] = [w.gain for w in writers]


def _refuse_source_overwrite(source: Path, outputs: list[Path | None]) -> None:
    src = source.resolve()
    for out in outputs:
        if out is not None and out.resolve() == src:
            raise ClapsepError(f"{out}: refusing to write over the source file")
