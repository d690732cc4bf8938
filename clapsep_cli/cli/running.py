"""Running the job a command line asks for (its options' values come from
:mod:`clapsep_cli.cli.options`): planning, then running it in the warm service, here or on a
Ray cluster; the JSON report; the failures on stderr."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from clapsep_cli import api
from clapsep_cli.audio import atomic
from clapsep_cli.cli.common import emit_json, flag, make_executor
from clapsep_cli.cli.options import Engine, Inputs, Placement, Reporting
from clapsep_cli.errors import ClapsepError


@dataclass(frozen=True)
class JobOptions:
    """Everything about a run besides the query and the inputs, as the command line gave it
    (the values of :mod:`clapsep_cli.cli.options`)."""

    plan: api.OutputPlan | api.EventPlan
    inputs: Inputs
    reporting: Reporting
    engine: Engine
    placement: Placement


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
    if opts.reporting.file is not None:
        write_report(opts.reporting.file, data)
    if opts.reporting.json:
        emit_json(data)


def _run(req: api.Request, files: list[Path], opts: JobOptions) -> api.Job:
    from clapsep_cli.cli.progress import RichProgress, wanted

    opts.placement.check()
    inputs = opts.inputs
    job = api.plan(files, req, plan=opts.plan, region=inputs.region, pattern=inputs.pattern,
                   include_stems=inputs.include_stems)  # no torch needed yet
    if not job.pending:  # every input failed or was skipped: no executor (no torch, no model, no service)
        job.model = opts.engine.model
        return job
    executor = _executor(opts)
    bar = RichProgress() if wanted(opts.reporting.json) else None
    with bar if bar else contextlib.nullcontext():
        return executor.run(job, bar)


def _executor(opts: JobOptions) -> Any:
    """Where the job runs: in the warm service (``--server``), here, or on the Ray cluster
    ``--ray`` names."""
    engine, placement = opts.engine, opts.placement
    return make_executor(placement.server, engine.model, engine.device, engine.precision, quiet=opts.reporting.json,
                         overlap=engine.overlap, batch_size=engine.batch_size, ray=placement.ray,
                         ray_cpus=placement.ray_cpus, ray_workers=placement.ray_workers)


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
