"""The REAPER bridge: ``clapsep reaper install``, ``clapsep reaper run``, and the Lua actions run
under Debian's lua5.4 against a fake ``reaper`` table (tests/reaper/fake_reaper.lua, written
from REAPER's ReaScript documentation) whose ExecProcess really starts clapsep, with an empty
environment, as a REAPER started from the macOS Dock does.

A scenario (written for the fake as a Lua table) holds: ``os`` (GetOS), ``resource``
(GetResourcePath), ``project_path`` (GetProjectPath), ``project_file`` (the first tab's file),
``time_selection`` ({start, end} or nil), ``tracks`` ({name, items = {{position, length, loop,
selected, take = {file, type, source_length, file_length, section, stretch_markers, values}}}}),
``answer`` (what the user types into GetUserInputs: a text, or a list of texts for a dialog of
several fields; nil cancels), ``extstate`` ({section = {key = value}}: REAPER's extended state at
the start), ``clock_speed`` (fake seconds
per real second), ``process_log`` (where started processes write), ``child_env`` (the only
variables a started process gets), ``time_limit`` (real seconds), ``fail_call`` (a reaper
function that raises) and ``events`` ({cycle, what}: what the user does that many defer cycles
after the action started clapsep; see ``happenings`` in the fake).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from clapsep_cli import api, resources
from clapsep_cli.audio.reader import AudioInfo, probe
from clapsep_cli.audio.region import END_TOLERANCE, Region
from clapsep_cli.bridges.reaper.job_files import Heartbeat, read_job
from clapsep_cli.bridges.reaper.lua import lua_literal, lua_string
from clapsep_cli.bridges.reaper.setup import (
    ASK_FILE,
    CORE,
    FIND_FILE,
    MARKER,
    Environment,
    clapsep_command,
    default_resource_path,
    install,
)
from clapsep_cli.cli import main
from clapsep_cli.errors import AudioError
from clapsep_cli.queries import presets
from tests.helpers import tone, write_audio

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "reaper"
CORE = resources.shipped("plugins") / "reaper" / CORE
LUA, LUAC = shutil.which("lua5.4"), shutil.which("luac5.4")
needs_lua = pytest.mark.skipif(LUA is None or LUAC is None, reason="needs Debian's lua5.4 and luac5.4")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="needs ffmpeg and ffprobe")
SHIPPED_PRESETS = sorted(p.stem for p in (resources.shipped("presets")).glob("*.toml"))
# A description with a quote of each kind, a comma and a non-ASCII letter.
ANSWER = 'dog\'s "bark", ü'
# What a started clapsep sees: nothing but what makes this checkout importable (an installed
# clapsep needs not even that), what keeps a test's child off the network, and the run's runtime
# folder with jobs kept in process (tests/test_service.py runs the actions through the service).
CHILD_ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLAPSEP_SERVER": "never",
             "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"]}
REAPER_LOG_LINE = "[REAPER action, REAPER 7.27/linux-x86_64 on "

DEFAULT_THRESHOLD = api.DetectOptions().threshold  # what the find actions start with


@pytest.fixture(autouse=True)
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """User presets live under this test's own config folder."""
    folder = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    return folder


