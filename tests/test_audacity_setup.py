"""``clapsep audacity setup | install`` and the command line's one-line errors."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clapsep_cli.bridges.audacity import setup as audacity_setup
from clapsep_cli.bridges.audacity.pipe import PIPE_DIR_ENV
from clapsep_cli.bridges.audacity.setup import (
    config_file,
    enable_pipe,
    install_macros,
    macro_text,
    macros_folder,
    pipe_problems,
)
from clapsep_cli.cli import main
from clapsep_cli.errors import ClapsepError
from clapsep_cli.queries import presets

USER_SETTINGS = """PrefsVersion=1.1.1r1
[GUI]
ShowSplashScreen=0
[Module]
mod-script-pipe=4
[ModulePath]
mod-script-pipe=/old/place/mod-script-pipe.so
[Version]
Major=3
"""


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A stand-in mod-script-pipe.so with a known local modification time."""
    path = tmp_path / "modules" / "mod-script-pipe.so"
    path.parent.mkdir()
    path.write_bytes(b"\x7fELF")
    stamp = dt.datetime(2023, 2, 1, 20, 56, 51).timestamp()
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audacity_setup, "audacity_running", lambda: False)


def test_setup_writes_the_three_module_settings_and_keeps_the_rest(tmp_path: Path, module: Path,
                                                                   not_running: None) -> None:
    config = tmp_path / "audacity.cfg"
    config.write_text(USER_SETTINGS)
    result = run("audacity", "setup", "--module", module, "--config", config)
    assert result.exit_code == 0, result.output
    assert "enabled mod-script-pipe" in result.output
    assert config.read_text() == (
        "PrefsVersion=1.1.1r1\n[GUI]\nShowSplashScreen=0\n[Module]\nmod-script-pipe=1\n[ModulePath]\n"
        f"mod-script-pipe={module}\n[Version]\nMajor=3\n[ModuleDateTime]\nmod-script-pipe=2023-02-01T20:56:51\n")
    assert run("audacity", "setup", "--module", module, "--config", config, "--check").exit_code == 0
    again = run("audacity", "setup", "--module", module, "--config", config)
    assert "already enabled" in again.output


def test_setup_check_names_what_is_missing(tmp_path: Path, module: Path) -> None:
    config = tmp_path / "audacity.cfg"
    config.write_text(USER_SETTINGS)
    result = run("audacity", "setup", "--module", module, "--config", config, "--check")
    assert result.exit_code == 1
    assert "[Module] mod-script-pipe is 4, needs 1" in result.output
    assert "[ModuleDateTime] mod-script-pipe is missing, needs 2023-02-01T20:56:51" in result.output
    assert config.read_text() == USER_SETTINGS


def test_a_newer_module_file_needs_setup_again(tmp_path: Path, module: Path, not_running: None) -> None:
    config = tmp_path / "audacity.cfg"
    enable_pipe(config, module)
    os.utime(module, (module.stat().st_atime, module.stat().st_mtime + 3600))
    assert pipe_problems(config, module) == [
        "[ModuleDateTime] mod-script-pipe is 2023-02-01T20:56:51, needs 2023-02-01T21:56:51"]


def test_setup_refuses_while_audacity_runs(tmp_path: Path, module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audacity_setup, "audacity_running", lambda: True)
    config = tmp_path / "audacity.cfg"
    result = run("audacity", "setup", "--module", module, "--config", config)
    assert result.exit_code == 1
    assert result.output == ("clapsep: error: Audacity is running: quit it first "
                             "(it rewrites its settings when it quits)\n")
    assert not config.exists()


def test_setup_without_the_module_is_one_line(tmp_path: Path) -> None:
    result = run("audacity", "setup", "--module", tmp_path / "nope.so", "--config", tmp_path / "a.cfg")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "no such file" in result.output


def test_config_and_macro_folders_follow_xdg_and_the_old_data_folder(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config_file() == tmp_path / "cfg" / "audacity" / "audacity.cfg"
    assert macros_folder() == tmp_path / "data" / "audacity" / "Macros"
    (tmp_path / ".audacity-data").mkdir()
    assert config_file() == tmp_path / ".audacity-data" / "audacity.cfg"
    assert macros_folder() == tmp_path / ".audacity-data" / "Macros"


def test_install_writes_two_request_macros_per_preset_and_drops_stale_ones(tmp_path: Path) -> None:
    folder = tmp_path / "Macros"
    folder.mkdir()
    (folder / "Fade Ends.txt").write_text("Select:Start=\"0\" End=\"1\"\n")
    (folder / "clapsep-gone.txt").write_text(macro_text("clapsep:gone"))
    (folder / "clapsep-find-gone.txt").write_text(macro_text("clapsep-find:gone"))
    (folder / "clapsep-notes.txt").write_text("Normalize:\n")
    result = run("audacity", "install", "--folder", folder)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["Fade Ends.txt", "clapsep-notes.txt"] + [f"clapsep-{n}.txt" for n in presets.available()]
                           + [f"clapsep-find-{n}.txt" for n in presets.available()])
    assert (folder / "clapsep-dog.txt").read_text() == (
        'NyquistPrompt:Command="(list (list 0 (get-duration 1) \\"clapsep:dog\\"))" Version=4\n')
    assert (folder / "clapsep-find-dog.txt").read_text() == (
        'NyquistPrompt:Command="(list (list 0 (get-duration 1) \\"clapsep-find:dog\\"))" Version=4\n')
    assert f"removed {folder / 'clapsep-gone.txt'}" in result.output
    assert f"removed {folder / 'clapsep-find-gone.txt'}" in result.output

    result = run("audacity", "install", "--folder", folder, "-p", "rain")
    assert result.exit_code == 0
    assert sorted(p.name for p in folder.glob("clapsep-*")) == ["clapsep-find-rain.txt", "clapsep-notes.txt",
                                                                "clapsep-rain.txt"]
    assert run("audacity", "install", "--folder", folder, "-p", "nosuch").exit_code == 1


def test_presets_whose_macros_would_share_a_file_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ClapsepError, match="the presets 'find-dog' and 'dog' would both have the macro "
                                           "clapsep-find-dog: rename one of them"):
        install_macros(["find-dog", "dog"], tmp_path / "Macros")
    assert not (tmp_path / "Macros").exists()


@pytest.mark.parametrize("command", ["extract", "find"])
def test_a_request_without_audacity_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                command: str) -> None:
    monkeypatch.setenv(PIPE_DIR_ENV, str(tmp_path))
    result = run("audacity", command, "dog")
    assert result.exit_code == 1
    assert result.output.startswith("clapsep: error: Audacity is not running with mod-script-pipe (")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("command, args, message", [
    *[(command, args, message) for command in ("extract", "find") for args, message in [
        (["-n", " "], "a query text is empty"),
        ([], "empty query"),
        (["-p", "nosuch"], "unknown preset 'nosuch'"),
    ]],
    ("find", ["dog", "--threshold", "0.2,0.3"], "the release level must be in (0, threshold]"),
])
def test_a_bad_request_is_refused_before_touching_audacity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           command: str, args: list[str], message: str) -> None:
    monkeypatch.setenv(PIPE_DIR_ENV, str(tmp_path))  # no Audacity there: an error about it would show
    result = run("audacity", command, *args)
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
