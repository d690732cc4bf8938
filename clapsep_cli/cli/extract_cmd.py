"""``clapsep extract`` (keep what the query describes) and ``clapsep remove`` (keep the rest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.audio.writer import CLIP_POLICIES, FORMATS, SUBTYPES
from clapsep_cli.cli.common import engine_options, flag, model_options
from clapsep_cli.cli.running import (
    F,
    apply_options,
    detect_options,
    detect_settings,
    input_options,
    job_options,
    naming_options,
    query_options,
    removal_query_options,
    report_failures,
    resolve_request,
    run_job,
    where_options,
)
from clapsep_cli.errors import ClapsepError


def stem_options(f: F) -> F:
    """--residual, --format, --bit-depth and --clip: how stems are written."""
    return apply_options([
        click.option("--residual/--no-residual", default=None,
                     help="Also write the residual (source minus stem); a preset may turn it on."),
        click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
                     help="Stem format (default: the source's, where writable, else wav)."),
        click.option("--bit-depth", type=click.Choice(list(SUBTYPES)),
                     help="Sample format of wav/flac/aiff stems (default: the source's)."),
        click.option("--clip", type=click.Choice(CLIP_POLICIES),
                     help="Samples beyond full scale: clamp (default for integer formats), rescale the "
                          "stem to peak 1, or none (float formats only; their default)."),
    ], f)


def stem_plan(residual: bool, output: Path | None, out_dir: Path | None, name_template: str, fmt: str | None,
              bit_depth: str | None, clip: str | None, overwrite: bool, where: api.DetectOptions | None = None
              ) -> api.OutputPlan:
    return api.OutputPlan(name_template=name_template, out_dir=out_dir, output=output, residual=residual, fmt=fmt,
                          bit_depth=bit_depth, clip=clip, overwrite=overwrite, where=where)


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[QUERY] FILE...")
@query_options
@naming_options("stem")
@stem_options
@click.option("--where", type=click.Choice(["everywhere", "found"]), default="everywhere", show_default=True,
              help="found: keep the sound only inside the events `clapsep find` finds (fading in and out over "
                   "50 ms), silence elsewhere, so the stem holds no bleed where the sound is absent.")
@detect_options
@input_options
@model_options
@engine_options
@where_options
def extract(args: tuple[str, ...], texts: tuple[str, ...], preset: str | None, negative: tuple[str, ...],
            query_audio: tuple[str, ...], negative_audio: tuple[str, ...], audio_weight: float | None,
            residual: bool | None, output: Path | None, out_dir: Path | None, name_template: str,
            fmt: str | None, bit_depth: str | None, clip: str | None, overwrite: bool, where: str,
            threshold: tuple[float, ...], min_duration: float, merge: float, **kwargs: Any) -> None:
    """Keep the sound QUERY describes, from each FILE (or folder).

    \b
    QUERY is a text such as "dog barking"; an empty QUERY ("") with --negative keeps
    everything but the negative. Writes <name>.<query>.<ext> next to each source.
    \b
      clapsep extract "dog barking" walk.wav
      clapsep extract -p dialogue --residual interviews/
      clapsep extract "" -n "wind noise" take.flac
    """
    req, files = resolve_request(args, texts, preset, negative, query_audio, negative_audio, audio_weight)
    found = detect_settings(threshold, min_duration, merge) if where == "found" else None
    if found is None:
        _refuse_detect_options_alone()
    plan = stem_plan(req.residual if residual is None else residual, output, out_dir, name_template, fmt, bit_depth,
                     clip, overwrite, found)
    report(run_job(req, files, job_options(plan, **kwargs)), kwargs["json_output"])


def _refuse_detect_options_alone() -> None:
    """--threshold, --min-duration and --merge shape what --where found keeps: alone they are a mistake."""
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("threshold", "min_duration", "merge")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise ClapsepError(f"{' and '.join(given)} shape what --where found keeps: give --where found too")


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[QUERY] FILE...")
@removal_query_options
@click.option("--method", type=click.Choice(api.REMOVE_METHODS), default=api.DEFAULT_REMOVE_METHOD, show_default=True,
              help="negative: ask the model for everything but QUERY (a negative-only query); "
                   "subtract: extract QUERY and keep the source minus it.")
@naming_options("stem", removal=True)
@stem_options
@input_options
@model_options
@engine_options
@where_options
def remove(args: tuple[str, ...], texts: tuple[str, ...], preset: str | None, negative: tuple[str, ...],
           query_audio: tuple[str, ...], negative_audio: tuple[str, ...], audio_weight: float | None,
           method: str, residual: bool | None, output: Path | None, out_dir: Path | None, name_template: str,
           fmt: str | None, bit_depth: str | None, clip: str | None, overwrite: bool, **kwargs: Any) -> None:
    """Keep everything but the sound QUERY describes, from each FILE (or folder).

    \b
    Writes <name>.without_<query>.<ext>; --residual also writes what was removed.
    --negative names sounds to protect (kept for certain).
      clapsep remove "wind noise" take.wav
      clapsep remove -p hum-buzz --residual podcast.flac
    """
    req, files = resolve_request(args, texts, preset, negative, query_audio, negative_audio, audio_weight)
    plan = stem_plan(bool(residual), output, out_dir, name_template, fmt, bit_depth, clip, overwrite)
    report(run_job(api.removal(req, method), files, job_options(plan, **kwargs)), kwargs["json_output"])


def report(job: api.Job, json_output: bool) -> None:
    """Print the job's outcome (unless ``--json`` printed it); exit 1 if a file failed."""
    if not json_output:
        for r in job.results:
            if r.status == "ok":
                outs = " + ".join(str(p) for p in (r.target, r.residual) if p)
                click.echo(f"{r.input} -> {outs}")
            elif r.status == "skipped":
                click.echo(f"skipped {r.input}: {r.message(flag)}", err=True)
            if r.clipped_samples:
                click.echo(f"note: {r.clipped_samples} samples of {r.target} were clamped at full scale "
                           "(--clip rescale or --bit-depth 32f avoid it)", err=True)
        report_failures(job)
    if job.failed:
        sys.exit(1)
