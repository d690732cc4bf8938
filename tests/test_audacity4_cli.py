"""``clapsep audacity setup | install`` for the Audacity a user has (3.x or 4.x), and the 3.x-only
commands' one line for an Audacity 4 user (no Audacity needed: a fake HOME holds its settings)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clapsep_cli.bridges.audacity4 import setup as a4setup
from clapsep_cli.cli import main
from clapsep_cli.queries import presets

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with no Audacity settings, an `audacity` on PATH that says no version, and no Audacity
    running."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "bin").mkdir()
    fake_audacity(tmp_path / "bin", "exit 1")  # hides one that may be installed here
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(a4setup, "_running_majors", lambda: set())
    return home


def fake_audacity(folder: Path, body: str) -> None:
    program = folder / "audacity"
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)


def audacity4_settings(home: Path) -> None:
    (home / ".config" / "Audacity").mkdir(parents=True)
    (home / ".config" / "Audacity" / "Audacity4.ini").write_text("[General]\n")


def audacity3_settings(home: Path) -> None:
    (home / ".config" / "audacity").mkdir(parents=True)
    (home / ".config" / "audacity" / "audacity.cfg").write_text("[Version]\nMajor=3\n")


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def bundles(home: Path) -> list[Path]:
    return sorted((home / ".local/share/Audacity/Audacity4/extensions").glob("clapsep-*"))


@needs_cc
def test_setup_for_an_audacity4_user_installs_the_extension_and_says_where_its_menus_are(user: Path) -> None:
    audacity4_settings(user)
    assert run("audacity", "setup", "--check").exit_code == 1
    result = run("audacity", "setup")
    assert result.exit_code == 0, result.output
    [bundle] = bundles(user)
    assert result.stdout.splitlines()[0] == (f"Audacity 4 (Audacity 4's settings are here): installed clapsep's "
                                             f"extension in {bundle}")
    assert "  Effect > Extension > clapsep > Extract a sound, Extract: <preset> (" in result.stdout
    assert "  Analyze > Extension > clapsep > Find a sound, Find: <preset> (" in result.stdout
    effects = json.loads((bundle / "manifest.json").read_text())["contributes"]["audacity.effects"]
    assert len(effects) == 3 * (1 + len(presets.available()))
    assert (bundle / a4setup.platform_folder() / "clapsep.so").is_file()
    assert not (user / ".config" / "audacity").exists()  # 3.x's settings untouched: none written
    check = run("audacity", "setup", "--check")
    assert check.exit_code == 0 and "clapsep's extension is installed" in check.stdout


@needs_cc
def test_install_with_presets_replaces_the_bundle_and_names_the_menu_entries(user: Path) -> None:
    audacity4_settings(user)
    assert run("audacity", "setup").exit_code == 0
    [first] = bundles(user)
    result = run("audacity", "install", "-p", "dog", "-p", "rain")
    assert result.exit_code == 0, result.output
    [second] = bundles(user)
    assert second != first and f"removed an older one: {first}" in result.stdout
    assert "  Effect > Extension > clapsep > Remove a sound, Remove: <preset> (2: dog, rain)" in result.stdout
    titles = [e["title"] for e in json.loads((second / "manifest.json").read_text())["contributes"]["audacity.effects"]]
    assert titles == ["Extract a sound", "Extract: dog", "Extract: rain", "Remove a sound", "Remove: dog",
                      "Remove: rain", "Find a sound", "Find: dog", "Find: rain"]


def test_install_for_audacity3_writes_macros_not_the_extension(user: Path) -> None:
    audacity4_settings(user)
    result = run("audacity", "install", "--for", "3", "-p", "dog", "--folder", user / "Macros")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (user / "Macros").iterdir()) == ["clapsep-dog.txt", "clapsep-find-dog.txt"]
    assert bundles(user) == []


def test_setup_with_audacity3_options_sets_up_mod_script_pipe(user: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from clapsep_cli.bridges.audacity import setup as aset

    monkeypatch.setattr(aset, "audacity_running", lambda: False)
    audacity4_settings(user)
    module = tmp_path / "mod-script-pipe.so"
    module.write_bytes(b"\x7fELF")
    result = run("audacity", "setup", "--module", module, "--config", tmp_path / "audacity.cfg")
    assert result.exit_code == 0 and "enabled mod-script-pipe" in result.stdout
    assert bundles(user) == []


def test_no_c_compiler_is_one_line(user: Path) -> None:
    audacity4_settings(user)
    result = run("audacity", "setup", "--cc", "no-such-cc")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("clapsep: error: no C compiler found") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["extract", "dog"], ["find", "-p", "dog"], ["watch", "--once"]])
def test_audacity3_commands_tell_an_audacity4_user_what_to_do_instead(user: Path, args: list[str]) -> None:
    audacity4_settings(user)
    result = run("audacity", *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "Effect > Extension > clapsep" in result.stderr and "Audacity 4" in result.stderr


@pytest.mark.parametrize("running, settings, refused", [
    ({4}, set(), True), ({3}, {4}, False), ({3, 4}, set(), False),
    (set(), {4}, True), (set(), {3, 4}, False), (set(), {3}, False), (set(), set(), False),
])
def test_only_audacity4_needs_it_running_alone_or_its_settings_alone(user: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     running: set[int], settings: set[int],
                                                                     refused: bool) -> None:
    monkeypatch.setattr(a4setup, "_running_majors", lambda: set(running))
    if 4 in settings:
        audacity4_settings(user)
    if 3 in settings:
        audacity3_settings(user)
    assert a4setup.only_audacity4() is refused


def test_which_audacity_prefers_the_running_one_then_the_installed_then_the_last_used(
        user: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audacity3_settings(user)
    audacity4_settings(user)
    os.utime(user / ".config" / "audacity" / "audacity.cfg", (2e9, 2e9))  # 3.x used last
    assert a4setup.which_audacity() == a4setup.Which(3, "Audacity 3's settings are here (the one used last)")
    fake_audacity(tmp_path / "bin", "echo 'Audacity 4.0.1'")
    assert a4setup.which_audacity() == a4setup.Which(4, "`audacity --version` says 4.0.1")
    assert a4setup.which_audacity(spawn=False).major == 3
    monkeypatch.setattr(a4setup, "_running_majors", lambda: {3})
    assert a4setup.which_audacity() == a4setup.Which(3, "Audacity 3 is running")


def test_running_majors_sees_only_this_users_audacity_processes_in_this_root() -> None:
    # Whatever runs here: the scan reads /proc without failing and names only 3 or 4.
    assert a4setup._running_majors() <= {3, 4}