def lua(*args: str | Path, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([LUA, *map(str, args)], capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def run_action(action: Path, scenario: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Run one action script against the fake REAPER; what the fake recorded."""
    log = tmp_path / "processes.log"
    scenario = {"os": "Other", "project_path": str(tmp_path / "project media"), "process_log": str(log),
                "child_env": CHILD_ENV, "time_limit": 120, **scenario}
    spec, out = tmp_path / "scenario.lua", tmp_path / "recorded.json"
    spec.write_text("return " + lua_literal(scenario) + "\n", encoding="utf-8")
    done = lua(HARNESS / "run.lua", spec, action, out)
    assert done.returncode == 0, done.stderr
    recorded = json.loads(out.read_text(encoding="utf-8"))
    recorded["processes"] = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    assert not recorded["timed_out"], recorded["processes"]
    return recorded


def no_script_error(recorded: dict[str, Any]) -> None:
    assert recorded["script_errors"] == [], "\n".join(recorded["script_errors"]) + recorded["processes"]


def take(file: Path | str, source_length: float, **kw: Any) -> dict[str, Any]:
    return {"file": str(file), "type": "WAVE", "source_length": source_length, "stretch_markers": 0, **kw}


def item(position: float, length: float, tk: dict[str, Any] | None, selected: bool = True, loop: bool = False
         ) -> dict[str, Any]:
    return {"position": position, "length": length, "selected": selected, "loop": loop, "take": tk}


def install_into(resource: Path, command: list[str] | None = None, env: Environment | None = None) -> Path:
    resource.mkdir(parents=True, exist_ok=True)
    return install(resource, command, env).folder


def jobs_folder(resource: Path) -> Path:
    return resource / "Data" / "clapsep"


def leftover_jobs(resource: Path) -> list[str]:
    folder = jobs_folder(resource)
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def fake_clapsep(path: Path, body: str) -> Path:
    """A stand-in for clapsep: a shell script started as `SCRIPT reaper run JOB`, with $job and
    $base (the job's path without .json) set."""
    path.write_text(f'#!/bin/sh\njob="$3"\nbase="${{job%.json}}"\n{body}\n', encoding="utf-8")
    path.chmod(0o755)
    return path


def answer_with(tmp_path: Path, items: list[dict[str, Any]] | None, delay: float = 0.0, error: str | None = None
                ) -> Path:
    """A fake clapsep that beats once and, after `delay` seconds, hands over this result (these
    items, or this error for the whole job) the way clapsep does (written under another name,
    then renamed into place)."""
    result = tmp_path / "result.lua"
    outcome = {"state": "done", "items": items} if error is None else {"state": "done", "error": error}
    result.write_text("return " + lua_literal(outcome) + "\n", encoding="utf-8")
    return fake_clapsep(tmp_path / "answering clapsep", f'printf . >> "$base.beat"\nsleep {delay}\n'
                        f'cp {shlex.quote(str(result))} "$base.tmp" && mv "$base.tmp" "$base.result.lua"')


def ok_stem(path: Path, frames: int = 500, rate: int = 1000) -> dict[str, Any]:
    return {"status": "ok", "target": str(path), "rate": rate, "offset": 0, "frames": frames}


# --- install -------------------------------------------------------------------------------

def test_default_resource_paths_per_os(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_resource_path("win32", {"APPDATA": r"C:\Users\Zoë\AppData\Roaming"}, home) == \
        Path(r"C:\Users\Zoë\AppData\Roaming") / "REAPER"
    assert default_resource_path("darwin", {}, home) == home / "Library" / "Application Support" / "REAPER"
    assert default_resource_path("linux", {}, home) == home / ".config" / "REAPER"


def read_config(action: Path) -> dict[str, Any]:
    """The config table an action script passes to the core, as Lua sees it."""
    script = (f"local cfg; local core = {{run = function(c) cfg = c end}}; dofile = function() return core end; "
              f"loadfile({lua_string(str(action))})(); "
              f"io.write(dofile_json(cfg))")
    fake = f"local F = dofile({lua_string(str(HARNESS / 'fake_reaper.lua'))}); dofile_json = F.to_json; "
    done = lua("-e", fake + script)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_install_writes_one_action_per_preset_and_the_free_text_one(tmp_path: Path, user_config: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    presets.create("my-truck", presets.to_toml("A truck", ["a truck engine idles"], []))
    dog = presets.create("dog", presets.to_toml("My own dog", ["a small dog yaps"], []))  # overrides the shipped one
    (presets.user_dir() / "broken.toml").write_text("positive = 3\n")
    monkeypatch.setenv("CLAPSEP_HOME", str(tmp_path / "store"))
    resource = tmp_path / "REAPER"
    folder = resource / "Scripts" / "clapsep"
    folder.mkdir(parents=True)
    stale, foreign = folder / "clapsep - gone.lua", folder / "clapsep - mine.lua"
    stale.write_text(f"{MARKER} extract 'gone'\n")
    foreign.write_text("-- the user's own script\n")

    result = CliRunner().invoke(main, ["reaper", "install", "--resource-path", str(resource)])

    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.glob("clapsep - *.lua"))
    expected = {f"clapsep - {kind}{n}.lua" for n in [*SHIPPED_PRESETS, "my-truck"] for kind in ("", "find ")}
    assert set(names) == expected | {ASK_FILE, FIND_FILE, foreign.name}
    assert not stale.exists() and "Removed clapsep - gone.lua" in result.output
    assert (folder / CORE).read_bytes() == CORE.read_bytes()
    assert "skipped a preset" in result.output and "broken.toml" in result.output
    assert "Customize toolbar" in result.output and "Load ReaScript" in result.output
    assert f"model store: {tmp_path / 'store'}" in result.output
    assert (folder / "clapsep - dog.lua").read_text(encoding="utf-8").startswith(MARKER)
    config = read_config(folder / "clapsep - dog.lua")
    assert config["command"] == clapsep_command() and config["label"] == "dog"
    assert config["preset_file"] == str(dog) and config["store"] == str(tmp_path / "store")
    assert read_config(folder / ASK_FILE).get("preset_file") is None
    assert config["kind"] == "extract" and "threshold" not in config
    find = read_config(folder / "clapsep - find dog.lua")
    assert (find["kind"], find["preset_file"], find["label"]) == ("find", str(dog), "dog")
    assert find["threshold"] == api.DetectOptions().threshold
    assert (folder / "clapsep - find dog.lua").read_text(encoding="utf-8").startswith(
        f"{MARKER} find 'dog' in the selected items.")
    assert read_config(folder / FIND_FILE)["kind"] == "find" and read_config(folder / FIND_FILE).get(
        "preset_file") is None


def test_install_records_absolute_paths_for_a_bare_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A relative $CLAPSEP_HOME and an ffmpeg found through a relative PATH entry are recorded as
    absolute paths; without ffmpeg the install says what will not work."""
    tools = tmp_path / "tools"
    tools.mkdir()
    fake_clapsep(tools / "ffmpeg", "exit 0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAPSEP_HOME", "my store")
    monkeypatch.setenv("PATH", "tools")
    resource = tmp_path / "REAPER"
    resource.mkdir()
    result = CliRunner().invoke(main, ["reaper", "install", "--resource-path", str(resource)])
    assert result.exit_code == 0, result.output
    config = read_config(resource / "Scripts" / "clapsep" / "clapsep - rain.lua")
    assert config["store"] == str(tmp_path / "my store") and config["ffmpeg"] == str(tools / "ffmpeg")
    assert f"ffmpeg:      {tools / 'ffmpeg'}" in result.output

    monkeypatch.setenv("PATH", str(tmp_path / "nothing here"))
    result = CliRunner().invoke(main, ["reaper", "install", "--resource-path", str(resource)])
    assert result.exit_code == 0, result.output
    assert read_config(resource / "Scripts" / "clapsep" / "clapsep - rain.lua").get("ffmpeg") is None
    assert "ffmpeg:      not found, so items from MP3, M4A/AAC" in result.output


def test_install_refuses_a_missing_resource_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["reaper", "install", "--resource-path", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "clapsep: error: REAPER's resource folder" in result.output


@needs_lua
def test_every_lua_file_compiles(tmp_path: Path) -> None:
    folder = install_into(tmp_path / "REAPER")
    files = [CORE, *HARNESS.glob("*.lua"), *folder.glob("*.lua")]
    assert len(files) > len(SHIPPED_PRESETS) + 4
    for file in files:  # one at a time: luac5.4 -p crashes on long file lists
        done = subprocess.run([LUAC, "-p", str(file)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# --- Lua and Python speaking to each other --------------------------------------------------

def load_lua(path: Path) -> Any:
    """What the Lua file ``path`` returns, as Lua reads it (through JSON)."""
    script = f"local F = dofile({lua_string(str(HARNESS / 'fake_reaper.lua'))}) " \
             f"io.write(F.to_json(dofile({lua_string(str(path))})))"
    done = lua("-e", script)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_lua
def test_lua_literals_load_back_unchanged(tmp_path: Path) -> None:
    value = {"text": 'q"uo\'te \\ back`slash\n\ttab \x00 nul \x7f é ü 漢', "n": [1, -2.5, 1e-300, 123456789012],
             "flag": True, "nested": {"list": ["a", ["b"]], "off": False}}
    spec = tmp_path / "value.lua"
    spec.write_text("return " + lua_literal(value) + "\n", encoding="utf-8")
    assert load_lua(spec) == value


UNIX_ARGS = ["/opt/my apps/python3", "plain", "with space", "it's", "ünïcödé 漢字", "C:dir/", ";rm -rf x|&><*?~#",
             "  lead and trail  ", "it's a ' b", "{a,b} [c] (d) !e %f ^g"]
WINDOWS_ARGS = [r"C:\Program Files\Python 3\python.exe", "-m", r"C:\Users\Zoë\it's here\job.json",
                "C:\\dir with space\\", "C:\\two\\\\", r"a\b c", "^& | <> `$x` !y", "semi;colon", "ünïcödé 漢字"]


@needs_lua
def test_command_lines_split_back_into_the_same_arguments_or_are_refused(tmp_path: Path) -> None:
    """Accepted arguments come back unchanged under every reading of the command line (on macOS
    and Linux both a quote-aware splitter and /bin/sh); an argument either reading could
    change is refused with the character named."""
    refused_unix = ['say "hi"', "$HOME", "back`tick", "back\\slash", "new\nline"]
    refused_windows = ['say "hi"', "%PATH%", "new\nline"]
    cases = [{"os": "Other", "argv": UNIX_ARGS}, {"os": "OSX64", "argv": UNIX_ARGS[:3]},
             {"os": "macOS-arm64", "argv": UNIX_ARGS[:3]}, {"os": "Win64", "argv": WINDOWS_ARGS},
             *({"os": "Other", "argv": ["ok", arg]} for arg in refused_unix),
             *({"os": "Win64", "argv": ["ok", arg]} for arg in refused_windows)]
    spec, out = tmp_path / "cases.lua", tmp_path / "out.json"
    spec.write_text("return " + lua_literal(cases) + "\n", encoding="utf-8")
    done = lua(HARNESS / "quoting.lua", CORE, spec, out)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    unix, mac, mac_arm, windows = results[:4]
    assert unix["readings"] == [UNIX_ARGS, UNIX_ARGS]
    assert mac["readings"] == mac_arm["readings"] == [UNIX_ARGS[:3], UNIX_ARGS[:3]]
    assert windows["readings"] == [WINDOWS_ARGS]
    assert unix["cmd"].startswith('"/opt/my apps/python3" "plain"')
    assert windows["cmd"].startswith(r'"C:\Program Files\Python 3\python.exe" "-m"')
    reasons = [r["refused"] for r in results[4:]]
    assert [r.split("(it ")[1].split(")")[0] for r in reasons] == [
        'contains "', "contains $", "contains `", "contains \\", "contains a control character",
        'contains "', "contains %", "contains a control character"]
    assert all(r.startswith("cannot pass this path to clapsep safely") for r in reasons)


# --- actions against the fake REAPER, without clapsep ----------------------------------------

@pytest.fixture
def plain_install(tmp_path: Path) -> Path:
    """Actions installed into a plain resource folder, with a command that is never reached."""
    return install_into(tmp_path / "resource", [sys.executable, "-m", "clapsep_cli"])


@needs_lua
@pytest.mark.parametrize(("what", "tracks", "selection", "message"), [
    ("nothing selected", [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2), selected=False)]}], None,
     "Select one or more audio items first."),
    ("empty item", [{"name": "A", "items": [item(2, 1, None)]}], None, "The item at 2.000 s is empty"),
    ("MIDI", [{"name": "A", "items": [item(0, 1, take(Path("/a.mid"), 2, type="MIDI"))]}], None,
     "The item at 0.000 s is MIDI, not audio"),
    ("in-project MIDI", [{"name": "A", "items": [item(0, 1, take("", 2, type="MIDI"))]}], None,
     "The item at 0.000 s is MIDI, not audio"),
    ("reversed", [{"name": "A", "items": [item(3, 1, take(Path("/r.wav"), 2, file_length=2,
                                                            section={"length": 2, "reverse": True}))]}],
     None, "The item at 3.000 s (r.wav) is reversed or a section of its source; glue it first"),
    ("section", [{"name": "A", "items": [item(3, 1, take(Path("/s.wav"), 1, file_length=9,
                                                           section={"offset": 4, "length": 1}))]}],
     None, "The item at 3.000 s (s.wav) is reversed or a section of its source"),
    ("no file", [{"name": "A", "items": [item(1, 1, take("", 2, type="CLICK"))]}], None,
     "The item at 1.000 s has no audio file"),
    ("stretch markers", [{"name": "A", "items": [item(0, 1, take(Path("/s.wav"), 2, stretch_markers=2))]}], None,
     "(s.wav) has stretch markers"),
    ("looped", [{"name": "A", "items": [item(1, 3, take(Path("/l.wav"), 2), loop=True)]}], None,
     "The item at 1.000 s (l.wav) loops its source"),
    ("looped past the selection", [{"name": "A", "items": [item(1, 3, take(Path("/l.wav"), 2), loop=True)]}],
     [1.5, 3.5], "loops its source"),
    ("outside the selection", [{"name": "A", "items": [item(0, 1, take(Path("/o.wav"), 2))]}], [5, 6],
     "None of the selected items has audio inside the time selection."),
])
def test_refusals_reach_the_user_and_start_nothing(plain_install: Path, tmp_path: Path, what: str,
                                                   tracks: list[dict[str, Any]], selection: list[float] | None,
                                                   message: str) -> None:
    recorded = run_action(plain_install / "clapsep - dog.lua",
                          {"resource": str(tmp_path / "resource"), "tracks": tracks, "time_selection": selection},
                          tmp_path)
    no_script_error(recorded)
    assert len(recorded["messages"]) == 1 and message in recorded["messages"][0], recorded["messages"]
    assert recorded["execs"] == [] and recorded["undo"] == []
    assert [t["name"] for t in recorded["tracks"]] == ["A"]
    assert leftover_jobs(tmp_path / "resource") == []


@needs_lua
def test_cancelling_the_description_does_nothing(plain_install: Path, tmp_path: Path) -> None:
    tracks = [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2))]}]
    recorded = run_action(plain_install / ASK_FILE, {"resource": str(tmp_path / "resource"),
                                                           "tracks": tracks}, tmp_path)
    assert recorded["asked"]["count"] == 1 and "separator=\n" in recorded["asked"]["captions"]
    assert recorded["messages"] == [] and recorded["execs"] == [] and len(recorded["tracks"]) == 1


@needs_lua
def test_missing_clapsep_is_reported(tmp_path: Path) -> None:
    folder = install_into(tmp_path / "resource", [str(tmp_path / "gone" / "python"), "-m", "clapsep_cli"])
    tracks = [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2))]}]
    recorded = run_action(folder / "clapsep - rain.lua", {"resource": str(tmp_path / "resource"),
                                                          "tracks": tracks}, tmp_path)
    assert recorded["execs"] == []
    assert recorded["messages"] == [f"clapsep is not at {tmp_path / 'gone' / 'python'}.\n"
                                    "Run `clapsep reaper install` again."]


@needs_lua
def test_a_path_that_cannot_be_passed_safely_is_refused_before_anything_starts(tmp_path: Path) -> None:
    resource = tmp_path / 'say "hi"'
    folder = install_into(resource, [sys.executable, "-m", "clapsep_cli"])
    tracks = [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2))]}]
    recorded = run_action(folder / "clapsep - rain.lua", {"resource": str(resource), "tracks": tracks}, tmp_path)
    (message,) = recorded["messages"]
    assert message.startswith('cannot pass this path to clapsep safely (it contains ")') and str(resource) in message
    assert recorded["execs"] == [] and leftover_jobs(resource) == []


@needs_lua
def test_a_clapsep_that_never_starts_times_out_and_the_window_runs_to_the_source_end(tmp_path: Path) -> None:
    resource = tmp_path / "resource"
    folder = install_into(resource, ["/bin/sh", "-c", "exit 0"])
    # playrate 0.5, starting 1 s before its 1.5 s source: the source plays from 7 s to 10 s.
    tracks = [{"name": "A", "items": [item(5, 6, take(Path("/x.wav"), 1.5, values={"D_STARTOFFS": -1.0,
                                                                                     "D_PLAYRATE": 0.5}))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "project_path": "", "clock_speed": 10000}, tmp_path)
    no_script_error(recorded)
    (exec_,) = recorded["execs"]
    (message,) = recorded["messages"]
    assert message.startswith("clapsep did not start within 180 s")
    job = json.loads(exec_["job"])
    assert job["query"] == {"preset_file": str(resources.shipped("presets") / "wind.toml")}
    assert job["out_dir"] == f"{resource}/Data/clapsep/stems"
    assert job["items"] == [{"source": "/x.wav", "start": 0.0}]  # no end: to the end of the file
    job_file = Path(exec_["argv"][-1])
    log = job_file.with_suffix(".log")
    assert f"Details are in the log {log} (send it with the job file {job_file}" in message
    assert leftover_jobs(resource) == [job_file.name, log.name]
    assert log.read_text(encoding="utf-8").startswith(REAPER_LOG_LINE + "Other] clapsep did not start")
    assert recorded["undo"] == []


@needs_lua
def test_a_clapsep_that_dies_while_working_is_detected(tmp_path: Path) -> None:
    """The heartbeat stops (a crash, a kill, out of memory) and no result comes: the action ends
    with a message instead of polling forever, keeping the job file and the log for a report."""
    resource = tmp_path / "resource"
    dying = fake_clapsep(tmp_path / "dying clapsep", 'for i in 1 2 3; do printf . >> "$base.beat"; sleep 0.1; done\n'
                         'echo "Killed" >> "$base.log"')
    folder = install_into(resource, [str(dying)])
    tracks = [{"name": "A", "items": [item(0, 1, take(tmp_path / "a.wav", 2))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "clock_speed": 40}, tmp_path)
    no_script_error(recorded)
    (message,) = recorded["messages"]
    assert message.startswith("clapsep stopped working (no sign of life for 60 s)")
    job_file = Path(recorded["execs"][0]["argv"][-1])
    assert leftover_jobs(resource) == [job_file.name, job_file.with_suffix(".log").name]
    assert job_file.with_suffix(".log").read_text(encoding="utf-8").splitlines() == [
        "Killed", REAPER_LOG_LINE + "Other] clapsep stopped working (no sign of life for 60 s): it may have run out of "
        "memory, crashed or been stopped."]
    assert recorded["undo"] == [] and [t["name"] for t in recorded["tracks"]] == ["A"]


@needs_lua
@pytest.mark.parametrize("choice", ["terminate", "new instance"])
def test_pressing_the_button_again_while_it_runs(tmp_path: Path, choice: str) -> None:
    """REAPER asks (ReaScript task control). Terminate: the action's atexit removes the job, which
    tells clapsep to stop; nothing lands. New instance: both jobs finish and both land."""
    resource = tmp_path / "resource"
    stopped = tmp_path / "stopped"
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000), 1000)
    if choice == "terminate":
        clapsep = fake_clapsep(tmp_path / "slow clapsep", 'printf . >> "$base.beat"\n'
                               'while [ -f "$job" ]; do sleep 0.05; done\n'
                               f'rm -f "$base.beat"; echo stopped > {shlex.quote(str(stopped))}')
    else:
        clapsep = answer_with(tmp_path, [ok_stem(stem)], delay=0.5)
    folder = install_into(resource, [str(clapsep)])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "events": [{"cycle": 4, "what": f"relaunch: {choice}"}]},
                          tmp_path)
    no_script_error(recorded)
    assert recorded["dialogs"] == ["ReaScript task control"] and recorded["messages"] == []
    if choice == "terminate":
        for _ in range(200):
            if stopped.exists():
                break
            time.sleep(0.05)
        assert stopped.exists(), recorded["processes"]
        assert len(recorded["execs"]) == 1 and recorded["atexit_ran"] == 1
        assert [t["name"] for t in recorded["tracks"]] == ["A"] and recorded["undo"] == []
    else:
        assert len(recorded["execs"]) == 2 and recorded["execs"][0]["cmd"] != recorded["execs"][1]["cmd"]
        assert [t["name"] for t in recorded["tracks"]] == ["A", "wind", "wind"]
        assert [u["event"] for u in recorded["undo"]] == ["begin", "end", "begin", "end"]
    assert leftover_jobs(resource) == []


@needs_lua
def test_a_stem_reaper_cannot_open_is_reported_and_the_others_land(tmp_path: Path) -> None:
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000), 1000)
    gone = tmp_path / "removed before REAPER opened it.wav"
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [ok_stem(stem), ok_stem(gone)]))])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]},
              {"name": "B", "items": [item(3.0, 0.5, take(tmp_path / "b.wav", 2.0))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks}, tmp_path)
    no_script_error(recorded)
    (message,) = recorded["messages"]
    assert message.startswith("clapsep could not extract 1 of 2 items:\n\nThe item at 3.000 s (b.wav): "
                              f"REAPER cannot open the stem {gone}\n\nDetails are in the log")
    assert [t["name"] for t in recorded["tracks"]] == ["A", "wind", "B"]  # no empty track for B
    assert recorded["refresh_prevented"] == 0 and [u["event"] for u in recorded["undo"]] == ["begin", "end"]


@needs_lua
def test_an_error_while_inserting_leaves_refresh_and_undo_balanced(tmp_path: Path) -> None:
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000), 1000)
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [ok_stem(stem), ok_stem(stem)]))])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0)),
                                      item(3.0, 0.5, take(tmp_path / "a.wav", 2.0))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "fail_call": "SetMediaItemTakeInfo_Value"}, tmp_path)
    (error,) = recorded["script_errors"]
    assert "simulated failure in reaper.SetMediaItemTakeInfo_Value" in error
    assert recorded["refresh_prevented"] == 0 and [u["event"] for u in recorded["undo"]] == ["begin", "end"]
    assert recorded["destroyed_sources"] == 1  # the second stem's source, never attached
    job_file = Path(recorded["execs"][0]["argv"][-1])
    assert leftover_jobs(resource) == [job_file.name, job_file.with_suffix(".log").name]
    assert "internal error: " in job_file.with_suffix(".log").read_text(encoding="utf-8")


@needs_lua
def test_the_stem_plays_like_its_take(tmp_path: Path) -> None:
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000, 2), 1000)
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [ok_stem(stem, frames=400)]))])
    playback = {"D_PLAYRATE": 1.25, "D_PITCH": 1.5, "B_PPITCH": 1, "I_PITCHMODE": 0x50003, "I_CHANMODE": 3,
                "D_VOL": -0.5, "D_PAN": 0.25}
    tracks = [{"name": "A", "items": [item(1.0, 0.4, take(tmp_path / "a.wav", 2.0, values=playback))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks}, tmp_path)
    no_script_error(recorded)
    assert recorded["messages"] == []
    (new_item,) = recorded["tracks"][1]["items"]
    values = new_item["takes"][0]["values"]
    assert {k: values[k] for k in playback} == playback and values["D_STARTOFFS"] == 0
    assert new_item["length"] == pytest.approx(0.4 / 1.25)
    assert recorded["changed_outside_undo"] == []


@needs_lua
@pytest.mark.parametrize(("events", "landed", "message"), [
    ([{"cycle": 0, "what": "delete first track"}], ["B", "wind"], None),
    ([{"cycle": 0, "what": "switch project"}, {"cycle": 30, "what": "switch back"}], ["A", "wind", "B"], None),
    ([{"cycle": 0, "what": "close project"}], ["A", "B"], "The project was closed while clapsep ran"),
    ([{"cycle": 0, "what": "reopen project"}], ["A", "B"], "The project was closed while clapsep ran"),
])
def test_edits_and_project_tabs_while_clapsep_runs(tmp_path: Path, events: list[dict[str, Any]], landed: list[str],
                                                   message: str | None) -> None:
    """Stems land only in the project the job came from: after the user comes back to its tab,
    never in another tab, nor in a project opened at the same address after it was closed."""
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000), 1000)
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [ok_stem(stem)]))])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]}, {"name": "B"}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "events": events}, tmp_path)
    no_script_error(recorded)
    assert [t["name"] for t in recorded["tracks"]] == landed
    other_tabs = [tab for tab in recorded["tabs"] if tab["file"] != "/projects/song.rpp"]
    assert all(tab["tracks"] == [] for tab in other_tabs)
    if message is None:
        assert recorded["messages"] == [] and leftover_jobs(resource) == []
        assert recorded["tracks"][landed.index("wind")]["items"][0]["position"] == 1.0
    else:
        assert recorded["messages"][0].startswith(f"{message}; the stems are in {tmp_path / 'project media'}")
        assert recorded["undo"] == []


# --- actions running clapsep with the tiny model ---------------------------------------------

@pytest.fixture
def media(tmp_path: Path) -> dict[str, Path]:
    """Sources in a folder whose name has spaces, quotes of both kinds and non-ASCII letters."""
    folder = tmp_path / "médïa 'single' \"double\""
    folder.mkdir()
    return {
        "walk": write_audio(folder / "walk 'n\" talk ü.wav", tone(4.0, 48000, 2), 48000),
        "rain": write_audio(folder / "rain.flac", tone(5.0, 44100, 1, freq=300, seed=3), 44100, subtype="PCM_24"),
    }


def expected_stem(source: Path, start: float, end: float | None, query: list[str], out: Path) -> np.ndarray:
    """What `clapsep extract` makes of the same window."""
    window = ["--start", repr(start), *(["--end", repr(end)] if end is not None else [])]
    result = CliRunner().invoke(main, ["extract", *query, str(source), *window, "--format", "wav", "--bit-depth",
                                       "32f", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return sf.read(str(out), always_2d=True)[0]


def check_stem(new_item: dict[str, Any], window: dict[str, Any], t0: float, playrate: float,
               expected: np.ndarray, out_dir: Path) -> None:
    """The stem item holds what `clapsep extract` gives for the window, placed sample for sample."""
    tk = new_item["takes"][0]
    stem = Path(tk["file"])
    assert stem.parent == out_dir and tk["name"] == stem.name
    data, rate = sf.read(str(stem), always_2d=True)
    assert data.shape == expected.shape
    np.testing.assert_allclose(data, expected, atol=1e-5)
    first = round(window["start"] * rate)
    if "end" in window:
        assert data.shape[0] == round(window["end"] * rate) - first
    assert new_item["position"] == pytest.approx(t0 + (first / rate - window["start"]) / playrate, abs=1e-9)
    assert abs(new_item["position"] - t0) <= 0.5 / rate / playrate
    assert new_item["length"] == pytest.approx(data.shape[0] / rate / playrate, abs=1e-9)
    assert (tk["values"]["D_STARTOFFS"], tk["values"]["D_PLAYRATE"], new_item["loop"]) == (0, playrate, 0)


@needs_lua
def test_free_text_action_extracts_each_window_onto_new_tracks(home: Path, tmp_path: Path,
                                                               media: dict[str, Path]) -> None:
    resource = tmp_path / "REAPER rés 'q'"
    folder = install_into(resource)
    project = tmp_path / "prøject media"
    walk, rain = media["walk"], media["rain"]
    tracks = [
        {"name": "Dialog", "items": [
            item(10.0, 2.0, take(walk, 4.0, values={"D_STARTOFFS": 0.5}), loop=True),  # loops, but plays one pass
            item(13.0, 1.0, take(walk, 4.0, values={"D_STARTOFFS": 1.00001, "D_PLAYRATE": 2.0, "D_PITCH": -2.0,
                                                    "B_PPITCH": 1})),
        ]},
        {"name": "Ambience", "items": [
            item(9.0, 5.0, take(rain, 5.0)),
            item(20.0, 1.0, take(rain, 5.0)),                                     # outside the time selection
            item(10.0, 1.0, take(rain, 5.0), selected=False),
        ]},
    ]
    recorded = run_action(folder / ASK_FILE, {
        "resource": str(resource), "project_path": str(project), "time_selection": [10.25001, 13.5],
        "tracks": tracks, "answer": ANSWER}, tmp_path)

    no_script_error(recorded)
    assert recorded["messages"] == []
    (exec_,) = recorded["execs"]
    assert exec_["timeout"] == -1
    assert exec_["argv"][:5] == [sys.executable, "-m", "clapsep_cli", "reaper", "run"]
    job_file = Path(exec_["argv"][5])
    assert job_file.parent == resource / "Data" / "clapsep" and job_file.suffix == ".json"
    assert f'"{job_file}"' in exec_["cmd"]
    job = json.loads(exec_["job"])
    assert job["query"] == {"text": ANSWER} and job["out_dir"] == str(project) and job["store"] == str(home)
    windows = job["items"]
    assert [w["source"] for w in windows] == [str(walk), str(walk), str(rain)]
    assert [(w["start"], w["end"]) for w in windows] == [
        pytest.approx((0.75001, 2.5), abs=1e-9), pytest.approx((1.00001, 2.00001), abs=1e-9),
        pytest.approx((1.25001, 4.5), abs=1e-9)]

    assert [t["name"] for t in recorded["tracks"]] == ["Dialog", ANSWER, "Ambience", ANSWER]
    assert [len(t["items"]) for t in recorded["tracks"]] == [2, 2, 3, 1]
    assert recorded["tracks"][0]["items"][1]["takes"][0]["values"]["D_STARTOFFS"] == 1.00001  # sources untouched
    dialog, ambience = recorded["tracks"][1]["items"], recorded["tracks"][3]["items"]
    query = ["-q", ANSWER]
    check_stem(dialog[0], windows[0], 10.25001, 1.0,
               expected_stem(walk, windows[0]["start"], windows[0]["end"], query, tmp_path / "e0.wav"), project)
    check_stem(dialog[1], windows[1], 13.0, 2.0,
               expected_stem(walk, windows[1]["start"], windows[1]["end"], query, tmp_path / "e1.wav"), project)
    check_stem(ambience[0], windows[2], 10.25001, 1.0,
               expected_stem(rain, windows[2]["start"], windows[2]["end"], query, tmp_path / "e2.wav"), project)
    assert (dialog[1]["takes"][0]["values"]["D_PITCH"], dialog[1]["takes"][0]["values"]["B_PPITCH"]) == (-2.0, 1)
    assert sorted(p.name for p in project.iterdir()) == [
        "rain.dog_s_bark_ü.wav", "walk 'n\" talk ü.dog_s_bark_ü-2.wav", "walk 'n\" talk ü.dog_s_bark_ü.wav"]

    assert recorded["undo"] == [{"event": "begin"},
                                {"event": "end", "description": f"clapsep: extract {ANSWER}", "flags": -1}]
    assert recorded["changed_outside_undo"] == [] and recorded["refresh_prevented"] == 0
    assert leftover_jobs(resource) == []


@needs_lua
def test_user_preset_action_with_windows_quoting_in_a_bare_environment(home: Path, tmp_path: Path,
                                                                       media: dict[str, Path]) -> None:
    """The child has no XDG_CONFIG_HOME or CLAPSEP_HOME: the recorded preset file and store carry
    it; a failing item is reported while the other lands."""
    presets.create("yap", presets.to_toml("A yapping dog", ["a small dog yaps"], []))
    wrapper_dir = tmp_path / "py thön's"
    wrapper_dir.mkdir()
    wrapper = fake_clapsep(wrapper_dir / "clapsep launcher", f'exec {shlex.quote(sys.executable)} -m clapsep_cli "$@"')
    resource = tmp_path / "Wïn rés 'x'"
    folder = install_into(resource, [str(wrapper)])
    broken = media["walk"].with_name("broken.wav")
    broken.write_text("not audio at all")
    tracks = [{"name": "Music", "items": [item(2.0, 1.5, take(media["rain"], 5.0, values={"D_STARTOFFS": 0.25}))]},
              {"name": "Noise", "items": [item(4.0, 1.0, take(broken, 2.0))]}]
    project = tmp_path / "stems"
    recorded = run_action(folder / "clapsep - yap.lua", {
        "os": "Win64", "resource": str(resource), "project_path": str(project), "tracks": tracks}, tmp_path)

    no_script_error(recorded)
    (exec_,) = recorded["execs"]
    assert exec_["timeout"] == -2
    assert exec_["cmd"].startswith(f'"{wrapper}" "reaper" "run" "')
    assert exec_["argv"][:3] == [str(wrapper), "reaper", "run"]
    assert json.loads(exec_["job"])["query"] == {"preset_file": str(presets.user_dir() / "yap.toml")}
    (message,) = recorded["messages"]
    assert message.startswith("clapsep could not extract 1 of 2 items:")
    assert "The item at 4.000 s (broken.wav): " in message and str(broken) in message
    assert [t["name"] for t in recorded["tracks"]] == ["Music", "yap", "Noise"]
    (stem_item,) = recorded["tracks"][1]["items"]
    check_stem(stem_item, {"start": 0.25, "end": 1.75}, 2.0, 1.0,
               expected_stem(media["rain"], 0.25, 1.75, ["-p", "yap"], tmp_path / "e.wav"), project)
    assert [u["event"] for u in recorded["undo"]] == ["begin", "end"]
    job_file = Path(exec_["argv"][-1])
    assert leftover_jobs(resource) == [job_file.name, job_file.with_suffix(".log").name]
    log = job_file.with_suffix(".log").read_text(encoding="utf-8")
    assert f"model store {home}" in log and "item 2/2: " in log and "  failed: " in log


@needs_lua
@needs_ffmpeg
def test_compressed_source_whose_length_reaper_measures_longer(home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An AAC source that REAPER's decoder finds 30 ms longer than clapsep's: the whole item runs to
    the end of the file, and a window ending past clapsep's length (within the tolerance) is
    clamped, not refused. The child has no PATH: the ffmpeg recorded at install is the one used."""
    tools, calls = tmp_path / "tools", tmp_path / "ffmpeg calls"
    tools.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        real = shlex.quote(shutil.which(name) or name)
        fake_clapsep(tools / name, f'echo {name} >> {shlex.quote(str(calls))}\nexec {real} "$@"')
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    wav = write_audio(tmp_path / "speech.wav", tone(3.0, 44100, 2, freq=220), 44100)
    m4a = tmp_path / "speech.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "128k", str(m4a)],
                   check=True)
    length = probe(m4a).duration
    reaper_length = length + 0.03
    resource = tmp_path / "resource"
    folder = install_into(resource)
    project = tmp_path / "project media"
    tracks = [{"name": "Whole", "items": [item(0.0, reaper_length, take(m4a, reaper_length))]},
              {"name": "Tail", "items": [item(10.0, reaper_length - 0.5 - 0.01,
                                              take(m4a, reaper_length, values={"D_STARTOFFS": 0.5}))]}]
    calls.unlink(missing_ok=True)
    recorded = run_action(folder / ASK_FILE, {"resource": str(resource), "tracks": tracks, "answer": "speech"},
                          tmp_path)

    no_script_error(recorded)
    assert recorded["messages"] == [], recorded["messages"]
    whole, tail = json.loads(recorded["execs"][0]["job"])["items"]
    assert whole == {"source": str(m4a), "start": 0.0}
    assert tail["end"] == pytest.approx(length + 0.02) and tail["end"] - length < END_TOLERANCE
    assert "ffmpeg" in calls.read_text().split() and "ffprobe" in calls.read_text().split()
    query = ["-q", "speech"]
    check_stem(recorded["tracks"][1]["items"][0], whole, 0.0, 1.0,
               expected_stem(m4a, 0.0, None, query, tmp_path / "e0.wav"), project)
    check_stem(recorded["tracks"][3]["items"][0], {"start": 0.5}, 10.0, 1.0,
               expected_stem(m4a, 0.5, tail["end"], query, tmp_path / "e1.wav"), project)
    assert leftover_jobs(resource) == []


@needs_lua
def test_a_clapsep_error_reaches_the_user_and_changes_nothing(tmp_path: Path, media: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAPSEP_HOME", str(tmp_path / "empty store"))
    resource = tmp_path / "resource"
    folder = install_into(resource)
    tracks = [{"name": "A", "items": [item(0.0, 1.0, take(media["rain"], 5.0))]}]
    recorded = run_action(folder / "clapsep - rain.lua", {"resource": str(resource), "tracks": tracks}, tmp_path)
    no_script_error(recorded)
    (message,) = recorded["messages"]
    assert message.startswith("clapsep failed: ") and "clapsep models download" in message
    assert recorded["undo"] == [] and len(recorded["tracks"]) == 1
    job_file = Path(recorded["execs"][0]["argv"][-1])
    assert leftover_jobs(resource) == [job_file.name, job_file.with_suffix(".log").name]
    assert "error: " in job_file.with_suffix(".log").read_text(encoding="utf-8")


# --- find: regions and markers --------------------------------------------------------------

LOW = 0.01  # the tiny random model scores low; this threshold finds something


def expected_events(source: Path, start: float, end: float | None, text: str) -> list[api.Event]:
    """What `Separator.find` finds in the same window at the threshold LOW."""
    job = api.Separator().find([api.Item(source, api.Region(start, end))], api.request(text),
                               api.EventPlan(api.DetectOptions(threshold=LOW)))
    (result,) = job.results
    assert result.status == "ok" and result.events, result.error
    return result.events


def marks(recorded: dict[str, Any]) -> list[tuple[bool, float, float, str]]:
    return [(m["region"], m["position"], m["region_end"], m["name"]) for m in recorded["markers"]]


@needs_lua
def test_find_action_marks_each_event_where_the_take_plays_it(home: Path, tmp_path: Path,
                                                               media: dict[str, Path]) -> None:
    """The asked-for description, threshold and marks reach the real clapsep; each event found
    becomes a region over the part of the timeline that plays it (take offset 0.5 s, playrate
    1.5), in one undo step, and the choices are remembered for the next find."""
    resource = tmp_path / "resource"
    folder = install_into(resource)
    walk = media["walk"]
    tracks = [{"name": "Dialog", "items": [item(10.0, 2.0, take(walk, 4.0, values={"D_STARTOFFS": 0.5,
                                                                                  "D_PLAYRATE": 1.5}))]}]
    recorded = run_action(folder / FIND_FILE, {"resource": str(resource), "tracks": tracks,
                                               "answer": ["dog barking", f" {LOW} ", "Regions"]}, tmp_path)

    no_script_error(recorded)
    assert recorded["messages"] == []
    assert recorded["asked"]["count"] == 3 and recorded["asked"]["values"] == f"\n{DEFAULT_THRESHOLD:g}\nregions"
    job = json.loads(recorded["execs"][0]["job"])
    assert (job["kind"], job["query"], job["threshold"]) == ("find", {"text": "dog barking"}, LOW)
    assert "out_dir" not in job and job["items"] == [{"source": str(walk), "start": 0.5, "end": 3.5}]
    events = expected_events(walk, 0.5, 3.5, "dog barking")
    assert marks(recorded) == [(True, pytest.approx(10.0 + (max(e.start, 0.5) - 0.5) / 1.5, abs=1e-9),
                                pytest.approx(10.0 + (min(e.end, 3.5) - 0.5) / 1.5, abs=1e-9),
                                f"dog_barking {e.confidence:.2f}") for e in events]
    assert recorded["undo"] == [{"event": "begin"}, {"event": "end", "description": "clapsep: find dog barking",
                                                     "flags": -1}]
    assert recorded["changed_outside_undo"] == [] and recorded["refresh_prevented"] == 0
    assert recorded["extstate"] == {"clapsep/find_threshold": {"value": "0.01", "persist": True},
                                    "clapsep/find_marks": {"value": "regions", "persist": True}}
    assert [t["name"] for t in recorded["tracks"]] == ["Dialog"] and leftover_jobs(resource) == []


def event(start: float, end: float, confidence: float = 0.5) -> dict[str, Any]:
    return {"start": start, "end": end, "confidence": confidence, "label": "dog"}


@needs_lua
@pytest.mark.parametrize("mode", ["regions", "markers"])
def test_events_are_mapped_through_the_take_and_clipped_to_what_it_plays(tmp_path: Path, mode: str) -> None:
    """Item A (at 10 s, 2 s long) plays its source from 1 s at playrate 2, so source 1..5 s.
    Events before or after that are dropped, those across its edges clipped; markers (the
    setting kept in REAPER's extended state) stand at the clipped starts."""
    found = [event(0.2, 0.8), event(0.5, 1.5, 0.123), event(2.0, 3.0, 0.9), event(4.5, 6.0, 0.456),
             event(5.5, 6.0)]
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [{"status": "ok", "events": found},
                                                                {"status": "ok", "events": [event(0.25, 0.5)]}]))])
    tracks = [{"name": "A", "items": [item(10.0, 2.0, take(tmp_path / "a.wav", 8.0, values={"D_STARTOFFS": 1.0,
                                                                                           "D_PLAYRATE": 2.0}))]},
              {"name": "B", "items": [item(3.0, 1.0, take(tmp_path / "b.wav", 2.0))]}]
    extstate = {"clapsep": {"find_marks": mode, "find_threshold": "0.25"}} if mode == "markers" else None
    recorded = run_action(folder / "clapsep - find dog.lua", {"resource": str(resource), "tracks": tracks,
                                                              "extstate": extstate}, tmp_path)
    no_script_error(recorded)
    assert recorded["messages"] == [] and recorded["asked"] is False
    spans = [(10.0, 10.25, "dog 0.12"), (10.5, 11.0, "dog 0.90"), (11.75, 12.0, "dog 0.46"), (3.25, 3.5, "dog 0.50")]
    if mode == "regions":
        assert marks(recorded) == [(True, a, b, name) for a, b, name in spans]
    else:
        assert marks(recorded) == [(False, a, 0, name) for a, _, name in spans]
    assert [m["number"] for m in recorded["markers"]] == [1, 2, 3, 4]
    assert [u["event"] for u in recorded["undo"]] == ["begin", "end"] and recorded["changed_outside_undo"] == []
    job_text = tmp_path / "sent.json"
    job_text.write_text(recorded["execs"][0]["job"], encoding="utf-8")
    sent = read_job(job_text)
    threshold = 0.25 if mode == "markers" else DEFAULT_THRESHOLD
    assert sent.kind == "find" and sent.detect == api.DetectOptions(threshold=threshold)
    assert sent.preset_file == resources.shipped("presets") / "dog.toml" and sent.out_dir is None
    assert [(i.path.name, i.region) for i in sent.items] == [("a.wav", api.Region(1.0, 5.0)),
                                                           ("b.wav", api.Region(0.0, 1.0))]
    assert recorded["extstate"] == [] and leftover_jobs(resource) == []  # a preset's find asks nothing


@needs_lua
@pytest.mark.parametrize(("items", "error", "message"), [
    (None, "the model store is empty", "clapsep failed: the model store is empty\n\nDetails are in the log"),
    ([{"status": "failed", "error": "a.wav: cannot read"}, {"status": "ok", "events": [event(0.25, 0.5)]}], None,
     "clapsep could not search 1 of 2 items:\n\nThe item at 1.000 s (a.wav): a.wav: cannot read\n\nDetails"),
    ([{"status": "ok", "events": [event(3.0, 4.0)]}, {"status": "ok", "events": []}], None,
     f"clapsep found no dog in the selected items (threshold {DEFAULT_THRESHOLD:g})."),
])
def test_a_failed_or_empty_find_says_so_in_one_message(tmp_path: Path, items: list[dict[str, Any]] | None,
                                                       error: str | None, message: str) -> None:
    """A failed job marks nothing; a failed item is named while the others' events land; events
    only outside the items' windows are nothing found."""
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, items, error=error))])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]},
              {"name": "B", "items": [item(3.0, 1.0, take(tmp_path / "b.wav", 2.0))]}]
    recorded = run_action(folder / "clapsep - find dog.lua", {"resource": str(resource), "tracks": tracks}, tmp_path)
    no_script_error(recorded)
    (shown,) = recorded["messages"]
    assert shown.startswith(message), shown
    landed = [(True, 3.25, 3.5, "dog 0.50")] if error is None and items and items[0]["status"] == "failed" else []
    assert marks(recorded) == landed
    assert [u["event"] for u in recorded["undo"]] == (["begin", "end"] if landed else [])
    job_file = Path(recorded["execs"][0]["argv"][-1])
    kept = [job_file.name, job_file.with_suffix(".log").name] if "Details" in message else []
    assert leftover_jobs(resource) == kept


