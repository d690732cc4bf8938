"""What the commands that run jobs share: query, naming, input and cluster options; planning
and running a job here or on a Ray cluster; the JSON report."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.audio import atomic
from clapsep_cli.cli.common import TimeType, emit_json, flag, make_executor, server_option
from clapsep_cli.errors import ClapsepError

F = Callable[..., Any]


def apply_options(decorators: list[Callable[[F], F]], f: F) -> F:
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def query_options(f: F) -> F:
    """-q, -p, -n, --query-audio, --negative-audio, --audio-weight (extract, find)."""
    return _query_options(f, "A sound to reject (repeatable).",
                          "A reference clip of a sound to reject (repeatable).")


def removal_query_options(f: F) -> F:
    """:func:`query_options` for ``remove``, where a negative is a sound to protect."""
    return _query_options(f, "A sound to protect: kept in the result, not removed with QUERY (repeatable).",
                          "A reference clip of a sound to protect (repeatable).")


def _query_options(f: F, negative_help: str, negative_audio_help: str) -> F:
    return apply_options([
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
    ], f)


def naming_options(noun: str, removal: bool = False) -> Callable[[F], F]:
    """-o, --out-dir, --name and --overwrite, for files of ``noun`` ("stem", "events file").
    ``removal``: for ``remove``, whose {query} field is ``without_`` and the query's tag."""
    fields = dict(api.NAME_FIELDS)
    default = ""  # click's own "[default: ...]" for extract and find
    if removal:  # the same template, but its {query} is remove's own: say what it gives
        fields["query"] = "without_ and the query's tag (a preset's suffix, else the texts)"
        default = (f" Default: {api.DEFAULT_NAME}, so `remove \"wind noise\" take.wav` writes "
                   "take.without_wind_noise.wav.")

    def decorate(f: F) -> F:
        return apply_options([
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
        ], f)
    return decorate


def input_options(f: F) -> F:
    """--start, --end, --glob, --include-stems, --json and --report."""
    return apply_options([
        click.option("--start", type=TimeType(), help="Process only from this time (s or hh:mm:ss.fff)."),
        click.option("--end", type=TimeType(), help="Process only up to this time."),
        click.option("--glob", "pattern", metavar="PATTERN",
                     help="In folders, take files matching this pattern (default: known audio types)."),
        click.option("--include-stems", is_flag=True,
                     help="In folders, also take stems clapsep wrote (tagged in their metadata; "
                          "left out by default)."),
        click.option("--json", "json_output", is_flag=True, help="Print one machine-readable JSON result."),
        click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write the JSON result to this file (atomically; written on failure too)."),
    ], f)


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


def detect_options(f: F) -> F:
    """--threshold, --min-duration and --merge: how a sound is found."""
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
    """The library's options from :func:`detect_options`' values."""
    return api.DetectOptions(threshold=threshold[0], release=threshold[1] if len(threshold) > 1 else None,
                             min_duration=min_duration, merge=merge)


