"""``clapsep presets``: list, show, create and remove named queries."""

from __future__ import annotations

import click

from clapsep_cli.cli.common import emit_json
from clapsep_cli.queries import presets


@click.group(name="presets")
def presets_group() -> None:
    """Named queries: shipped ones, and your own (which override shipped ones by name)."""


@presets_group.command(name="list")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
def list_(json_output: bool) -> None:
    """Show every preset with its description."""
    good, bad = presets.load_all()
    if json_output:
        emit_json({"user_dir": str(presets.user_dir()),
                   "presets": [{"name": p.name, "source": p.source, "description": p.description,
                                "tag": p.tag, "residual": p.residual, "query": p.query.describe(),
                                "path": str(p.path)} for p in good],
                   "invalid": bad})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "from", "description")
        for p in good:
            table.add_row(p.name, p.source, p.description)
        Console().print(table)
    for line in bad:
        click.echo(f"clapsep: invalid preset: {line}", err=True)


@presets_group.command()
@click.argument("name")
def show(name: str) -> None:
    """Print a preset's file and where it lives."""
    preset = presets.load(name)
    click.echo(f"# {preset.path} ({preset.source})")
    click.echo(preset.path.read_text(encoding="utf-8"), nl=False)


@presets_group.command()
@click.argument("name")
@click.option("--positive", "-q", multiple=True, metavar="TEXT", help="What to keep (repeatable).")
@click.option("--negative", "-n", multiple=True, metavar="TEXT", help="What to reject (repeatable).")
@click.option("--description", "-d", default="", help="One line saying what the preset is for.")
@click.option("--tag", "--suffix", "tag", help="Tag used in stem file names (default: the preset name; --suffix is "
              "its old name).")
@click.option("--residual/--no-residual", default=None, help="Also write the residual when this preset is used.")
@click.option("--audio-weight", type=click.FloatRange(0.0, 1.0), help="Weight of reference audio against text.")
@click.option("--from", "base", metavar="PRESET", help="Start from an existing preset's settings.")
@click.option("--overwrite", is_flag=True, help="Replace a user preset of the same name.")
def new(name: str, positive: tuple[str, ...], negative: tuple[str, ...], description: str, tag: str | None,
        residual: bool | None, audio_weight: float | None, base: str | None, overwrite: bool) -> None:
    """Create a user preset NAME (it overrides a shipped preset of that name)."""
    if base:
        start = presets.load(base)
        positive = positive or start.query.positive
        negative = negative or start.query.negative
        description = description or start.description
        residual = start.residual if residual is None else residual
        audio_weight = start.query.audio_weight if audio_weight is None else audio_weight
    text = presets.to_toml(description, list(positive), list(negative), tag, residual, audio_weight)
    click.echo(str(presets.create(name, text, overwrite)))


@presets_group.command()
@click.argument("name")
def rm(name: str) -> None:
    """Remove a user preset."""
    click.echo(f"removed {presets.remove(name)}")
