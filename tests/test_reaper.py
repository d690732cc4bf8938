"""The REAPER bridge: ``clapsep reaper install``, ``clapsep reaper run``, and the Lua actions run
under Debian's lua5.4 against a fake ``reaper`` table (tests/reaper/fake_reaper.lua) whose
ExecProcess really starts clapsep with the tiny model.

A scenario (written for the fake as a Lua table) holds: ``os`` (GetOS), ``resource``
(GetResourcePath), ``project_path`` (GetProjectPath), ``time_selection`` ({start, end} or nil),
``tracks`` ({name, items = {{position, length, loop, selected, take = {file, type,
source_length, startoffs, playrate, pitch, ppitch, stretch_markers}}}}), ``answer`` (what the
user types into GetUserInputs; nil cancels), ``clock_speed`` (fake seconds per real second),
``process_log`` (where started processes write), ``time_limit`` (real seconds) and ``on_exec``
(what the user does while clapsep runs: "delete first track" or "switch project").
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from clapsep_cli import presets, resources
from clapsep_cli.bridges import reaper as bridge
from clapsep_cli.cli import main
from tests.conftest import tone, write_audio

HARNESS = Path(__file__).resolve().parent / "reaper"
CORE = resources.shipped("plugins") / "reaper" / bridge.CORE
LUA, LUAC = shutil.which("lua5.4"), shutil.which("luac5.4")
needs_lua = pytest.mark.skipif(LUA is None or LUAC is None, reason="needs Debian's lua5.4 and luac5.4")
SHIPPED_PRESETS = sorted(p.stem for p in (resources.shipped("presets")).glob("*.toml"))
# A description with a quote of each kind, a comma and a non-ASCII letter.
ANSWER = 'dog\'s "bark", ü'


@pytest.fixture(autouse=True)
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """User presets live under this test's own config folder."""
    folder = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    return folder