def resolve_request(args: tuple[str, ...], texts: tuple[str, ...], preset: str | None, negative: tuple[str, ...],
                    query_audio: tuple[str, ...], negative_audio: tuple[str, ...], audio_weight: float | None
                    ) -> tuple[api.Request, list[Path]]:
    """The request and the input paths from the command line.

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
    req = api.request(*positive, preset=preset, negative=negative, query_audio=query_audio,
                      negative_audio=negative_audio, audio_weight=audio_weight)
    return req, [Path(a) for a in args]


def where_options(f: F) -> F:
    """--server, --ray, --ray-cpus and --ray-workers: where the job runs."""
    return apply_options([
        server_option,
        click.option("--ray", "ray_address", metavar="ADDRESS",
                     help="Run on a Ray cluster: auto (the one RAY_ADDRESS names, else one Ray finds on this "
                          "machine), local (start one here for this job) or HOST:PORT. Needs the ray extra: "
                          "pip install -e '.[ray]' in the clapsep checkout."),
        click.option("--ray-cpus", type=click.IntRange(min=1), default=1, show_default=True,
                     help="CPUs each CPU worker takes; GPU workers take one GPU and one CPU."),
        click.option("--ray-workers", type=click.IntRange(min=1),
                     help="At most this many workers (default: one per GPU, else as many as the CPUs hold)."),
    ], f)


@dataclass(frozen=True)
class JobOptions:
    """Everything about a run besides the query and the inputs, as the command line gave it."""

    plan: api.OutputPlan | api.EventPlan
    overlap: float
    batch_size: int | None
    region: api.Region
    pattern: str | None
    include_stems: bool
    json_output: bool
    report_file: Path | None
    model_name: str
    device: str
    precision: str
    server: str
    ray_address: str | None
    ray_cpus: int
    ray_workers: int | None


def job_options(plan: api.OutputPlan | api.EventPlan, start: float | None, end: float | None, pattern: str | None,
                include_stems: bool, json_output: bool, report_file: Path | None, model_name: str, device: str,
                precision: str, overlap: float, batch_size: int | None, server: str, ray_address: str | None,
                ray_cpus: int, ray_workers: int | None) -> JobOptions:
    return JobOptions(plan, overlap, batch_size, api.Region(start or 0.0, end), pattern, include_stems,
                      json_output, report_file, model_name, device, precision, server, ray_address, ray_cpus,
                      ray_workers)


def run_job(req: api.Request, files: list[Path], opts: JobOptions) -> api.Job:
    """Check and plan everything, load the model only if a file is to be separated, separate;
    write ``--report`` and print ``--json``, the same document, also when the whole job fails (a
    model that cannot be loaded or downloaded): then the error is raised on after both, for its one
    line on stderr. The command prints the rest."""
    try:
        job = _run(req, files, opts)
    except ClapsepError as err:
        publish({"failed": 1, "error": err.render(flag), "results": []}, opts)
        raise
    publish(job.to_json(flag), opts)
    return job


def publish(data: dict[str, Any], opts: JobOptions) -> None:
    """Write ``data`` to ``--report`` and print it for ``--json``, where asked for."""
    if opts.report_file is not None:
        write_report(opts.report_file, data)
    if opts.json_output:
        emit_json(data)


def _run(req: api.Request, files: list[Path], opts: JobOptions) -> api.Job:
    from clapsep_cli.cli.progress import RichProgress, wanted

    if opts.ray_address is None and (opts.ray_workers is not None or opts.ray_cpus != 1):
        raise ClapsepError("--ray-cpus and --ray-workers shape the workers of a Ray cluster: give --ray too")
    job = api.plan(files, req, opts.plan, opts.region, opts.pattern, opts.include_stems)  # no torch needed yet
    if not job.pending:  # every input failed or was skipped: no executor (no torch, no model, no service)
        job.model = opts.model_name
        return job
    executor = _executor(opts)
    bar = RichProgress() if wanted(opts.json_output) else None
    with bar if bar else contextlib.nullcontext():
        return executor.run(job, bar)


def _executor(opts: JobOptions) -> Any:
    """Where the job runs: in the warm service (``--server``), here, or on the Ray cluster
    ``--ray`` names."""
    if opts.ray_address is not None:
        if opts.server == "require":
            raise ClapsepError("--ray runs the job on a Ray cluster, not in the clapsep service: leave out --server")
        return api.Cluster(opts.ray_address, opts.model_name, device=opts.device, precision=opts.precision,
                           overlap=opts.overlap, batch_size=opts.batch_size, worker_cpus=opts.ray_cpus,
                           max_workers=opts.ray_workers)
    return make_executor(opts.server, opts.model_name, opts.device, opts.precision, quiet=opts.json_output,
                         overlap=opts.overlap, batch_size=opts.batch_size)


def write_report(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON report atomically (a bridge polling for the file never sees half of it).
    A report that cannot be written (a full disk) costs one line on stderr, not the job."""
    try:
        atomic.write_text(path, json.dumps(data, indent=2, ensure_ascii=False))
    except OSError as err:
        click.echo(f"clapsep: warning: {path}: cannot write the report ({err.strerror or err})", err=True)




def report_failures(job: api.Job) -> None:
    """On stderr: a single input's failure as one error line, else how many of the files tried
    failed and why, one line each."""
    failed = job.failed
    attempted = [r for r in job.results if r.status != "skipped"]
    if len(job.results) == 1 and failed:
        click.echo(f"clapsep: error: {failed[0].message(flag)}", err=True)
    elif failed:
        skipped = len(job.results) - len(attempted)
        click.echo(f"clapsep: {len(failed)} of {len(attempted)} files failed"
                   + (f" ({skipped} skipped)" if skipped else "") + ":", err=True)
        for r in failed:
            click.echo(f"  {r.message(flag)}", err=True)
