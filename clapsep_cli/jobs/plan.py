"""Planning a job: inputs found, probed and checked, every output decided, before any model."""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapsep_cli.audio import atomic
from clapsep_cli.audio.reader import AudioInfo, is_stem, probe
from clapsep_cli.audio.region import Region
from clapsep_cli.audio.writer import OutputFormat, choose_format, resolve_clip
from clapsep_cli.errors import ClapsepError, SettingError
from clapsep_cli.events.detect import DetectOptions, Event
from clapsep_cli.events.formats import EVENT_FORMATS, EventFormat
from clapsep_cli.models.store import DEFAULT_MODEL
from clapsep_cli.queries.request import Request
from clapsep_cli.queries.spec import Query

DEFAULT_NAME = "{stem}.{query}.{ext}"
NAME_FIELDS = {
    "stem": "the source's name without its extension",
    "query": "the query's tag (a preset's suffix, else the texts)",
    "ext": "the output format's extension",
    "name": "the source's full file name",
    "suffix": "the source's extension, without the dot",
}


def output_path(template: str, out_dir: Path | None, source: Path, query: Query, extension: str) -> Path:
    """The file ``template`` (fields: :data:`NAME_FIELDS`) names for ``source``, in ``out_dir``
    (default: beside the source)."""
    fields = {"stem": source.stem, "query": query.slug(), "ext": extension, "name": source.name,
              "suffix": source.suffix.lstrip(".")}
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        raise SettingError("name_template", f"{template!r} is not a usable template: fields are "
                           f"{', '.join('{' + f + '}' for f in NAME_FIELDS)} ({err})") from None
    if not name or "/" in name or name in (".", ".."):
        raise SettingError("name_template", f"{template!r} must give a file name")
    return (out_dir or source.parent) / name


@dataclass(frozen=True)
class OutputPlan:
    """Where a source's stems go and how they are written.

    ``name_template``: the stem's file name from :data:`NAME_FIELDS` (default
    :data:`DEFAULT_NAME`), in ``out_dir`` (default: beside the source); ``output``: one exact
    stem path (a single input only); ``residual``: also write the rest of the source beside the
    stem; ``fmt`` (a key of :data:`~clapsep_cli.audio.writer.FORMATS`), ``bit_depth`` (``16``,
    ``24`` or ``32f``) and ``clip`` (``rescale``, ``clamp`` or ``none``): chosen from the source
    where None; ``overwrite``: replace existing stems instead of skipping their source;
    ``where``: keep the separated sound only inside the events these options find in it (with
    short fades), silence elsewhere (None: everywhere).
    """

    name_template: str = DEFAULT_NAME
    out_dir: Path | None = None
    output: Path | None = None  # exact target path (single input only)
    residual: bool = False
    fmt: str | None = None
    bit_depth: str | None = None
    clip: str | None = None
    overwrite: bool = False
    where: DetectOptions | None = None

    def paths(self, source: Path, query: Query, fmt: OutputFormat, output: Path | None = None
              ) -> tuple[Path, Path | None]:
        """(target path, residual path or None) for ``source``; ``output`` (else the plan's
        own) names the target exactly."""
        target = output or self.output or output_path(self.name_template, self.out_dir, source, query, fmt.extension)
        residual = None
        if self.residual:
            stem = target.name[: -len(target.suffix)] if target.suffix else target.name
            residual = target.with_name(f"{stem}.residual{target.suffix}")
        return target, residual


@dataclass(frozen=True)
class EventPlan:
    """How a source's events are found and where they are written.

    ``detect``: how scores become events; ``fmt``: a key of
    :data:`~clapsep_cli.events.formats.EVENT_FORMATS`, the file written for each source (None:
    none, the events are in the results); ``name_template``, ``out_dir``, ``output`` and
    ``overwrite`` as for an :class:`OutputPlan` (``{ext}`` is the format's extension, such as
    ``labels.txt``).
    """

    detect: DetectOptions = field(default_factory=DetectOptions)
    fmt: str | None = None
    name_template: str = DEFAULT_NAME
    out_dir: Path | None = None
    output: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in EVENT_FORMATS:
            raise SettingError("fmt", f"must be one of {', '.join(EVENT_FORMATS)} (got {self.fmt!r})")
        if self.fmt is None and (self.output or self.out_dir):
            raise SettingError("fmt", "is needed with an output file or folder: it names the events file's format")

    @property
    def format(self) -> EventFormat | None:
        return EVENT_FORMATS[self.fmt] if self.fmt else None

    def path(self, source: Path, query: Query, output: Path | None = None) -> Path | None:
        """The events file for ``source`` (None when no format is written)."""
        fmt = self.format
        if fmt is None:
            return None
        return output or self.output or output_path(self.name_template, self.out_dir, source, query, fmt.extension)