def lua(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([LUA, *map(str, args)], capture_output=True, text=True, encoding="utf-8", env=env,
                          timeout=timeout)


def run_action(action: Path, scenario: dict[str, Any], tmp_path: Path, clapsep_home: Path | None = None
               ) -> dict[str, Any]:
    """Run one action script against the fake REAPER; what the fake recorded."""
    log = tmp_path / "processes.log"
    scenario = {"os": "Other", "project_path": str(tmp_path / "project media"), "process_log": str(log),
                "time_limit": 120, **scenario}
    spec, out = tmp_path / "scenario.lua", tmp_path / "recorded.json"
    spec.write_text("return " + bridge.lua_literal(scenario) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if clapsep_home is not None:
        env["CLAPSEP_HOME"] = str(clapsep_home)
    done = lua(HARNESS / "run.lua", spec, action, out, env=env)
    assert done.returncode == 0, done.stderr
    recorded = json.loads(out.read_text(encoding="utf-8"))
    processes = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    assert recorded["script_error"] is False, f"{recorded['script_error']}\n{processes}"
    assert not recorded["timed_out"], processes
    return recorded


def take(file: Path, source_length: float, **kw: Any) -> dict[str, Any]:
    return {"file": str(file), "type": "WAVE", "source_length": source_length, "startoffs": 0.0, "playrate": 1.0,
            "pitch": 0.0, "ppitch": 0, "stretch_markers": 0, **kw}


def item(position: float, length: float, tk: dict[str, Any], selected: bool = True, loop: bool = False
         ) -> dict[str, Any]:
    return {"position": position, "length": length, "selected": selected, "loop": loop, "take": tk}


def install_into(resource: Path, command: list[str] | None = None) -> Path:
    resource.mkdir(parents=True, exist_ok=True)
    return bridge.install(resource, command).folder


def leftover_jobs(resource: Path) -> list[str]:
    folder = resource / "Data" / "clapsep"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# --- install -------------------------------------------------------------------------------

def test_default_resource_paths_per_os(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert bridge.default_resource_path("win32", {"APPDATA": r"C:\Users\Zoë\AppData\Roaming"}, home) == \
        Path(r"C:\Users\Zoë\AppData\Roaming") / "REAPER"
    assert bridge.default_resource_path("darwin", {}, home) == home / "Library" / "Application Support" / "REAPER"
    assert bridge.default_resource_path("linux", {}, home) == home / ".config" / "REAPER"


def test_install_writes_one_action_per_preset_and_the_free_text_one(tmp_path: Path, user_config: Path) -> None:
    presets.create("my-truck", presets.to_toml("A truck", ["a truck engine idles"], []))
    presets.create("dog", presets.to_toml("My own dog", ["a small dog yaps"], []))  # overrides the shipped one
    (presets.user_dir() / "broken.toml").write_text("positive = 3\n")
    resource = tmp_path / "REAPER"
    folder = resource / "Scripts" / "clapsep"
    folder.mkdir(parents=True)
    stale, foreign = folder / "clapsep - gone.lua", folder / "clapsep - mine.lua"
    stale.write_text(f"{bridge.MARKER} extract 'gone'\n")
    foreign.write_text("-- the user's own script\n")

    result = CliRunner().invoke(main, ["reaper", "install", "--resource-path", str(resource)])

    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.glob("clapsep - *.lua"))
    expected = {f"clapsep - {n}.lua" for n in [*SHIPPED_PRESETS, "my-truck"]} | {bridge.ASK_FILE, foreign.name}
    assert set(names) == expected
    assert not stale.exists() and "Removed clapsep - gone.lua" in result.output
    assert (folder / bridge.CORE).read_bytes() == CORE.read_bytes()
    assert "skipped a preset" in result.output and "broken.toml" in result.output
    assert "Customize toolbar" in result.output and "Load ReaScript" in result.output
    dog = (folder / "clapsep - dog.lua").read_text(encoding="utf-8")
    assert dog.startswith(bridge.MARKER) and "My own dog" in dog
    assert bridge.lua_literal(bridge.clapsep_command()) in dog


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

@needs_lua
def test_lua_literals_load_back_unchanged(tmp_path: Path) -> None:
    value = {"text": 'q"uo\'te \\ back`slash\n\ttab \x00 nul \x7f é ü 漢', "n": [1, -2.5, 1e-300, 123456789012],
             "flag": True, "nested": {"list": ["a", ["b"]], "off": False}}
    spec = tmp_path / "value.lua"
    spec.write_text("return " + bridge.lua_literal(value) + "\n", encoding="utf-8")
    script = f"local F = dofile({bridge.lua_string(str(HARNESS / 'fake_reaper.lua'))}) " \
             f"io.write(F.to_json(dofile({bridge.lua_string(str(spec))})))"
    done = lua("-e", script)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == value


UNIX_ARGS = ["/opt/my apps/python3", "plain", "with space", "it's", 'say "hi"', "back`tick", "both ' and \"",
             "' and `", '" and `', "ünïcödé 漢字", "C:\\dir\\", "$HOME;rm -rf x|&>", "  lead and trail  "]
WINDOWS_ARGS = [r"C:\Program Files\Python 3\python.exe", "-m", r"C:\Users\Zoë\it's here\job.json",
                "C:\\dir with space\\", "C:\\two\\\\", r"a\b c", "%PATH% ^& | <>", "tab\there", "ünïcödé 漢字"]


@needs_lua
def test_command_lines_split_back_into_the_same_arguments(tmp_path: Path) -> None:
    cases = [{"os": "Other", "argv": UNIX_ARGS}, {"os": "OSX64", "argv": UNIX_ARGS[:3]},
             {"os": "Win64", "argv": WINDOWS_ARGS},
             {"os": "Linux", "argv": ["ok", "all three: ' \" `"]}, {"os": "Win64", "argv": ["ok", 'say "hi"']}]
    spec, out = tmp_path / "cases.lua", tmp_path / "out.json"
    spec.write_text("return " + bridge.lua_literal(cases) + "\n", encoding="utf-8")
    done = lua(HARNESS / "quoting.lua", CORE, spec, out)
    assert done.returncode == 0, done.stderr
    unix, mac, windows, all_three, win_quote = json.loads(out.read_text(encoding="utf-8"))
    assert unix["argv"] == UNIX_ARGS and mac["argv"] == UNIX_ARGS[:3] and windows["argv"] == WINDOWS_ARGS
    assert unix["cmd"].startswith('"/opt/my apps/python3" "plain"')
    assert windows["cmd"].startswith(r'"C:\Program Files\Python 3\python.exe" "-m"')
    assert "all three quote characters" in all_three["refused"]
    assert "contains a double quote" in win_quote["refused"]


# --- actions against the fake REAPER, without clapsep ----------------------------------------

@pytest.fixture
def plain_install(tmp_path: Path) -> Path:
    """Actions installed into a plain resource folder, with a command that is never reached."""
    return install_into(tmp_path / "resource", [sys.executable, "-m", "clapsep_cli"])


@needs_lua
@pytest.mark.parametrize(("what", "tracks", "selection", "message"), [
    ("nothing selected", [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2), selected=False)]}], None,
     "Select one or more audio items first."),
    ("MIDI", [{"name": "A", "items": [item(0, 1, take(Path("/a.mid"), 2, type="MIDI"))]}], None,
     "The item at 0.000 s has no audio file (MIDI?)"),
    ("reversed", [{"name": "A", "items": [item(3, 1, take(Path("/r.wav"), 2, type="SECTION"))]}], None,
     "The item at 3.000 s (r.wav) is reversed or a section of its source"),
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
    assert len(recorded["messages"]) == 1 and message in recorded["messages"][0], recorded["messages"]
    assert recorded["execs"] == [] and recorded["undo"] == []
    assert [t["name"] for t in recorded["tracks"]] == ["A"]


