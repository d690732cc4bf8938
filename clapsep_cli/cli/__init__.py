"""The ``clapsep`` command line: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from clapsep_cli import __version__
from clapsep_cli.errors import ClapsepError


class ClapsepGroup(click.Group):
    """A command group that turns :class:`ClapsepError` into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClapsepError as err:
            from clapsep_cli.cli.common import flag

            click.echo(f"clapsep: error: {err.render(flag)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("clapsep: interrupted", err=True)
            sys.exit(130)


@click.group(cls=ClapsepGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clapsep")
def main() -> None:
    """Pull one sound out of a recording by describing it (CLAPSep).

    \b
    Examples:
      clapsep extract "dog barking" walk.wav
      clapsep extract "speech" -n "wind noise" --residual field/*.flac
      clapsep models download
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _register() -> None:
    from clapsep_cli.cli import (
        audacity_cmd, embed_cmd, evaluate_cmd, extract_cmd, models_cmd, presets_cmd, reaper_cmd, train_cmd)

    main.add_command(extract_cmd.extract)
    main.add_command(extract_cmd.remove)
    main.add_command(presets_cmd.presets_group)
    main.add_command(embed_cmd.embed)
    main.add_command(evaluate_cmd.evaluate)
    main.add_command(train_cmd.train)
    main.add_command(models_cmd.models)
    main.add_command(audacity_cmd.audacity)
    main.add_command(reaper_cmd.reaper)


_register()
