"""Planning a job: inputs found, probed and checked, every output decided, before any model."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapsep_cli.audio import atomic
from clapsep_cli.audio.reader import AudioInfo, is_stem, probe
from clapsep_cli.audio.writer import OutputFormat, choose_format, resolve_clip
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.queries.spec import Query

DEFAULT_NAME = "{stem}.{query}.{ext}"


NAME_FIELDS = {
    "stem": "the source's name without its extension",
    "query": "the query's tag (a preset's suffix, else the texts)",
    "ext": "the stem format's extension",
    "name": "the source's full file name",
    "suffix": "the source's extension, without the dot",
}


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

    def paths(self, source: Path, query: Query, fmt: OutputFormat) -> tuple[Path, Path | None]:
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

    def frames(self, info: AudioInfo) -> tuple[int, int]:
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

    info: AudioInfo
    first: int
    last: int
    fmt: OutputFormat
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
    Stems clapsep wrote (tagged, see :func:`is_stem`) found in folders are left out
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
                if not include_stems and is_stem(found):
                    stems.append(found)
                else:
                    out.append(found)
    return list(dict.fromkeys(out)), stems


def check_query_audio(query: Query) -> None:
    """Probe the query's reference clips (one clear line if one is missing or not audio)."""
    for ref in (*query.positive_audio, *query.negative_audio):
        probe(ref.path)


def plan_file(source: Path, query: Query, plan: OutputPlan, region: Region) -> Planned:
    """Probe ``source`` and decide its outputs."""
    info = probe(source)
    first, last = region.frames(info)
    fmt = choose_format(info, plan.fmt, plan.bit_depth)
    clip = resolve_clip(plan.clip, fmt)
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


def _refuse_source_overwrite(source: Path, outputs: list[Path | None]) -> None:
    src = source.resolve()
    for out in outputs:
        if out is not None and out.resolve() == src:
            raise ClapsepError(f"{out}: refusing to write over the source file")
