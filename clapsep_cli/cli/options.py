"""The option groups the commands that run jobs share, each turned into one value.

A group is click's shared-options decorator; :func:`collect` makes one hand the command a single
value built from the group's options instead of the options themselves: the ``Request`` and
the input paths, an ``OutputPlan`` (or, in ``find``, an ``EventPlan``) with its
``DetectOptions``, :class:`Inputs`, :class:`Reporting`, :class:`Engine` and the
:class:`Placement` (where a job runs). The checks
between options live with them here. Values are built when the command runs, in the order the
decorators stand (top first), so a request is read, and its errors reported, before the plan.

Nothing here imports torch or numpy: ``clapsep extract --help`` stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.audio.writer import CLIP_POLICIES, FORMATS, SUBTYPES
from clapsep_cli.cli.common import TimeType, engine_options, model_options, server_option
from clapsep_cli.errors import ClapsepError

F = Callable[..., Any]
Decorator = Callable[[F], F]


def apply_options(decorators: Sequence[Decorator], f: F) -> F:
    """Apply ``decorators`` as if written above ``f`` in this order (the first on top)."""
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def collect(name: str | tuple[str, ...], options: Sequence[Decorator], build: Callable[..., Any],
            uses: Sequence[str] = ()) -> Decorator:
    """Add ``options`` (click options, arguments, or groups of them) to a command, which receives
    instead of their values one keyword argument ``name``: ``build`` called with their values
    (by parameter name) and with the values named in ``uses``, built by groups above this one.
    With a tuple of names, ``build`` returns a value for each."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            raw = {param: kwargs.pop(param) for param in params}
            value = build(**raw, **{used: kwargs[used] for used in uses})
            kwargs.update(zip(name, value) if isinstance(name, tuple) else [(name, value)])
            return f(*args, **kwargs)

        earlier = {id(p) for p in getattr(f, "__click_params__", [])}
        command = apply_options(options, command)
        params = [p.name for p in getattr(command, "__click_params__", []) if id(p) not in earlier]
        return command

    return decorate


def given(*params: str) -> list[str]:
    """Which of ``params`` the command line (or the environment) set, as options (``--min-duration``)."""
    ctx = click.get_current_context()
    return [f"--{name.replace('_', '-')}" for name in params
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]


# The request: [QUERY] FILE..., -q, -p, -n, --query-audio, --negative-audio, --audio-weight.

def _query_options(negative_help: str, negative_audio_help: str) -> list[Decorator]:
    return [
        click.argument("args", nargs=-1, required=True, metavar="[QUERY] FILE..."),
        click.option("-q", "--query", "texts", multiple=True, metavar="TEXT",
                     help="A description of the sound (repeatable; several are averaged). With -q or -p, "
                          "every argument is a file."),
        click.option("-p", "--preset", metavar="NAME", help="A named query preset (see `clapsep presets list`)."),
        click.option("-n", "--negative", multiple=True, metavar="TEXT", help=negative_help),
        click.option("--query-audio", multiple=True, metavar="FILE[@START-END]",
                     help="A reference clip of the sound (repeatable)."),
        click.option("--negative-audio", multiple=True, metavar="FILE[@START-END]", help=negative_audio_help),
        click.option("--audio-weight", type=click.FloatRange(0.0, 1.0),
                     help="Weight of reference clips against texts on the same side (default 0.5)."),
    ]


def _files(f: F, request: Callable[..., api.Request], options: list[Decorator]) -> F:
    """Give the command ``req`` (``request`` of the command line's query) and ``files``."""
    def build(args: tuple[str, ...], **query: Any) -> tuple[api.Request, list[Path]]:
        positive, files = split_arguments(args, query["texts"], query["preset"], query["query_audio"])
        return request(*positive, **query), files

    return collect(("req", "files"), options, build)(f)