@dataclass(frozen=True)
class Item:
    """One input of a job: a file, with its own region and its own stem path where it has them
    (else the job's). Editors submit one job of many items, windows of one file among them."""

    path: Path
    region: Region | None = None
    output: Path | None = None


@dataclass(frozen=True)
class Planned:
    """One input, probed, with its outputs decided: all that separating it needs besides the
    model and the condition. ``bounded``: the region has an end (read up to it, not to the
    decoder's end); ``label`` tags the stems' metadata and names the events. Stems have a
    format and a clip policy (and ``gate``, to keep the sound only where it is found); events
    have ``detect``, and a format where a file is written."""

    info: AudioInfo
    first: int
    last: int
    bounded: bool
    fmt: OutputFormat | EventFormat | None
    clip: str | None
    target: Path | None
    residual: Path | None
    overwrite: bool
    label: str
    detect: DetectOptions | None = None  # find events (no stems)
    gate: DetectOptions | None = None  # stems kept only inside the events these find


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
    events: list[Event] | None = None  # what a find job found
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
        if self.events is not None:
            out["events"] = [e.to_json() for e in self.events]
        out.update(self.extra)
        return out


def collect_inputs(paths: Iterable[Path | Item], pattern: str | None = None,
                   include_stems: bool = False) -> tuple[list[Item], list[Path]]:
    """Files named directly, plus files found under named folders (recursively, hidden entries
    skipped, sorted) that match ``pattern`` or, without one, have an audio file extension.
    Stems clapsep wrote (tagged, see :func:`is_stem`) found in folders are left out
    unless ``include_stems``; a file named directly is always taken.

    Returns (inputs in order, repeats dropped; stems left out).
    """
    out: list[Item] = []
    stems: list[Path] = []
    for given in paths:
        if isinstance(given, Item) or not given.is_dir():
            out.append(given if isinstance(given, Item) else Item(given))
            continue
        for root, dirs, files in os.walk(given):
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
                    out.append(Item(found))
    return list(dict.fromkeys(out)), stems


def pending(results: Iterable[FileResult]) -> list[FileResult]:
    """The results still to be separated (planned, not skipped or failed)."""
    return [r for r in results if r.status == "pending" and r.planned is not None]


def check_references(query: Query) -> None:
    """Probe the query's reference clips (one clear line if one is missing or not audio): once
    per request, before anything expensive."""
    for ref in (*query.positive_audio, *query.negative_audio):
        probe(ref.path)


def plan_file(item: Item, query: Query, plan: OutputPlan | EventPlan, region: Region) -> Planned:
    """Probe ``item``'s file and decide its outputs (``region``: where the item has none)."""
    info = probe(item.path)
    region = item.region or region
    first, last = region.frames(info)
    if isinstance(plan, EventPlan):
        target = plan.path(item.path, query, item.output)
        _refuse_source_overwrite(item.path, [target])
        return Planned(info, first, last, region.end is not None, plan.format, None, target, None, plan.overwrite,
                       query.slug(), plan.detect)
    fmt = choose_format(info, plan.fmt, plan.bit_depth)
    clip = resolve_clip(plan.clip, fmt)
    target, residual = plan.paths(item.path, query, fmt, item.output)
    _refuse_source_overwrite(item.path, [target, residual])
    return Planned(info, first, last, region.end is not None, fmt, clip, target, residual, plan.overwrite,
                   query.slug(), gate=plan.where)


