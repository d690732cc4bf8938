"""Start-up: commands load on first use, so help, version and presets never import torch."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import click
import click.testing
import pytest

import clapsep_cli.cli
from clapsep_cli.cli import COMMANDS, ClapsepGroup, LazyCommand, main

# Runs clapsep with torch made unimportable (as in an install without it), then names every
# module the process imported.
BLOCK_TORCH = """
import sys
sys.modules["torch"] = None
from clapsep_cli.cli import main
try:
    main(sys.argv[1:], prog_name="clapsep")
finally:
    sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n")
"""


def clapsep(tmp_path: Path, *args: str, torch_blocked: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "80"}
    cmd = [sys.executable, "-c", BLOCK_TORCH] if torch_blocked else [sys.executable, "-X", "importtime", "-m",
                                                                      "clapsep_cli"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines or the MODULES line."""
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", stderr, flags=re.MULTILINE))
    for line in stderr.splitlines():
        if line.startswith("MODULES "):
            names.update(line.split()[1:])
    return names


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["presets", "list"], ["presets", "list", "--json"],
                                  ["presets", "show", "dialogue"]])
def test_light_commands_import_no_torch(tmp_path: Path, args: list[str]) -> None:
    result = clapsep(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    modules = imported(result.stderr)
    assert "click" in modules  # the importtime output was read
    assert not {"torch", "numpy", "laion_clap"} & modules
    assert not any(m.startswith("clapsep_cli.cli.") and m.endswith("_cmd") and m != "clapsep_cli.cli.presets_cmd"
                   for m in modules)


@pytest.mark.parametrize("command", ["extract", "remove", "find", "train"])
def test_help_of_a_job_command_imports_no_torch(tmp_path: Path, command: str) -> None:
    """Their option groups (cli/options.py) build values only when the command runs. (numpy
    comes with the library's facade, through events.detect, for all but train.)"""
    result = clapsep(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert not {"torch", "laion_clap"} & imported(result.stderr)


@pytest.mark.parametrize("args", [["presets", "list"], ["presets", "show", "dialogue"]])
def test_presets_work_without_torch(tmp_path: Path, args: list[str]) -> None:
    result = clapsep(tmp_path, *args, torch_blocked=True)
    assert result.returncode == 0, result.stderr
    assert "dialogue" in result.stdout


def test_help_lists_every_command_with_its_short_help(tmp_path: Path) -> None:
    result = clapsep(tmp_path, "--help")
    listing = result.stdout.split("Commands:\n")[1]
    rows = dict(re.findall(r"^  (\S+)\s+(.+)$", listing, flags=re.MULTILINE))
    assert sorted(rows) == sorted(COMMANDS)
    for name, row in rows.items():
        assert main.load_command(name).get_short_help_str(10**6).startswith(row.removesuffix("..."))


def command_modules() -> list[str]:
    return [f"clapsep_cli.cli.{m.name}" for m in pkgutil.iter_modules(clapsep_cli.cli.__path__)
            if m.name.endswith("_cmd")]


def test_registry_names_every_top_level_command() -> None:
    """A command defined in a *_cmd module but missing from the registry would vanish from clapsep."""
    found = {}
    for module_name in command_modules():
        module = importlib.import_module(module_name)
        commands = {name: obj for name, obj in vars(module).items() if isinstance(obj, click.Command)}
        nested = {id(sub) for obj in commands.values() if isinstance(obj, click.Group) for sub in obj.commands.values()}
        found.update({obj.name: f"{module_name}:{name}" for name, obj in commands.items() if id(obj) not in nested})
    assert found == {name: entry.import_path for name, entry in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_registry_short_help_is_the_commands_own(name: str) -> None:
    command = main.load_command(name)
    assert command.name == name
    for limit in range(10, 200):
        listed = click.Command(name, help=COMMANDS[name].short_help).get_short_help_str(limit)
        assert listed == command.get_short_help_str(limit), limit


@pytest.mark.parametrize("width", [40, 60, 80])
def test_commands_section_matches_clicks_own(width: int) -> None:
    eager = click.Group("clapsep", commands={name: main.load_command(name) for name in COMMANDS})
    pages = []
    for group in (main, eager):
        ctx = click.Context(group, terminal_width=width)
        formatter = ctx.make_formatter()
        group.format_commands(ctx, formatter)
        pages.append(formatter.getvalue())
    assert pages[0] == pages[1]
    assert all(name in pages[0] for name in COMMANDS)


def test_unknown_command_is_clicks_error(tmp_path: Path) -> None:
    result = clapsep(tmp_path, "separate", "x.wav")
    assert result.returncode == 2
    assert "Error: No such command 'separate'." in result.stderr
    assert "torch" not in imported(result.stderr)


def test_command_that_cannot_load_is_one_line(tmp_path: Path) -> None:
    result = clapsep(tmp_path, "evaluate", "--help", torch_blocked=True)  # evaluate needs torch to load
    assert result.returncode == 1
    lines = result.stderr.split("\nMODULES ")[0].strip().splitlines()
    assert lines == [("clapsep: error: cannot load the 'evaluate' command (ModuleNotFoundError: "
                      "import of torch halted; None in sys.modules)")]
    assert result.stdout == ""


def test_registry_entry_that_is_not_a_command_is_an_error() -> None:
    group = ClapsepGroup("g", lazy_commands={"version": LazyCommand("clapsep_cli:__version__", "The version.")})
    result = click.testing.CliRunner().invoke(group, ["version"])
    assert result.exit_code == 1
    assert result.output.strip() == ("clapsep: error: cannot load the 'version' command: clapsep_cli:__version__ "
                                     "is not a command")


def test_loaded_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lazily loaded group dispatches to its subcommands as before."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main.load_command("presets") is importlib.import_module("clapsep_cli.cli.presets_cmd").presets_group
    result = click.testing.CliRunner().invoke(main, ["presets", "show", "dialogue"])
    assert result.exit_code == 0, result.output
    assert "description" in result.output