def request_options(f: F) -> F:
    """[QUERY] FILE... and the query's options (extract, find): the command gets ``req``, an
    :class:`~clapsep_cli.api.Request`, and ``files``, the input paths."""
    return _files(f, _request, _query_options("A sound to reject (repeatable).",
                                              "A reference clip of a sound to reject (repeatable)."))


def removal_options(f: F) -> F:
    """:func:`request_options` for ``remove``, where a negative is a sound to protect, with
    ``--method``: ``req`` is the removal (:func:`clapsep_cli.api.removal`)."""
    options = _query_options("A sound to protect: kept in the result, not removed with QUERY (repeatable).",
                             "A reference clip of a sound to protect (repeatable).")
    options.append(click.option(
        "--method", type=click.Choice(api.REMOVE_METHODS), default=api.DEFAULT_REMOVE_METHOD, show_default=True,
        help="negative: ask the model for everything but QUERY (a negative-only query); "
             "subtract: extract QUERY and keep the source minus it."))

    def removal(*positive: str, method: str, **query: Any) -> api.Request:
        return api.removal(_request(*positive, **query), method)

    return _files(f, removal, options)


def _request(*positive: str, texts: tuple[str, ...], **query: Any) -> api.Request:
    return api.request(*positive, **query)


def split_arguments(args: tuple[str, ...], texts: tuple[str, ...], preset: str | None,
                    query_audio: tuple[str, ...]) -> tuple[list[str], list[Path]]:
    """The texts of the query and the input paths among the arguments.

    With -q or -p every argument is a file. Otherwise the first argument is QUERY, except that
    with --query-audio an existing file in first place is an input rather than a text. An empty
    argument is never a file (it would name the current folder). How a preset combines with
    texts is the library's rule (:func:`clapsep_cli.api.request`).
    """
    positive = list(texts)
    if not texts and preset is None and args and not (query_audio and args[0] and Path(args[0]).exists()):
        positive, args = [args[0]], args[1:]
    if not args:
        raise ClapsepError("no input files given")
    if any(not a.strip() for a in args):
        raise ClapsepError("an empty file name was given (an empty QUERY goes first, before the files)")
    return positive, [Path(a) for a in args]


# Naming: -o, --out-dir, --name, --overwrite (the fields an OutputPlan and an EventPlan share).

def naming_options(noun: str, removal: bool = False) -> list[Decorator]:
    """-o, --out-dir, --name and --overwrite, for files of ``noun`` ("stem", "events file").
    ``removal``: for ``remove``, whose {query} field is ``without_`` and the query's tag."""
    fields = dict(api.NAME_FIELDS)
    default = ""  # click's own "[default: ...]" for extract and find
    if removal:  # the same template, but its {query} is remove's own: say what it gives
        fields["query"] = "without_ and the query's tag (a preset's tag, else the texts)"
        default = (f" Default: {api.DEFAULT_NAME}, so `remove \"wind noise\" take.wav` writes "
                   "take.without_wind_noise.wav.")
    return [
        click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                     help=f"The {noun} for a single input (default: next to the source)."),
        click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
                     help=f"Write each {noun} into this folder instead of next to its source."),
        click.option("--name", "name_template", default=api.DEFAULT_NAME, show_default=not removal,
                     help=f"{noun.capitalize()} name template; fields: "
                          + "; ".join(f"{{{k}}} {v}" for k, v in fields.items())
                          + ". Two inputs that would get one name are refused." + default),
        click.option("--overwrite", is_flag=True,
                     help=f"Replace an existing {noun} (sources are never touched)."),
    ]


# Detection: --threshold, --min-duration, --merge.

class ThresholdType(click.ParamType):
    """``HIGH`` or ``HIGH,LOW``: the score at which an event begins and, optionally, the one
    below which it ends."""

    name = "HIGH[,LOW]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            levels = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a number or two numbers separated by a comma", param, ctx)
        if len(levels) not in (1, 2):
            self.fail(f"{value!r}: give one level or two (HIGH,LOW)", param, ctx)
        return levels


