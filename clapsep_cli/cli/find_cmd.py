"""``clapsep find``: where the sound a query describes occurs in each file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.cli.common import flag
from clapsep_cli.cli.options import (
    Engine,
    F,
    Inputs,
    Placement,
    Reporting,
    collect,
    detect_flags,
    detect_settings,
    engine_settings,
    input_options,
    naming_options,
    placement_options,
    request_options,
)
from clapsep_cli.cli.running import JobOptions, report_failures, run_job

TABLE = "table"


def event_plan_options(f: F) -> F:
    """--format, the detection options and the naming options: the command gets ``plan``, an
    :class:`~clapsep_cli.api.EventPlan` (no file for --format table)."""
    def build(fmt: str, threshold: tuple[float, ...], min_duration: float, merge: float, **naming: Any
              ) -> api.EventPlan:
        return api.EventPlan(detect=detect_settings(threshold, min_duration, merge),
                             fmt=None if fmt == TABLE else fmt, **naming)

    return collect("plan", [
        click.option("--format", "fmt", type=click.Choice([TABLE, *api.EVENT_FORMATS]), default=TABLE,
                     show_default=True,
                     help="table: print the events; json, csv, audacity (a label file: File > Import > Labels), "
                          "reaper (regions), reaper-markers, vtt (WebVTT): write <name>.<query>.<ext> next to each "
                          "source."),
        detect_flags,
        *naming_options("events file"),
    ], build)(f)


@click.command()
@request_options
@event_plan_options
@input_options
@engine_settings
@placement_options
def find(req: api.Request, files: list[Path], plan: api.EventPlan, inputs: Inputs, reporting: Reporting,
         engine: Engine, placement: Placement) -> None:
    """Find where the sound QUERY describes occurs in each FILE (or folder).

    \b
    Prints each event's start, end and confidence, or writes them as a label, region or
    subtitle file next to each source (--format); writes no audio.
      clapsep find "dog barking" walk.wav
      clapsep find -p siren --format audacity tapes/
      clapsep find "cough" --format reaper --threshold 0.4 podcast.flac
    """
    opts = JobOptions(plan=plan, inputs=inputs, reporting=reporting, engine=engine, placement=placement)
    job = run_job(req, files, opts)
    if not reporting.json:
        show(job, table=plan.fmt is None)
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
