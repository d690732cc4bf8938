"""REAPER: ReaScript actions that extract from the selected items, and the jobs they run.

``install`` writes one Lua action per preset (shipped and user), plus one that asks for a
description, into ``<resource path>/Scripts/clapsep/`` beside the shipped ``clapsep_core.lua``.
Each action records what it needs as absolute paths (the clapsep command, the preset file, the
model store, ffmpeg), because a process REAPER starts may not see the user's shell environment.
An action writes a job file (JSON) and starts ``clapsep reaper run JOB`` without waiting;
:func:`run_job_file` extracts every item's window with the same library code as ``clapsep
extract``. Beside the job it appends to ``job-X.beat`` every second while it works (so the
action can tell a dead clapsep from a busy one), writes ``job-X.log`` (what a user sends with a
report), and ends by renaming ``job-X.result.lua`` into place: a Lua table the action loads
without a JSON parser, ``{state = "done", items = {...}}`` or ``{state = "done", error = "..."}``.
No file the action reads is ever replaced, which Windows would refuse while the action has it
open. Removing the job file cancels the job: clapsep stops before its next item and removes
the stems it wrote.

Stems are 32-bit float WAV (lossless, never clipped, sample-exact) in the job's ``out_dir``
under names that do not exist yet, so an earlier stem REAPER may still play is never replaced.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import platform
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from clapsep_cli import __version__, api, atomic, presets, resources, store
from clapsep_cli.errors import ClapsepError
from clapsep_cli.extract import FileResult, OutputPlan, Region
from clapsep_cli.queries import Query

CORE = "clapsep_core.lua"
MARKER = "-- clapsep action:"
ASK_FILE = "clapsep - describe a sound.lua"
JOB_VERSION = 2
STEM_FORMAT, STEM_DEPTH = "wav", "32f"
HEARTBEAT_SECONDS = 1.0


def default_resource_path(platform: str = sys.platform, env: Mapping[str, str] = os.environ,
                          home: Path | None = None) -> Path:
    """Where REAPER keeps its settings and scripts by default on ``platform``."""
    home = Path.home() if home is None else home
    if platform.startswith("win"):
        return Path(env.get("APPDATA", home / "AppData" / "Roaming")) / "REAPER"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "REAPER"
    return home / ".config" / "REAPER"


def lua_string(text: str) -> str:
    """A Lua string literal of ``text``: quotes, backslashes and control characters escaped,
    everything else (UTF-8 included) as is."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def lua_literal(value: Any) -> str:
    """Lua source text for None, a bool, number, string, list/tuple or dict (keys as strings)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Lua has no literal for {value}")
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_string(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


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
    """One action script: a preset's, or (preset_file None) the one that asks for a description."""

    file_name: str
    preset_file: Path | None
    label: str
    description: str


def actions(available: list[presets.Preset]) -> list[Action]:
    """The free-text action, then one per preset, sorted by name."""
    out = [Action(ASK_FILE, None, "describe a sound", "Asks for a description of the sound.")]
    for p in sorted(available, key=lambda p: p.name):
        out.append(Action(f"clapsep - {p.name}.lua", p.path.absolute(), p.name, p.description or p.name))
    return out


def action_script(action: Action, command: list[str], env: Environment) -> str:
    """The text of one action: its settings, then a call into clapsep_core.lua beside it."""
    config = {"command": command, "preset_file": action.preset_file and str(action.preset_file),
              "label": action.label, "store": str(env.store), "ffmpeg": env.ffmpeg and str(env.ffmpeg)}
    summary = " ".join(action.description.split())
    return (f"{MARKER} extract {action.label!r} from the selected items.\n"
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
        "track below, named after the sound.",
    ])


@dataclass(frozen=True)
class JobItem:
    """One window of one source file, in seconds of the source (``end`` None: to its end)."""

    source: Path
    start: float
    end: float | None


@dataclass(frozen=True)
class Job:
    """A job file from a REAPER action: a text or a preset file, where stems go, what to
    extract, and the store and ffmpeg recorded at install time."""

    text: str | None
    preset_file: Path | None
    out_dir: Path
    items: list[JobItem]
    store: Path
    ffmpeg: Path | None