@needs_lua
def test_cancelling_the_description_does_nothing(plain_install: Path, tmp_path: Path) -> None:
    tracks = [{"name": "A", "items": [item(0, 1, take(Path("/a.wav"), 2))]}]
    recorded = run_action(plain_install / bridge.ASK_FILE, {"resource": str(tmp_path / "resource"),
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
def test_a_clapsep_that_never_answers_times_out_and_the_window_is_clipped_to_the_source(tmp_path: Path) -> None:
    resource = tmp_path / "resource"
    folder = install_into(resource, ["/bin/sh", "-c", "exit 0"])
    # playrate 0.5, starting 1 s before its 1.5 s source: the source plays from 7 s to 10 s.
    tracks = [{"name": "A", "items": [item(5, 6, take(Path("/x.wav"), 1.5, startoffs=-1.0, playrate=0.5))]}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "project_path": "", "clock_speed": 10000}, tmp_path)
    assert len(recorded["execs"]) == 1
    assert "clapsep did not start within 180 s" in recorded["messages"][0]
    job = json.loads(recorded["execs"][0]["job"])
    assert job["query"] == {"preset": "wind"}
    assert job["out_dir"] == f"{resource}/Data/clapsep/stems"
    assert job["items"] == [{"source": "/x.wav", "start": 0.0, "end": 1.5}]
    assert leftover_jobs(resource) == [] and recorded["undo"] == []


@needs_lua
@pytest.mark.parametrize(("on_exec", "names", "message"), [
    ("delete first track", ["B", "wind"], None),
    ("switch project", ["A", "B"], "The project changed while clapsep ran; the stems are in "),
])
def test_edits_made_while_clapsep_runs(tmp_path: Path, on_exec: str, names: list[str], message: str | None) -> None:
    stem = write_audio(tmp_path / "stem.wav", tone(0.5, 1000), 1000)
    answer = tmp_path / "answering clapsep"
    answer.write_text("#!/bin/sh\nresult=\"${3%.json}.result.lua\"\n"
                      f"echo 'return {{state = \"done\", items = {{{{status = \"ok\", target = \"{stem}\", "
                      "rate = 1000, offset = 0, frames = 500}}}' > \"$result.tmp\" && mv \"$result.tmp\" \"$result\"\n")
    answer.chmod(0o755)
    resource = tmp_path / "resource"
    folder = install_into(resource, [str(answer)])
    tracks = [{"name": "A", "items": [item(1.0, 0.5, take(tmp_path / "a.wav", 2.0))]}, {"name": "B"}]
    recorded = run_action(folder / "clapsep - wind.lua", {"resource": str(resource), "tracks": tracks,
                                                          "on_exec": on_exec}, tmp_path)
    assert [t["name"] for t in recorded["tracks"]] == names
    if message is None:
        assert recorded["messages"] == []
        assert recorded["tracks"][-1]["items"][0]["position"] == 1.0
    else:
        assert recorded["messages"] == [message + str(tmp_path / "project media")]
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


def expected_stem(source: Path, start: float, end: float, query: list[str], out: Path) -> np.ndarray:
    """What `clapsep extract --start --end` makes of the same window."""
    result = CliRunner().invoke(main, ["extract", *query, str(source), "--start", repr(start), "--end", repr(end),
                                       "--format", "wav", "--bit-depth", "32f", "-o", str(out)])
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
    assert data.shape[0] == round(window["end"] * rate) - first
    assert new_item["position"] == pytest.approx(t0 + (first / rate - window["start"]) / playrate, abs=1e-9)
    assert abs(new_item["position"] - t0) <= 0.5 / rate / playrate
    assert new_item["length"] == pytest.approx(data.shape[0] / rate / playrate, abs=1e-9)
    assert (tk["startoffs"], tk["playrate"], new_item["loop"]) == (0, playrate, 0)


@needs_lua
def test_free_text_action_extracts_each_window_onto_new_tracks(home: Path, tmp_path: Path,
                                                               media: dict[str, Path]) -> None:
    resource = tmp_path / "REAPER rés 'q' \"dq\""
    folder = install_into(resource)
    project = tmp_path / "prøject media"
    walk, rain = media["walk"], media["rain"]
    tracks = [
        {"name": "Dialog", "items": [
            item(10.0, 2.0, take(walk, 4.0, startoffs=0.5), loop=True),          # loops, but plays one pass
            item(13.0, 1.0, take(walk, 4.0, startoffs=1.00001, playrate=2.0, pitch=-2.0, ppitch=1)),
        ]},
        {"name": "Ambience", "items": [
            item(9.0, 5.0, take(rain, 5.0)),
            item(20.0, 1.0, take(rain, 5.0)),                                     # outside the time selection
            item(10.0, 1.0, take(rain, 5.0), selected=False),
        ]},
    ]
    recorded = run_action(folder / bridge.ASK_FILE, {
        "resource": str(resource), "project_path": str(project), "time_selection": [10.25001, 13.5],
        "tracks": tracks, "answer": ANSWER}, tmp_path, home)

    assert recorded["messages"] == []
    (exec_,) = recorded["execs"]
    assert exec_["timeout"] == -1
    assert exec_["argv"][:5] == [sys.executable, "-m", "clapsep_cli", "reaper", "run"]
    job_file = Path(exec_["argv"][5])
    assert job_file.parent == resource / "Data" / "clapsep" and job_file.suffix == ".json"
    assert f"`{job_file}`" in exec_["cmd"]  # the only quote character the path lacks
    job = json.loads(exec_["job"])
    assert job["query"] == {"text": ANSWER} and job["out_dir"] == str(project)
    windows = job["items"]
    assert [w["source"] for w in windows] == [str(walk), str(walk), str(rain)]
    assert [(w["start"], w["end"]) for w in windows] == [
        pytest.approx((0.75001, 2.5), abs=1e-9), pytest.approx((1.00001, 2.00001), abs=1e-9),
        pytest.approx((1.25001, 4.5), abs=1e-9)]

    assert [t["name"] for t in recorded["tracks"]] == ["Dialog", ANSWER, "Ambience", ANSWER]
    assert [len(t["items"]) for t in recorded["tracks"]] == [2, 2, 3, 1]
    assert recorded["tracks"][0]["items"][1]["takes"][0]["startoffs"] == 1.00001  # sources untouched
    dialog, ambience = recorded["tracks"][1]["items"], recorded["tracks"][3]["items"]
    query = ["-q", ANSWER]
    check_stem(dialog[0], windows[0], 10.25001, 1.0,
               expected_stem(walk, windows[0]["start"], windows[0]["end"], query, tmp_path / "e0.wav"), project)
    check_stem(dialog[1], windows[1], 13.0, 2.0,
               expected_stem(walk, windows[1]["start"], windows[1]["end"], query, tmp_path / "e1.wav"), project)
    check_stem(ambience[0], windows[2], 10.25001, 1.0,
               expected_stem(rain, windows[2]["start"], windows[2]["end"], query, tmp_path / "e2.wav"), project)
    assert (dialog[1]["takes"][0]["pitch"], dialog[1]["takes"][0]["ppitch"]) == (-2.0, 1)
    assert sorted(p.name for p in project.iterdir()) == [
        "rain.dog_s_bark_ü.wav", "walk 'n\" talk ü.dog_s_bark_ü-2.wav", "walk 'n\" talk ü.dog_s_bark_ü.wav"]

    assert recorded["undo"] == [{"event": "begin"},
                                {"event": "end", "description": f"clapsep: extract {ANSWER}", "flags": -1}]
    assert recorded["changed_outside_undo"] == [] and recorded["refresh_prevented"] == 0
    assert leftover_jobs(resource) == []


@needs_lua
def test_preset_action_with_windows_quoting_reports_a_failing_item(home: Path, tmp_path: Path,
                                                                    media: dict[str, Path]) -> None:
    wrapper_dir = tmp_path / "py thön's"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "clapsep launcher"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m clapsep_cli \"$@\"\n")
    wrapper.chmod(0o755)
    resource = tmp_path / "Wïn rés 'x'"
    folder = install_into(resource, [str(wrapper)])
    broken = media["walk"].with_name("broken.wav")
    broken.write_text("not audio at all")
    tracks = [{"name": "Music", "items": [item(2.0, 1.5, take(media["rain"], 5.0, startoffs=0.25))]},
              {"name": "Noise", "items": [item(4.0, 1.0, take(broken, 2.0))]}]
    project = tmp_path / "stems"
    recorded = run_action(folder / "clapsep - dog.lua", {
        "os": "Win64", "resource": str(resource), "project_path": str(project), "tracks": tracks}, tmp_path, home)

    (exec_,) = recorded["execs"]
    assert exec_["timeout"] == -2
    assert exec_["cmd"].startswith(f'"{wrapper}" "reaper" "run" "')
    assert exec_["argv"][:3] == [str(wrapper), "reaper", "run"]
    assert json.loads(exec_["job"])["query"] == {"preset": "dog"}
    (message,) = recorded["messages"]
    assert message.startswith("clapsep could not extract 1 of 2 items:")
    assert "The item at 4.000 s (broken.wav): " in message and str(broken) in message
    assert [t["name"] for t in recorded["tracks"]] == ["Music", "dog", "Noise"]
    (stem_item,) = recorded["tracks"][1]["items"]
    check_stem(stem_item, {"start": 0.25, "end": 1.75}, 2.0, 1.0,
               expected_stem(media["rain"], 0.25, 1.75, ["-p", "dog"], tmp_path / "e.wav"), project)
    assert [u["event"] for u in recorded["undo"]] == ["begin", "end"]
    assert leftover_jobs(resource) == []