def plan_results(inputs: list[Item], query: Query, plan: OutputPlan | EventPlan, region: Region
                 ) -> list[FileResult]:
    """A result per input: ``failed`` (bad input), ``skipped`` (its stems exist) or ``pending``
    with its plan. Refuses the whole job (:class:`ClapsepError`) if two inputs would write one
    path, or a stem to be written is one of the inputs. Our temporary files that killed runs
    left in the output folders are removed (see :func:`atomic.remove_stale`)."""
    results = []
    for item in inputs:
        result = FileResult(item.path)
        try:
            planned = plan_file(item, query, plan, region)
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


@dataclass
class Job:
    """A planned job, then its outcome: the request, one result per input and what it cost.

    :func:`plan_job` makes it (no model needed); an executor's ``run`` (a local
    :class:`~clapsep_cli.jobs.session.Session`, or a :class:`~clapsep_cli.jobs.cluster.Cluster`)
    separates its pending files and fills in the rest.
    """

    request: Request
    results: list[FileResult]
    stems_left_out: list[Path]
    plan: OutputPlan | EventPlan
    model: str = DEFAULT_MODEL
    device: str | None = None
    precision: str | None = None
    model_loaded: bool = False
    load_seconds: float = 0.0
    query_seconds: float = 0.0
    total_seconds: float = 0.0
    embeddings: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)  # address and workers, when run on a cluster
    items: list[Item] = field(default_factory=list)  # the inputs as planned (folders expanded), in order
    region: Region = field(default_factory=Region)  # for items without their own

    @property
    def pending(self) -> list[FileResult]:
        return pending(self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_json(self, name: Callable[[str], str] = str) -> dict[str, Any]:
        """The job as JSON-ready data (what ``--json`` prints and ``--report`` writes); settings
        in messages are spelled by ``name``."""
        data: dict[str, Any] = {"query": self.request.query.describe()}
        if self.request.method:
            data["method"] = self.request.method
        if self.stems_left_out:
            data["stems_left_out"] = [str(p) for p in self.stems_left_out]
        if self.embeddings:
            data["query_embeddings"] = {**self.embeddings, "seconds": round(self.query_seconds, 3)}
        data.update({
            "model": self.model, "model_loaded": self.model_loaded,
            "device": self.device if self.model_loaded else None, "precision": self.precision,
            "results": [r.to_json(name) for r in self.results],
            "failed": len(self.failed),
            "timings": {"model_load_seconds": round(self.load_seconds, 3),
                        "total_seconds": round(self.total_seconds, 3)},
        })
        if self.ray:
            data["ray"] = self.ray
        return data


def plan_job(inputs: Iterable[str | Path | Item], req: Request, plan: OutputPlan | EventPlan | None = None,
             region: Region | None = None, pattern: str | None = None, include_stems: bool = False) -> Job:
    """Check every input and decide every output, without a model.

    ``inputs``: files, folders (every audio file under them, see :func:`collect_inputs`) and
    :class:`Item` s (a file with its own region or stem path). ``plan`` (default: the request's
    residual choice) says where stems go, or, an :class:`EventPlan`, that the job finds events
    and where they go; ``region`` applies to inputs without their own.
    Bad inputs become failed results and inputs whose stems exist skipped ones; raises
    :class:`ClapsepError` only for what stops the whole job: no inputs, a missing reference
    clip, output collisions.
    """
    started = time.perf_counter()
    plan = plan or OutputPlan(residual=req.residual)
    items, stems = collect_inputs([i if isinstance(i, Item) else Path(i) for i in inputs], pattern, include_stems)
    if not items:
        raise ClapsepError("no audio files found in the given folders"
                           + (f" ({len(stems)} stems of earlier runs left out; {{setting}} takes them)"
                              if stems else ""), setting="include_stems" if stems else None)
    if plan.output is not None and len(items) > 1:
        raise SettingError("output", "names one stem; with several inputs name a folder or a name template")
    check_references(req.query)
    region = region or Region()
    job = Job(req, plan_results(items, req.query, plan, region), stems, plan, items=items, region=region)
    job.total_seconds = time.perf_counter() - started
    return job
