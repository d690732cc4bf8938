"""``clapsep serve``: the warm per-user service, its status, and stopping it."""

from __future__ import annotations

import datetime
import time

import click

from clapsep_cli.cli.common import TimeType, emit_json
from clapsep_cli.errors import ClapsepError


@click.command()
@click.option("--idle", type=TimeType(), default="15:00", show_default=True,
              help="Exit after this long without a job (s or hh:mm:ss), giving the memory back.")
@click.option("--status", "show_status", is_flag=True,
              help="Only say whether the service runs: its job, queue, models and memory (exit 1 if none).")
@click.option("--stop", "stop_it", is_flag=True, help="Stop the running service (its running job is cancelled).")
@click.option("--json", "json_output", is_flag=True, help="With --status: print it as JSON.")
def serve(idle: float, show_status: bool, stop_it: bool, json_output: bool) -> None:
    """Keep models loaded and run every client's jobs: `clapsep extract`, `remove` and `find`
    (with --server auto, the default), `clapsep audacity` and the REAPER actions hand their
    jobs over and answer without loading anything. One service per user, on a socket only
    this user can open; jobs run one after another, in order of arrival.

    \b
      clapsep serve &            # or let the REAPER actions start it on first use
      clapsep serve --status
      clapsep serve --stop
    """
    from clapsep_cli.service import client

    if show_status or stop_it:
        if show_status and stop_it:
            raise ClapsepError("give --status or --stop, not both")
        if stop_it:
            pid = client.stop()
            if pid is None:
                raise ClapsepError("no clapsep service is running")
            click.echo(f"stopped the clapsep service (pid {pid})")
            return
        found = client.status()
        if found is None:
            raise ClapsepError("no clapsep service is running")
        emit_json(found) if json_output else click.echo(describe(found))
        return
    if idle <= 0:
        raise ClapsepError("--idle must be more than 0 s")
    from clapsep_cli.service.server import AlreadyRunning, Service

    try:
        Service(idle, say=lambda line: click.echo(f"clapsep serve: {line}", err=True)).serve()
    except AlreadyRunning as err:  # what was asked for holds: a service runs (a client racing another waits for it)
        click.echo(f"clapsep serve: {err}", err=True)


def describe(found: dict) -> str:
    """The status as a few lines for people."""
    started = datetime.datetime.fromtimestamp(found["started"]).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"clapsep {found['version']} service, pid {found['pid']}, since {started}; model store {found['store']}",
             f"memory: {found['rss_bytes'] / 2**20:.0f} MiB resident; {found['jobs_done']} jobs done; exits after "
             f"{found['idle_exit']:g} s idle (idle for {found['idle_for']:g} s)"]
    running = found.get("running")
    if running:
        lines.append(f"running: a job of {running['items']} files for client {running['client']}, "
                     f"for {time.time() - running['started_at']:.1f} s")
    else:
        lines.append("running: nothing")
    lines.append(f"queued: {len(found['queued'])} jobs")
    for m in found["models"]:
        lines.append(f"model {m['model']} on {m['device']}, {m['precision']} (overlap {m['overlap']:g}, batch "
                     f"{m['batch_size']}){'' if m['loaded'] else ', not loaded yet'}")
    return "\n".join(lines)
