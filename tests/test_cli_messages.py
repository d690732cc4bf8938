"""What the command line tells a user: hints that work as given, help for every option,
summaries that count right, progress that says what it counts."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clapsep_cli.cli import main
from clapsep_cli.models import install, store
from clapsep_cli.network.architecture import TINY
from tests.helpers import Artefacts, tone, write_audio

REPO = Path(__file__).resolve().parents[1]


def test_the_tokenizer_hint_is_a_command_that_works(empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    install.install(store.DEFAULT_MODEL, tiny_files.clap, tiny_files.layouts[1], None, config=TINY)
    src = write_audio(tmp_path / "walk.wav", tone(1.0, 32000), 32000)
    first = CliRunner().invoke(main, ["extract", "dog", str(src)])
    assert first.exit_code == 1
    hint = re.search(r"offline `(clapsep models import [^`]+)`", first.output)
    assert hint, first.output
    files = {"FILE": [str(tiny_files.clap), str(tiny_files.layouts[1])], "DIR": [str(tiny_files.tokenizer)]}
    argv = [files[word].pop(0) if word in files else word for word in hint.group(1).split()[1:]]
    installed = CliRunner().invoke(main, [*argv, "--architecture", "tiny"])  # the tiny test model, not the default
    assert installed.exit_code == 0, installed.output
    assert CliRunner().invoke(main, ["extract", "dog", str(src)]).exit_code == 0


def test_preset_errors_name_the_preset_not_a_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAPSEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    result = CliRunner().invoke(main, ["presets", "new", "mine", "-q", "a dog", "--tag", "Not A Tag"])
    assert result.exit_code == 1
    assert "preset 'mine': 'tag' must be a file-name tag" in result.output
    assert ".tmp" not in result.output


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*path, name))
        else:
            out.append((" ".join((*path, name)), cmd))
    return out


def test_every_option_has_help_text() -> None:
    missing = [f"{name} {opt.opts[0]}" for name, cmd in _commands(main) for opt in cmd.params
               if isinstance(opt, click.Option) and not opt.help]
    assert missing == []


def test_name_fields_are_explained_in_help() -> None:
    text = " ".join(CliRunner().invoke(main, ["extract", "--help"], terminal_width=400).output.split())
    assert "{suffix} the source's extension, without the dot" in text
    assert "{query} the query's tag" in text


def test_folder_summary_counts_only_attempted_files(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    write_audio(folder / "a.wav", tone(1.0, 32000), 32000)
    write_audio(folder / "b.wav", tone(1.0, 32000, seed=1), 32000)
    (folder / "c.wav").write_text("not audio")
    assert CliRunner().invoke(main, ["extract", "dog", str(folder / "a.wav")]).exit_code == 0
    result = CliRunner().invoke(main, ["extract", "dog", str(folder)])
    assert result.exit_code == 1
    assert "clapsep: 1 of 2 files failed (1 skipped):" in result.output


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run clapsep with stdout on a pseudo-terminal (rich draws bars only there); its output."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "clapsep_cli", *args], cwd=cwd, env=env, stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    output = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, output
    return output


def test_progress_names_its_unit_and_a_single_file_has_no_overall_bar(home: Path, tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", tone(25.0, 16000), 16000)
    write_audio(tmp_path / "b.wav", tone(5.0, 16000, seed=1), 16000)
    one = _on_a_terminal(["extract", "dog", "a.wav"], tmp_path)
    assert "a.wav, 10 s segments" in one
    assert "files" not in one and "0/1" not in one
    two = _on_a_terminal(["extract", "rain", "a.wav", "b.wav"], tmp_path)
    assert re.search(r"files\s.*\d/2", two)


def _help(*command: str) -> str:
    """``clapsep COMMAND --help`` as one line of words (the terminal's wrapping undone)."""
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_remove_help_says_a_negative_is_protected_and_gives_its_own_default_name() -> None:
    text = _help("remove")
    assert "-n, --negative TEXT A sound to protect: kept in the result, not removed with QUERY" in text
    assert "--negative-audio FILE[@START-END] A reference clip of a sound to protect" in text
    assert "reject" not in text
    assert "{query} without_ and the query's tag" in text
    assert 'Default: {stem}.{query}.{ext}, so `remove "wind noise" take.wav` writes take.without_wind_noise.wav' in text
    assert "[default: {stem}.{query}.{ext}]" not in text  # extract's default, which would name take.wind_noise.wav


def test_extract_and_find_help_still_say_a_negative_is_rejected() -> None:
    for command in ("extract", "find"):
        text = _help(command)
        assert "-n, --negative TEXT A sound to reject (repeatable)." in text
        assert "{query} the query's tag" in text and "without_" not in text


def test_help_names_extras_as_installed_from_the_checkout() -> None:
    for command in ("extract", "remove"):
        text = _help(command)
        assert "pip install -e '.[ray]' in the clapsep checkout" in text
        assert "clapsep-cli[" not in text