@dataclass(frozen=True)
class JobFiles:
    """The files beside a job ``job-X.json``."""

    job: Path

    def _sibling(self, suffix: str) -> Path:
        return self.job.with_name(self.job.name.removesuffix(".json") + suffix)

    @property
    def result(self) -> Path:
        return self._sibling(".result.lua")

    @property
    def beat(self) -> Path:
        return self._sibling(".beat")

    @property
    def log(self) -> Path:
        return self._sibling(".log")


def _absolute(path: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not Path(value).is_absolute():
        raise ClapsepError(f"{path}: '{key}' must be an absolute path (run `clapsep reaper install` again)")
    return Path(value)


def read_job(path: Path) -> Job:
    """Parse and check a job file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClapsepError(f"cannot read the job file {path}: {err}") from None
    if not isinstance(data, dict) or data.get("clapsep_reaper_job") != JOB_VERSION:
        raise ClapsepError(f"{path}: not a clapsep REAPER job of version {JOB_VERSION} "
                           "(run `clapsep reaper install` again)")
    query, items, out_dir = data.get("query"), data.get("items"), data.get("out_dir")
    if not (isinstance(query, dict) and len(query) == 1 and set(query) <= {"text", "preset_file"}
            and isinstance(next(iter(query.values())), str)):
        raise ClapsepError(f"{path}: 'query' must hold one 'text' or one 'preset_file'")
    if not isinstance(out_dir, str) or not out_dir:
        raise ClapsepError(f"{path}: 'out_dir' must name a folder")
    if not isinstance(items, list) or not items:
        raise ClapsepError(f"{path}: 'items' must list the windows to extract")
    preset_file = _absolute(path, query["preset_file"], "preset_file") if "preset_file" in query else None
    ffmpeg = _absolute(path, data["ffmpeg"], "ffmpeg") if "ffmpeg" in data else None
    return Job(query.get("text"), preset_file, Path(out_dir), [_job_item(path, i) for i in items],
               _absolute(path, data.get("store"), "store"), ffmpeg)


def _job_item(path: Path, item: Any) -> JobItem:
    def number(key: str) -> float:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ClapsepError(f"{path}: every item needs a number '{key}'")
        return float(value)

    if not isinstance(item, dict) or not isinstance(item.get("source"), str):
        raise ClapsepError(f"{path}: every item needs a 'source' file")
    start = number("start")
    end = number("end") if "end" in item else None
    if not (0 <= start and (end is None or start < end)):
        raise ClapsepError(f"{path}: an item's window must have 0 <= start < end (got {start}, {end})")
    return JobItem(Path(item["source"]), start, end)


@contextlib.contextmanager
def job_environment(job: Job) -> Iterator[None]:
    """The store and ffmpeg the action recorded, for the duration of the job: REAPER may start
    clapsep with almost no environment (launchd's minimal PATH and no shell variables when it
    was started from the macOS Dock)."""
    saved = {name: os.environ.get(name) for name in ("CLAPSEP_HOME", "PATH")}
    os.environ["CLAPSEP_HOME"] = str(job.store)
    if job.ffmpeg is not None:
        os.environ["PATH"] = os.pathsep.join([str(job.ffmpeg.parent), saved["PATH"] or os.defpath])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def job_request(job: Job) -> api.Request:
    """The job's request: its text, or the preset file the action was installed from."""
    if job.preset_file is not None:
        if not job.preset_file.is_file():
            raise ClapsepError(f"the preset file {job.preset_file} is gone (run `clapsep reaper install` again)")
        return api.request(preset=presets.parse(job.preset_file, presets.source_of(job.preset_file)))
    return api.request(job.text or "")


def free_stem_path(source: Path, query: Query, out_dir: Path) -> Path:
    """``<source stem>.<query>.wav`` in ``out_dir``, numbered ``-2``, ``-3`` ... if taken."""
    base = f"{source.stem}.{query.slug()}"
    n = 1
    while True:
        candidate = out_dir / f"{base}{'' if n == 1 else f'-{n}'}.{STEM_FORMAT}"
        if not candidate.exists():
            return candidate
        n += 1


class Cancelled(Exception):
    """The action removed the job file: it was stopped, nobody waits for the result."""


def extract_items(job: Job, log: Callable[[str], None], cancelled: Callable[[], bool]) -> list[FileResult]:
    """Extract every item's window with one model load; a failing item is recorded, not raised.
    Before each item and at the end, ``cancelled()`` is asked; if true, the stems written so
    far are removed and :class:`Cancelled` is raised."""
    req = job_request(job)
    separator = api.Separator()
    results: list[FileResult] = []

    def stop_if_cancelled() -> None:
        if cancelled():
            remove_stems(results)
            raise Cancelled

    for n, item in enumerate(job.items, 1):
        stop_if_cancelled()
        end = "its end" if item.end is None else f"{item.end:.6f} s"
        log(f"item {n}/{len(job.items)}: {item.source} from {item.start:.6f} s to {end}")
        plan = OutputPlan(output=free_stem_path(item.source, req.query, job.out_dir), fmt=STEM_FORMAT,
                          bit_depth=STEM_DEPTH)
        result = separator.extract([item.source], req, plan, Region(item.start, item.end)).results[0]
        log(f"  {result.status}: {result.target if result.status == 'ok' else result.error}")
        results.append(result)
    stop_if_cancelled()
    return results


def remove_stems(results: list[FileResult]) -> None:
    for result in results:
        if result.status == "ok" and result.target is not None:
            result.target.unlink(missing_ok=True)


def stem_entry(result: FileResult) -> dict[str, Any]:
    """What the action needs to place one stem (or to report why there is none)."""
    if result.status != "ok":
        return {"status": result.status, "error": result.error or result.status}
    return {"status": "ok", "target": str(result.target), "rate": result.rate, "offset": result.offset_frames,
            "frames": result.frames}


def write_result(path: Path, data: dict[str, Any]) -> None:
    """Write the result file under a temporary name and rename it into place: the action never
    sees half of one, and, as the name does not exist yet, the rename cannot collide with the
    action reading it (on Windows a rename onto a file open elsewhere fails)."""
    atomic.write_text(path, "return " + lua_literal(data) + "\n")


class Heartbeat:
    """Appends a byte to ``path`` every ``interval`` seconds from a background thread while the
    job runs, so the waiting action can tell a working clapsep from a dead one (killed, crashed,
    out of memory). Appending never replaces the file, so the action can read it at any time
    on every OS."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_SECONDS):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clapsep-heartbeat", daemon=True)

    def beat(self) -> None:
        try:
            with open(self.path, "ab") as f:
                f.write(b".")
        except OSError:
            pass  # a full disk stops the beats, and the action reports a dead clapsep

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def crash_reports_to(log: TextIO) -> Iterator[None]:
    """Python tracebacks of hard crashes (segfaults in native code) go to the job's log."""
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable(file=log)
    try:
        yield
    finally:
        faulthandler.disable()
        if was_enabled and sys.__stderr__ is not None:
            faulthandler.enable(file=sys.__stderr__)


def run_job_file(job_path: Path) -> None:
    """Run a job file from a REAPER action: heartbeat and log beside it while it runs, then the
    result file, last. A job whose file is gone (the action was stopped) leaves nothing."""
    if not job_path.is_file():
        raise ClapsepError(f"no job file {job_path} (the REAPER action was stopped?)")
    files = JobFiles(job_path)
    outcome: dict[str, Any] | None = None
    error: ClapsepError | None = None
    with open(files.log, "a", encoding="utf-8") as log_file, Heartbeat(files.beat), \
            contextlib.redirect_stderr(log_file), crash_reports_to(log_file):
        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()

        log(f"clapsep {__version__}, Python {platform.python_version()} on {platform.platform()}")
        log(f"job {job_path}")
        try:
            job = read_job(job_path)
            log(f"model store {job.store}; ffmpeg {job.ffmpeg or 'not recorded'}")
            with job_environment(job):
                results = extract_items(job, log, lambda: not job_path.exists())
            outcome = {"state": "done", "items": [stem_entry(r) for r in results]}
        except Cancelled:
            pass
        except ClapsepError as err:
            log(f"error: {err}")
            outcome, error = {"state": "done", "error": str(err)}, err
        except Exception as err:  # noqa: BLE001 - reported to the action, then re-raised below
            log(traceback.format_exc())
            outcome = {"state": "done", "error": f"internal error ({type(err).__name__}: {err})"}
            error = ClapsepError(f"internal error ({type(err).__name__}: {err}); see {files.log}")
        if not job_path.exists():  # stopped: nobody waits for a result
            outcome = error = None
        log("writing the result" if outcome is not None else "cancelled: the job file was removed")
    if outcome is None:
        files.beat.unlink(missing_ok=True)
        files.log.unlink(missing_ok=True)
        return
    write_result(files.result, outcome)
    if error is not None:
        raise error
