"""Installing the REAPER actions."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli import resources
from clapsep_cli.bridges.reaper.lua import lua_literal
from clapsep_cli.errors import ClapsepError
from clapsep_cli.events.detect import DetectOptions
from clapsep_cli.models import store
from clapsep_cli.queries import presets

CORE = "clapsep_core.lua"
MARKER = "-- clapsep action:"
ASK_FILE = "clapsep - describe a sound.lua"
FIND_FILE = "clapsep - find a sound.lua"


def default_resource_path(platform: str = sys.platform, env: Mapping[str, str] = os.environ,
                          home: Path | None = None) -> Path:
    """Where REAPER keeps its settings and scripts by default on ``platform``."""
    home = Path.home() if home is None else home
    if platform.startswith("win"):
        return Path(env.get("APPDATA", home / "AppData" / "Roaming")) / "REAPER"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "REAPER"
    return home / ".config" / "REAPER"


def clapsep_command() -> list[str]:
    """The argv that starts this clapsep, whatever PATH REAPER sees."""
    return [sys.executable, "-m", "clapsep_cli"]


@dataclass(frozen=True)
class Environment:
    """What the actions record so that clapsep finds its files in a bare environment: the
    model store and ffmpeg (None if it is not installed), as absolute paths."""

    store: Path
    ffmpeg: Path | None


def current_environment() -> Environment:
    """The store and ffmpeg this shell sees, as absolute paths (symlinks kept, so that a
    package manager's upgrade behind a stable link does not break them)."""
    ffmpeg = shutil.which("ffmpeg")
    return Environment(store.store_root().absolute(), Path(ffmpeg).absolute() if ffmpeg else None)


@dataclass(frozen=True)
class Action:
    """One action script: a preset's, or (preset_file None) one that asks for a description;
    ``kind`` is what it does with the sound: ``extract`` it onto a new track, or ``find`` it
    (regions or markers where it occurs)."""

    file_name: str
    preset_file: Path | None
    label: str
    description: str
    kind: str = "extract"


def actions(available: list[presets.Preset]) -> list[Action]:
    """The free-text extract and find actions, then each preset's two, sorted by name."""
    out = [Action(ASK_FILE, None, "describe a sound", "Asks for a description of the sound."),
           Action(FIND_FILE, None, "find a sound", "Asks for a description of the sound, a threshold and "
                  "whether to mark it with regions or markers.", "find")]
    for p in sorted(available, key=lambda p: p.name):
        description = p.description or p.name
        out.append(Action(f"clapsep - {p.name}.lua", p.path.absolute(), p.name, description))
        out.append(Action(f"clapsep - find {p.name}.lua", p.path.absolute(), p.name, description, "find"))
    return out


def action_script(action: Action, command: list[str], env: Environment) -> str:
    """The text of one action: its settings, then a call into clapsep_core.lua beside it. A find
    action also records the default threshold, for the first find before the user chose one."""
    config = {"kind": action.kind, "command": command, "preset_file": action.preset_file and str(action.preset_file),
              "label": action.label, "store": str(env.store), "ffmpeg": env.ffmpeg and str(env.ffmpeg)}
    if action.kind == "find":
        config["threshold"] = DetectOptions().threshold
    summary = " ".join(action.description.split())
    what = "extract {!r} from" if action.kind == "extract" else "find {!r} in"
    return (f"{MARKER} {what.format(action.label)} the selected items.\n"
            f"-- {summary}\n"
            "-- Written by `clapsep reaper install`; run that again after adding or changing presets,\n"
            "-- or after moving clapsep, its model store or ffmpeg.\n"
            f"local config = {lua_literal(config)}\n"
            "local here = debug.getinfo(1, \"S\").source:match(\"^@(.*[/\\\\])\") or \"\"\n"
            "dofile(here .. \"clapsep_core.lua\").run(config)\n")


@dataclass(frozen=True)
class Installed:
    """What :func:`install` did."""

    folder: Path
    written: list[Path]
    removed: list[Path]
    problems: list[str]
    command: list[str]
    env: Environment


def install(resource_path: Path, command: list[str] | None = None, env: Environment | None = None) -> Installed:
    """Write the core and one action per preset into ``resource_path/Scripts/clapsep``,
    removing actions of presets that are gone. Presets that do not validate are skipped and
    reported in ``problems``."""
    if not resource_path.is_dir():
        raise ClapsepError(f"REAPER's resource folder {resource_path} does not exist (start REAPER once, or pass "
                           "--resource-path; REAPER shows it under Options > Show REAPER resource path)")
    command = command or clapsep_command()
    env = env or current_environment()
    good, problems = presets.load_all()
    folder = resource_path / "Scripts" / "clapsep"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resources.shipped("plugins") / "reaper" / CORE, folder / CORE)
        written = []
        for action in actions(good):
            path = folder / action.file_name
            path.write_text(action_script(action, command, env), encoding="utf-8")
            written.append(path)
        removed = [p for p in _our_actions(folder) if p not in written]
        for path in removed:
            path.unlink()
    except OSError as err:
        raise ClapsepError(f"cannot write the REAPER actions into {folder}: {err.strerror or err}") from None
    return Installed(folder, written, removed, problems, command, env)


def _our_actions(folder: Path) -> list[Path]:
    """Action scripts an earlier install wrote into ``folder`` (recognised by their first line)."""
    found = []
    for path in sorted(folder.glob("clapsep - *.lua")):
        with path.open(encoding="utf-8", errors="replace") as f:
            if f.readline().startswith(MARKER):
                found.append(path)
    return found


def recorded_help(installed: Installed) -> str:
    """What the actions will use, so the user can see it matches their set-up."""
    lines = ["The actions run (whatever PATH and variables REAPER gives them):",
             f"  clapsep:     {' '.join(installed.command)}",
             f"  model store: {installed.env.store}"]
    if installed.env.ffmpeg is not None:
        lines.append(f"  ffmpeg:      {installed.env.ffmpeg}")
    else:
        lines.append("  ffmpeg:      not found, so items from MP3, M4A/AAC and other files libsndfile cannot read "
                     "will fail; install ffmpeg and run `clapsep reaper install` again")
    return "\n".join(lines)


def toolbar_help(installed: Installed) -> str:
    """How to turn the written scripts into toolbar buttons, step by step."""
    return "\n".join([
        "In REAPER:",
        "  1. Actions > Show action list... > New action... > Load ReaScript..., open "
        f"{installed.folder}, select all the 'clapsep - ...' files (not {CORE}), Open.",
        "  2. Right-click a toolbar > Customize toolbar... > Add..., search 'clapsep', pick the action, "
        "Save (repeat for each button you want).",
        "Then select items (and a time selection if you like) and click a button: the stem appears on a new "
        "track below, named after the sound; a 'find' action marks where the sound occurs with regions "
        "(or markers).",
    ])
