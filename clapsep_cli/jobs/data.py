"""What a job is, and its one plain-data form. Torch-free.

A job (:class:`Job`) holds its request, how its outputs are named and written (an
:class:`OutputPlan` for stems, an :class:`EventPlan` for events), its inputs (:class:`Item`)
and one :class:`FileResult` per input: planned (:class:`Planned`: probed, outputs decided) by
:func:`~clapsep_cli.jobs.plan.plan_job`, then filled in by an executor.

:func:`to_data` and :func:`from_data` turn these (and the request, regions, events and
:class:`~clapsep_cli.errors.ClapsepError` s, which keep their class and message) into JSON-ready
data and back: the one form in which a job, its results and its errors cross a process, to the
service and back (:mod:`clapsep_cli.service.protocol`) and to Ray workers and back
(:mod:`clapsep_cli.jobs.cluster`). Only the types in :data:`WIRE_TYPES` are rebuilt from data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapsep_cli.audio.reader import AudioInfo
from clapsep_cli.audio.region import Region
from clapsep_cli.audio.writer import OutputFormat
from clapsep_cli.errors import ClapsepError, SettingError
from clapsep_cli.events.detect import DetectOptions, Event
from clapsep_cli.events.formats import EVENT_FORMATS, EventFormat
from clapsep_cli.models.store import DEFAULT_MODEL
from clapsep_cli.queries.request import Request
from clapsep_cli.queries.spec import AudioRef, Query

DEFAULT_NAME = "{stem}.{query}.{ext}"
NAME_FIELDS = {
    "stem": "the source's name without its extension",
    "query": "the query's tag (a preset's tag, else the texts)",
    "ext": "the output format's extension",
    "name": "the source's full file name",
    "suffix": "the source's extension, without the dot",
}


def output_path(template: str, out_dir: Path | None, source: Path, query: Query, extension: str) -> Path:
    """The file ``template`` (fields: :data:`NAME_FIELDS`) names for ``source``, in ``out_dir``
    (default: beside the source)."""
    fields = {"stem": source.stem, "query": query.tag, "ext": extension, "name": source.name,
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
    ``gate``: keep the separated sound only inside the events these options find in it (with
    short fades), silence elsewhere (None: everywhere; the command line's ``--where found``).
    """

    name_template: str = DEFAULT_NAME
    out_dir: Path | None = None
    output: Path | None = None  # exact target path (single input only)
    residual: bool = False
    fmt: str | None = None
    bit_depth: str | None = None
    clip: str | None = None
    overwrite: bool = False
    gate: DetectOptions | None = None

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
    decoder's end); ``tag`` tags the stems' metadata and names the events. Stems have a
    format and a clip policy (and ``gate``, to keep the sound only where it is found); events
    have ``detect``, and a format where a file is written. ``size`` and ``mtime_ns``: the file
    as it was probed (an executor in another process checks that it is the same file)."""

    info: AudioInfo
    first: int
    last: int
    bounded: bool
    fmt: OutputFormat | EventFormat | None
    clip: str | None
    target: Path | None
    residual: Path | None
    overwrite: bool
    tag: str
    detect: DetectOptions | None = None  # find events (no stems)
    gate: DetectOptions | None = None  # stems kept only inside the events these find
    size: int = 0
    mtime_ns: int = 0


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

    def take(self, other: FileResult) -> None:
        """Become ``other``: the same input's result as another process filled it in."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(other, f.name))

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


def pending(results: Iterable[FileResult]) -> list[FileResult]:
    """The results still to be separated (planned, not skipped or failed)."""
    return [r for r in results if r.status == "pending" and r.planned is not None]


@dataclass
class Job:
    """A planned job, then its outcome: the request, one result per input and what it cost.

    :func:`~clapsep_cli.jobs.plan.plan_job` makes it (no model needed); an
    :class:`~clapsep_cli.jobs.executor.Executor`'s ``run`` (a
    :class:`~clapsep_cli.jobs.separator.Separator` here, the service's, or a
    :class:`~clapsep_cli.jobs.cluster.Cluster`) separates its pending files and fills in the
    results and the :data:`RUN_FIELDS`.
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




# What an executor fills in of a job besides its results (the service sends them back at the end).
RUN_FIELDS = ("model", "device", "precision", "model_loaded", "load_seconds", "query_seconds", "embeddings")

WIRE_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    Job, FileResult, Planned, Item, OutputPlan, EventPlan, Request, Query, AudioRef, DetectOptions, Region, Event,
    AudioInfo, OutputFormat)}


def to_data(value: Any) -> Any:
    """``value`` as JSON-ready data: the :data:`WIRE_TYPES` dataclasses (tagged ``$``), an
    :class:`~clapsep_cli.events.formats.EventFormat` by name, a :class:`ClapsepError` with its
    class, message and setting, paths and tuples tagged; lists, dicts and plain values as they are.
    Raises :class:`TypeError` for anything else."""
    if isinstance(value, ClapsepError):
        return {"$error": type(value).__name__, "template": value.template, "setting": value.setting}
    if isinstance(value, EventFormat):
        return {"$event_format": value.name}
    if dataclasses.is_dataclass(value) and WIRE_TYPES.get(type(value).__name__) is type(value):
        fields = {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$": type(value).__name__, **fields}
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [to_data(v) for v in value]}
    if isinstance(value, list):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} cannot be turned into data")


def from_data(data: Any) -> Any:
    """The inverse of :func:`to_data`. Raises :class:`ValueError` for data that names no wire
    type, or does not fit the one it names; a dataclass's own checks raise as they do."""
    if isinstance(data, list):
        return [from_data(v) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1 and isinstance(data.get("$path"), str):
        return Path(data["$path"])
    if len(data) == 1 and isinstance(data.get("$tuple"), list):
        return tuple(from_data(v) for v in data["$tuple"])
    if len(data) == 1 and "$event_format" in data:
        if data["$event_format"] not in EVENT_FORMATS:
            raise ValueError(f"unknown event format {data['$event_format']!r}")
        return EVENT_FORMATS[data["$event_format"]]
    if "$error" in data:
        return _error_from(data)
    if "$" in data:
        cls = WIRE_TYPES.get(data["$"]) if isinstance(data["$"], str) else None
        if cls is None:
            raise ValueError(f"unknown type {data['$']!r}")
        fields = {k: from_data(v) for k, v in data.items() if k != "$"}
        try:
            return cls(**fields)
        except ClapsepError:
            raise
        except (TypeError, ValueError) as err:
            raise ValueError(f"a {cls.__name__} is malformed ({err})") from None
    return {k: from_data(v) for k, v in data.items()}


def _error_from(data: dict[str, Any]) -> ClapsepError:
    """The error :func:`to_data` describes, of its own class where this process knows it (else
    the nearest: :class:`ClapsepError`), with its message and setting."""
    template, setting = data.get("template"), data.get("setting")
    if not isinstance(template, str) or not (setting is None or isinstance(setting, str)):
        raise ValueError("an error is malformed (its 'template' must be text, its 'setting' text or null)")
    cls = _error_classes().get(data["$error"], ClapsepError)
    err = cls.__new__(cls)
    ClapsepError.__init__(err, template, setting=setting)
    if isinstance(err, SettingError):
        err.problem = template.removeprefix("{setting} ")
    return err


def _error_classes() -> dict[str, type[ClapsepError]]:
    found: dict[str, type[ClapsepError]] = {}
    todo = [ClapsepError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found