@needs_lua
@pytest.mark.parametrize(("what", "landed", "message"), [
    ("delete first track", [(True, 1.25, 1.5, "dog 0.50")], None),
    ("close project", [], "The project was closed while clapsep ran; nothing was marked.\n\nDetails"),
])
def test_events_land_where_the_items_were_when_the_action_started(tmp_path: Path, what: str,
                                                                  landed: list[Any], message: str | None) -> None:
    """The item's track (and the item) deleted while clapsep runs: the region still marks where
    the item played when asked. The project closed: nothing lands in another one."""
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer_with(tmp_path, [{"status": "ok", "events": [event(0.25, 0.5)]}],
                                                     delay=0.3))])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]}, {"name": "B"}]
    recorded = run_action(folder / "clapsep - find dog.lua", {"resource": str(resource), "tracks": tracks,
                                                              "events": [{"cycle": 0, "what": what}]}, tmp_path)
    no_script_error(recorded)
    assert marks(recorded) == landed
    assert all(tab["markers"] == 0 for tab in recorded["tabs"] if tab["file"] != "/projects/song.rpp")
    if message is None:
        assert recorded["messages"] == [] and leftover_jobs(resource) == []
    else:
        assert recorded["messages"][0].startswith(message) and recorded["undo"] == []


@needs_lua
@pytest.mark.parametrize(("answer", "message"), [
    (["dog", "2", "regions"], 'The threshold must be a number above 0 and at most 1, not "2".'),
    (["dog", "zero", "regions"], 'The threshold must be a number above 0 and at most 1, not "zero".'),
    (["dog", "0.5", "notes"], 'Mark the sound with "regions" or "markers", not "notes".'),
    (["  ", "0.5", "regions"], None),
    (None, None),
])
def test_the_find_dialog_refuses_bad_settings_and_starts_nothing(plain_install: Path, tmp_path: Path,
                                                                 answer: list[str] | None, message: str | None
                                                                 ) -> None:
    tracks = [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2))]}]
    recorded = run_action(plain_install / FIND_FILE, {"resource": str(tmp_path / "resource"), "tracks": tracks,
                                                      "answer": answer}, tmp_path)
    no_script_error(recorded)
    assert recorded["messages"] == ([message] if message else [])
    assert recorded["execs"] == [] and recorded["markers"] == [] and recorded["extstate"] == []
    assert leftover_jobs(tmp_path / "resource") == []


