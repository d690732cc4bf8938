"""The ``clapsep`` command line: a thin layer that parses, calls the library and prints.

Commands are loaded on first use (click's lazy-group pattern), so ``clapsep --help``,
``clapsep --version`` and the preset commands start without importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from clapsep_cli import __version__
from clapsep_cli.errors import ClapsepError


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``"module:attribute"``) and its short help, shown by ``--help``
    without importing the module (a test checks it equals the command's own)."""

    import_path: str
    short_help: str


COMMANDS = {
    "extract": LazyCommand("clapsep_cli.cli.extract_cmd:extract",
                           "Keep the sound QUERY describes, from each FILE (or folder)."),
    "remove": LazyCommand("clapsep_cli.cli.extract_cmd:remove",
                          "Keep everything but the sound QUERY describes, from each FILE (or folder)."),
    "find": LazyCommand("clapsep_cli.cli.find_cmd:find",
                        "Find where the sound QUERY describes occurs in each FILE (or folder)."),
    "serve": LazyCommand("clapsep_cli.cli.serve_cmd:serve",
                         "Keep models loaded and run every client's jobs: `clapsep extract`, `remove` and `find` "
                         "(with --server auto, the default), `clapsep audacity` and the REAPER actions hand their "
                         "jobs over and answer without loading anything."),
    "presets": LazyCommand("clapsep_cli.cli.presets_cmd:presets_group",
                           "Named queries: shipped ones, and your own (which override shipped ones by name)."),
    "embed": LazyCommand("clapsep_cli.cli.embed_cmd:embed",
                         "Cache the CLAP embeddings of TEXTS and presets, so later runs start without the "
                         "text encoder."),
    "evaluate": LazyCommand("clapsep_cli.cli.evaluate_cmd:evaluate",
                            "Score a model on MANIFEST: the paper's protocol (source_file, positive_caption, "
                            "noise_file, negative_caption: 10 s clips mixed at 0 dB) or your own pairs "
                            "(mixture_file, target_file, positive_caption[, negative_caption])."),
    "train": LazyCommand("clapsep_cli.cli.train_cmd:train",
                         "Fine-tune on the captioned clips in DATA_DIR; the result is an installed model."),
    "models": LazyCommand("clapsep_cli.cli.models_cmd:models",
                          "Install, list and locate models (store: $CLAPSEP_HOME or your user data folder)."),
    "audacity": LazyCommand("clapsep_cli.cli.audacity_cmd:audacity",
                            "Work inside a running Audacity (mod-script-pipe)."),
    "reaper": LazyCommand("clapsep_cli.cli.reaper_cmd:reaper",
                          "Install REAPER actions that extract or find a sound (two per preset, plus two "
                          "free-text ones)."),
}


class ClapsepGroup(click.Group):
    """A command group that imports each command on first use and turns :class:`ClapsepError`
    into one line on stderr and exit 1."""

    def __init__(self, *args: Any, lazy_commands: dict[str, LazyCommand] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            return self.load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def load_command(self, name: str) -> click.Command:
        """Import the command ``name``; a module that fails to import is one clear error."""
        module_name, attribute = self.lazy_commands[name].import_path.split(":")
        try:
            command = getattr(importlib.import_module(module_name), attribute)
        except Exception as err:  # noqa: BLE001 - any failure to import is reported the same way
            raise ClapsepError(f"cannot load the '{name}' command ({type(err).__name__}: {err})") from err
        if not isinstance(command, click.Command):
            raise ClapsepError(f"cannot load the '{name}' command: {self.lazy_commands[name].import_path} "
                               "is not a command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands as click does, taking lazy commands' short help from the registry."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, click.Command(name, help=self.lazy_commands[name].short_help)))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

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


@click.group(cls=ClapsepGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clapsep")
def main() -> None:
    """Pull one sound out of a recording by describing it (CLAPSep).

    \b
    Examples:
      clapsep extract "dog barking" walk.wav
      clapsep extract "speech" -n "wind noise" --residual field/*.flac
      clapsep find "dog barking" walk.wav
      clapsep models download
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
