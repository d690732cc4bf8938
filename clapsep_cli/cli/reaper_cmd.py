"""``clapsep reaper``: ReaScript actions that extract or find a sound in REAPER's selected items."""

from __future__ import annotations

from pathlib import Path

import click

from clapsep_cli.bridges.reaper import job_files, setup


@click.group()
def reaper() -> None:
    """Install REAPER actions that extract or find a sound (two per preset, plus two free-text ones)."""


@reaper.command()
@click.option("--resource-path", type=click.Path(file_okay=False, path_type=Path),
              help="REAPER's resource folder (default: REAPER's per-user folder on this OS).")
def install(resource_path: Path | None) -> None:
    """Write the actions into REAPER's Scripts/ folder and say how to put them on a toolbar.

    The actions record this clapsep, its model store ($CLAPSEP_HOME) and ffmpeg as absolute
    paths. Run it again after adding, changing or removing presets, or after moving any of those.
    """
    done = setup.install(resource_path or setup.default_resource_path())
    for problem in done.problems:
        click.echo(f"skipped a preset: {problem}", err=True)
    click.echo(f"Wrote {len(done.written)} REAPER actions to {done.folder}:")
    for path in done.written:
        click.echo(f"  {path.name}")
    for path in done.removed:
        click.echo(f"Removed {path.name} (its preset is gone).")
    click.echo(setup.recorded_help(done))
    click.echo(setup.toolbar_help(done))


@reaper.command(hidden=True)
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
def run(job: Path) -> None:
    """Run a job file written by a REAPER action (the actions call this; log and result go beside it)."""
    job_files.run_job_file(job)