# --- clapsep reaper run on its own -------------------------------------------------------------

def job_text(tmp_path: Path, **fields: Any) -> str:
    return json.dumps({"clapsep_reaper_job": 2, "query": {"text": "dog"}, "out_dir": str(tmp_path / "stems"),
                       "store": str(tmp_path / "store"), **fields})


@needs_lua
@pytest.mark.parametrize(("job", "error"), [
    ("{not json", "cannot read the job file"),
    ('{"clapsep_reaper_job": 1}', "not a clapsep REAPER job of version 2"),
    ('{"clapsep_reaper_job": 2, "query": {"text": "dog", "preset_file": "/dog.toml"}, "out_dir": "/x", '
     '"items": []}', "'query' must hold one 'text' or one 'preset_file'"),
    ('{"clapsep_reaper_job": 2, "query": {"text": "dog"}, "out_dir": "/x", "store": "/s", "items": '
     '[{"source": "/a.wav", "start": 2, "end": 1}]}', "0 <= start < end"),
    ('{"clapsep_reaper_job": 2, "query": {"text": "dog"}, "out_dir": "/x", "store": "relative", "items": '
     '[{"source": "/a.wav", "start": 0}]}', "'store' must be an absolute path"),
    ('{"clapsep_reaper_job": 2, "kind": "separate", "query": {"text": "dog"}, "store": "/s", "items": '
     '[{"source": "/a.wav", "start": 0}]}', "'kind' must be one of extract, find"),
    ('{"clapsep_reaper_job": 2, "kind": "find", "query": {"text": "dog"}, "store": "/s", "threshold": "high", '
     '"items": [{"source": "/a.wav", "start": 0}]}', "'threshold' must be a number"),
    ('{"clapsep_reaper_job": 2, "kind": "find", "query": {"text": "dog"}, "store": "/s", "threshold": 2, '
     '"items": [{"source": "/a.wav", "start": 0}]}', "threshold must be in (0, 1] (got 2)"),
])
def test_run_reports_a_bad_job_in_its_result_file(tmp_path: Path, job: str, error: str) -> None:
    path = tmp_path / "job-1.json"
    path.write_text(job, encoding="utf-8")
    result = CliRunner().invoke(main, ["reaper", "run", str(path)])
    assert result.exit_code == 1 and error in result.output
    result_file = lua_string(str(tmp_path / "job-1.result.lua"))
    done = lua("-e", f"local r = dofile({result_file}) io.write(r.state, '|', r.error)")
    state, message = done.stdout.split("|", 1)
    assert state == "done" and error in message
    log = (tmp_path / "job-1.log").read_text(encoding="utf-8")
    assert log.startswith("clapsep ") and f"error: {message}" in log and log.endswith("writing the result\n")