@needs_lua
def test_a_clapsep_error_reaches_the_user_and_changes_nothing(tmp_path: Path, media: dict[str, Path]) -> None:
    resource = tmp_path / "resource"
    folder = install_into(resource)
    tracks = [{"name": "A", "items": [item(0.0, 1.0, take(media["rain"], 5.0))]}]
    recorded = run_action(folder / "clapsep - rain.lua", {"resource": str(resource), "tracks": tracks}, tmp_path,
                          clapsep_home=tmp_path / "empty store")
    (message,) = recorded["messages"]
    assert message.startswith("clapsep failed: ") and "clapsep models download" in message
    assert recorded["undo"] == [] and len(recorded["tracks"]) == 1
    assert leftover_jobs(resource) == []


# --- clapsep reaper run on its own -------------------------------------------------------------

@needs_lua
@pytest.mark.parametrize(("job", "error"), [
    ("{not json", "cannot read the job file"),
    ('{"clapsep_reaper_job": 99}', "not a clapsep REAPER job of version 1"),
    ('{"clapsep_reaper_job": 1, "query": {"text": "dog", "preset": "dog"}, "out_dir": "/x", "items": []}',
     "'query' must hold one 'text' or one 'preset'"),
    ('{"clapsep_reaper_job": 1, "query": {"text": "dog"}, "out_dir": "/x", "items": '
     '[{"source": "/a.wav", "start": 2, "end": 1}]}', "0 <= start < end"),
])
def test_run_reports_a_bad_job_in_its_result_file(tmp_path: Path, job: str, error: str) -> None:
    path = tmp_path / "job-1.json"
    path.write_text(job, encoding="utf-8")
    result = CliRunner().invoke(main, ["reaper", "run", str(path)])
    assert result.exit_code == 1 and error in result.output
    result_file = bridge.lua_string(str(tmp_path / "job-1.result.lua"))
    script = f"local r = dofile({result_file}) io.write(r.state, '|', r.error)"
    done = lua("-e", script)
    state, message = done.stdout.split("|", 1)
    assert state == "done" and error in message
