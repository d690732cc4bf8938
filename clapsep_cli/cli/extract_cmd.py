"""``clapsep extract`` (keep what the query describes) and ``clapsep remove`` (keep the rest)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clapsep_cli import api
from clapsep_cli.cli.common import flag
from clapsep_cli.cli.options import (
    Engine,
    Inputs,
    Placement,
    Reporting,
    engine_settings,
    input_options,
    placement_options,
    removal_options,
    removal_plan_options,
    request_options,
    stem_plan_options,
)
from clapsep_cli.cli.running import JobOptions, report_failures, run_job


@click.command()
@request_options
@stem_plan_options
@input_options
@engine_settings
@placement_options
def extract(req: api.Request, files: list[Path], plan: api.OutputPlan, inputs: Inputs, reporting: Reporting,
            engine: Engine, placement: Placement) -> None:
    """Keep the sound QUERY describes, from each FILE (or folder).

    \b
    QUERY is a text such as "dog barking"; an empty QUERY ("") with --negative keeps
    everything but the negative. Writes <name>.<query>.<ext> next to each source.
    \b
      clapsep extract "dog barking" walk.wav
      clapsep extract -p dialogue --residual interviews/
      clapsep extract "" -n "wind noise" take.flac
    """
    opts = JobOptions(plan=plan, inputs=inputs, reporting=reporting, engine=engine, placement=placement)
    report(run_job(req, files, opts), reporting.json)


@click.command()
@removal_options
@removal_plan_options
@input_options
@engine_settings
@placement_options
def remove(req: api.Request, files: list[Path], plan: api.OutputPlan, inputs: Inputs, reporting: Reporting,
           engine: Engine, placement: Placement) -> None:
    """Keep everything but the sound QUERY describes, from each FILE (or folder).

    \b
    Writes <name>.without_<query>.<ext>; --residual also writes what was removed.
    --negative names sounds to protect (kept for certain).
      clapsep remove "wind noise" take.wav
      clapsep remove -p hum-buzz --residual podcast.flac
    """
    opts = JobOptions(plan=plan, inputs=inputs, reporting=reporting, engine=engine, placement=placement)
    report(run_job(req, files, opts), reporting.json)


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