@needs_lua
def test_a_find_job_gives_each_window_its_events_in_the_source_clock(home: Path, tmp_path: Path) -> None:
    """One job for every window: events as `Separator.find` gives them for the same windows, in
    seconds of the source; a window sent twice gets its events twice, a broken file its reason.
    No file is written beside the sources."""
    source = write_audio(tmp_path / "talk.wav", tone(6.0, 16000, 2), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio at all")
    windows = [{"source": str(source), "start": 1.0, "end": 4.0}, {"source": str(source), "start": 3.5},
               {"source": str(source), "start": 1.0, "end": 4.0}, {"source": str(broken), "start": 0.0}]
    job = tmp_path / "job-4.json"
    job.write_text(job_text(tmp_path, kind="find", store=str(home), threshold=LOW, items=windows), encoding="utf-8")
    result = CliRunner().invoke(main, ["reaper", "run", str(job)])
    assert result.exit_code == 0, result.output

    done = load_lua(tmp_path / "job-4.result.lua")
    assert done["state"] == "done"
    first, second, again, failed = done["items"]
    expected = api.Separator().find([api.Item(source, api.Region(1.0, 4.0)), api.Item(source, api.Region(3.5))],
                                    api.request("dog"), api.EventPlan(api.DetectOptions(threshold=LOW)))
    for got, want, (start, end) in zip([first, second], expected.results, [(1.0, 4.0), (3.5, 6.0)], strict=True):
        assert got["status"] == "ok" and got["events"]
        assert got["events"] == [{"start": pytest.approx(e.start, abs=1e-9), "end": pytest.approx(e.end, abs=1e-9),
                                  "confidence": pytest.approx(e.confidence, abs=1e-6), "label": "dog"}
                                 for e in want.events]
        assert all(start <= e["start"] < e["end"] <= end + 1e-9 for e in got["events"])
    assert again == first
    assert failed["status"] == "failed" and str(broken) in failed["error"]
    log = job.with_suffix(".log").read_text(encoding="utf-8")
    assert "item 1/3: " in log and f"  ok: {len(first['events'])} events" in log and "item 3/3: " in log
    assert list(tmp_path.glob("talk*")) == [source] and not (tmp_path / "stems").exists()


def test_run_without_its_job_file_leaves_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["reaper", "run", str(tmp_path / "job-2.json")])
    assert result.exit_code == 1 and "no job file" in result.output
    assert list(tmp_path.iterdir()) == []