def detect_flags(f: F) -> F:
    """--threshold, --min-duration and --merge, as they are given: how a sound is found."""
    defaults = api.DetectOptions()
    return apply_options([
        click.option("--threshold", type=ThresholdType(), default=str(defaults.threshold), show_default=True,
                     help="Score (the share of a 20 ms frame's energy that is the sound, 0 to 1) at which a "
                          "found event begins; a second level, HIGH,LOW, is where it ends (default: HIGH)."),
        click.option("--min-duration", type=click.FloatRange(min=0.0), default=defaults.min_duration,
                     show_default=True, help="Shorter found events are dropped (seconds)."),
        click.option("--merge", type=click.FloatRange(min=0.0), default=defaults.merge, show_default=True,
                     help="Found events closer than this are joined (seconds)."),
    ], f)


def detect_settings(threshold: tuple[float, ...], min_duration: float, merge: float) -> api.DetectOptions:
    """The library's options from :func:`detect_flags`' values."""
    return api.DetectOptions(threshold=threshold[0], release=threshold[1] if len(threshold) > 1 else None,
                             min_duration=min_duration, merge=merge)


# Stems: the naming options, --residual, --format, --bit-depth, --clip (and extract's --where).

def _stem_flags(noun: str, removal: bool) -> list[Decorator]:
    return [
        *naming_options(noun, removal),
        click.option("--residual/--no-residual", default=None,
                     help="Also write the residual (source minus stem); a preset may turn it on."),
        click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
                     help="Stem format (default: the source's, where writable, else wav)."),
        click.option("--bit-depth", type=click.Choice(list(SUBTYPES)),
                     help="Sample format of wav/flac/aiff stems (default: the source's)."),
        click.option("--clip", type=click.Choice(CLIP_POLICIES),
                     help="Samples beyond full scale: clamp (default for integer formats), rescale the "
                          "stem to peak 1, or none (float formats only; their default)."),
    ]


def stem_plan_options(f: F) -> F:
    """How ``extract`` writes stems, and where it keeps the sound (--where, and the detection
    options that shape what --where found keeps): the command gets ``plan``, an
    :class:`~clapsep_cli.api.OutputPlan` whose residual is the request's unless --residual or
    --no-residual says otherwise. Needs ``req`` from :func:`request_options` above it."""
    options = [
        *_stem_flags("stem", removal=False),
        click.option("--where", type=click.Choice(["everywhere", "found"]), default="everywhere", show_default=True,
                     help="found: keep the sound only inside the events `clapsep find` finds (fading in and out "
                          "over 50 ms), silence elsewhere, so the stem holds no bleed where the sound is absent."),
        detect_flags,
    ]

    def build(req: api.Request, residual: bool | None, where: str, threshold: tuple[float, ...],
              min_duration: float, merge: float, **plan: Any) -> api.OutputPlan:
        found = detect_settings(threshold, min_duration, merge) if where == "found" else None
        if found is None and (alone := given("threshold", "min_duration", "merge")):
            raise ClapsepError(f"{' and '.join(alone)} shape what --where found keeps: give --where found too")
        return api.OutputPlan(**plan, residual=req.residual if residual is None else residual, gate=found)

    return collect("plan", options, build, uses=["req"])(f)


def removal_plan_options(f: F) -> F:
    """How ``remove`` writes stems: the command gets ``plan``, an :class:`~clapsep_cli.api.OutputPlan`
    (a residual, what was removed, only with --residual)."""
    def build(residual: bool | None, **plan: Any) -> api.OutputPlan:
        return api.OutputPlan(**plan, residual=bool(residual))

    return collect("plan", _stem_flags("stem", removal=True), build)(f)


# Inputs and reporting: --start, --end, --glob, --include-stems; --json, --report.

@dataclass(frozen=True)
class Inputs:
    """Which files of the folders given, and which part of each file."""

    region: api.Region
    pattern: str | None
    include_stems: bool


