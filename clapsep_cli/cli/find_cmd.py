"""``clapsep find``: where the sound a query describes occurs in each file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.cli.common import engine_options, flag, model_options
from clapsep_cli.cli.running import (
    detect_options,
    detect_settings,
    input_options,
    job_options,
    naming_options,
    query_options,
    report_failures,
    resolve_request,
    run_job,
    where_options,
)

TABLE = "table"


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[QUERY] FILE...")
@query_options
@click.option("--format", "fmt", type=click.Choice([TABLE, *api.EVENT_FORMATS]), default=TABLE, show_default=True,
              help="table: print the events; json, csv, audacity (a label file: File > Import > Labels), "
                   "reaper (regions), reaper-markers, vtt (WebVTT): write <name>.<query>.<ext> next to each "
                   "source.")
@detect_options
@naming_options("events file")
@input_options
@model_options
@engine_options
@where_options
def find(args: tuple[str, ...], texts: tuple[str, ...], preset: str | None, negative: tuple[str, ...],
         query_audio: tuple[str, ...], negative_audio: tuple[str, ...], audio_weight: float | None, fmt: str,
         threshold: tuple[float, ...], min_duration: float, merge: float, output: Path | None, out_dir: Path | None,
         name_template: str, overwrite: bool, **kwargs: Any) -> None:
    """Find where the sound QUERY describes occurs in each FILE (or folder).

    \b
    Prints each event's start, end and confidence, or writes them as a label, region or
    subtitle file next to each source (--format); writes no audio.
      clapsep find "dog barking" walk.wav
      clapsep find -p siren --format audacity tapes/
      clapsep find "cough" --format reaper --threshold 0.4 podcast.flac
    """
    req, files = resolve_request(args, texts, preset, negative, query_audio, negative_audio, audio_weight)
    detect = detect_settings(threshold, min_duration, merge)
    plan = api.EventPlan(detect, None if fmt == TABLE else fmt, name_template, out_dir, output, overwrite)
    job = run_job(req, files, job_options(plan, **kwargs))
    if not kwargs["json_output"]:
        show(job, table=fmt == TABLE)
    if job.failed:
        sys.exit(1)


def show(job: api.Job, table: bool) -> None:
    """The events (``table``), or where each file's went; then what failed or was skipped."""
    ok = [r for r in job.results if r.status == "ok"]
    if table:
        _table(ok)
    else:
        for r in ok:
            count = len(r.events or [])
            click.echo(f"{r.input} -> {r.target} ({count} event{'s' if count != 1 else ''})")
    for r in job.results:
        if r.status == "skipped":
            click.echo(f"skipped {r.input}: {r.message(flag)}", err=True)
    report_failures(job)


def _table(results: list[api.FileResult]) -> None:
    """A table on a terminal; off one, a line per event: file, start, end, confidence, label
    (tab-separated, for scripts)."""
    if not sys.stdout.isatty():
        for r in results:
            for e in r.events or []:
                click.echo(f"{r.input}\t{e.start:.3f}\t{e.end:.3f}\t{e.confidence:.3f}\t{e.label}")
        return
    from rich.console import Console
    from rich.table import Table

    for r in results:
        events = r.events or []
        table = Table(title=f"{r.input}: {len(events)} event{'s' if len(events) != 1 else ''}", title_justify="left")
        for column in ("start", "end", "duration", "confidence"):
            table.add_column(column, justify="right")
        table.add_column("label")
        for e in events:
            table.add_row(_clock(e.start), _clock(e.end), f"{e.duration:.2f} s", f"{e.confidence:.2f}", e.label)
        Console().print(table)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:06.3f}" if hours else f"{minutes}:{rest:06.3f}"