def test_removing_the_job_file_cancels_it_and_its_stems(home: Path, tmp_path: Path) -> None:
    """clapsep checks its job file before each item: once the action has removed it (the user
    stopped the action), clapsep removes the stems it wrote, its heartbeat and its log, and
    writes no result."""
    source = write_audio(tmp_path / "long.wav", tone(6.0, 16000), 16000)
    job = tmp_path / "job-3.json"
    job.write_text(job_text(tmp_path, store=str(home), items=[{"source": str(source), "start": float(s), "end": s + 2.0}
                                                              for s in (0, 2, 4)]), encoding="utf-8")
    stems = tmp_path / "stems"
    process = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "reaper", "run", str(job)], env=CHILD_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(2400):
            if stems.is_dir() and any(stems.glob("*.wav")) or process.poll() is not None:
                break
            time.sleep(0.05)
        assert stems.is_dir() and any(stems.glob("*.wav")), process.communicate()[0]
        assert job.with_suffix(".beat").stat().st_size >= 1 and "item 1/3" in job.with_suffix(".log").read_text()
        job.unlink()
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "stems"]
    assert list(stems.iterdir()) == []


def test_heartbeat_beats_while_running_and_stops_after(tmp_path: Path) -> None:
    beat = tmp_path / "job.beat"
    with Heartbeat(beat, interval=0.02):
        assert beat.stat().st_size == 1  # at once
        for _ in range(500):
            if beat.stat().st_size >= 4:
                break
            time.sleep(0.01)
        assert beat.stat().st_size >= 4
    size = beat.stat().st_size
    time.sleep(0.1)
    assert beat.stat().st_size == size


def test_region_ends_within_the_tolerance_are_clamped(tmp_path: Path) -> None:
    info = AudioInfo(tmp_path / "a.m4a", 44100, 2, 132300, None, None)  # 3.0 s
    assert Region(1.0, 3.0 + END_TOLERANCE * 0.9).frames(info) == (44100, 132300)
    assert Region(1.0, 2.5).frames(info) == (44100, 110250)
    with pytest.raises(AudioError, match="region ends at 3.15 s, after the end of the file"):
        Region(1.0, 3.0 + END_TOLERANCE + 0.05).frames(info)