@dataclass(frozen=True)
class Reporting:
    """The JSON result: printed (``json``), written to ``file``."""

    json: bool
    file: Path | None


def input_options(f: F) -> F:
    """--start, --end, --glob and --include-stems, as ``inputs`` (:class:`Inputs`); --json and
    --report, as ``reporting`` (:class:`Reporting`)."""
    def inputs(start: float | None, end: float | None, pattern: str | None, include_stems: bool) -> Inputs:
        return Inputs(region=api.Region(start=start or 0.0, end=end), pattern=pattern, include_stems=include_stems)

    return apply_options([
        collect("inputs", [
            click.option("--start", type=TimeType(), help="Process only from this time (s or hh:mm:ss.fff)."),
            click.option("--end", type=TimeType(), help="Process only up to this time."),
            click.option("--glob", "pattern", metavar="PATTERN",
                         help="In folders, take files matching this pattern (default: known audio types)."),
            click.option("--include-stems", is_flag=True,
                         help="In folders, also take stems clapsep wrote (tagged in their metadata; "
                              "left out by default)."),
        ], inputs),
        collect("reporting", [
            click.option("--json", "json_output", is_flag=True, help="Print one machine-readable JSON result."),
            click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
                         help="Also write the JSON result to this file (atomically; written on failure too)."),
        ], lambda json_output, report_file: Reporting(json=json_output, file=report_file)),
    ], f)


# The engine: --model, --device, --precision, --overlap, --batch-size.

@dataclass(frozen=True)
class Engine:
    """The model a job runs and how: device, precision, segment overlap, batch size (None: the
    device's default)."""

    model: str
    device: str
    precision: str
    overlap: float
    batch_size: int | None


def engine_settings(f: F) -> F:
    """--model, --device, --precision, --overlap and --batch-size: the command gets ``engine``
    (:class:`Engine`)."""
    def build(model_name: str, device: str, precision: str, overlap: float, batch_size: int | None) -> Engine:
        return Engine(model=model_name, device=device, precision=precision, overlap=overlap, batch_size=batch_size)

    return collect("engine", [model_options, engine_options], build)(f)


# Placement, where a job runs: --server, --ray, --ray-cpus, --ray-workers.

@dataclass(frozen=True)
class Placement:
    """Where a job runs: ``server`` (``auto``, ``never``, ``require``: whether the warm service
    takes it), or the Ray cluster at ``ray`` with workers of ``ray_cpus`` CPUs, at most
    ``ray_workers`` of them."""

    server: str
    ray: str | None
    ray_cpus: int
    ray_workers: int | None

    def check(self) -> None:
        """The worker options without --ray are a mistake."""
        if self.ray is None and (self.ray_workers is not None or self.ray_cpus != 1):
            raise ClapsepError("--ray-cpus and --ray-workers shape the workers of a Ray cluster: give --ray too")


def placement_options(f: F) -> F:
    """--server, --ray, --ray-cpus and --ray-workers: the command gets ``placement``
    (:class:`Placement`)."""
    def build(server: str, ray_address: str | None, ray_cpus: int, ray_workers: int | None) -> Placement:
        return Placement(server=server, ray=ray_address, ray_cpus=ray_cpus, ray_workers=ray_workers)

    return collect("placement", [
        server_option,
        click.option("--ray", "ray_address", metavar="ADDRESS",
                     help="Run on a Ray cluster: auto (the one RAY_ADDRESS names, else one Ray finds on this "
                          "machine), local (start one here for this job) or HOST:PORT. Needs the ray extra: "
                          "pip install -e '.[ray]' in the clapsep checkout."),
        click.option("--ray-cpus", type=click.IntRange(min=1), default=1, show_default=True,
                     help="CPUs each CPU worker takes; GPU workers take one GPU and one CPU."),
        click.option("--ray-workers", type=click.IntRange(min=1),
                     help="At most this many workers (default: one per GPU, else as many as the CPUs hold)."),
    ], build)(f)
