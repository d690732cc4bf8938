"""REAPER: ReaScript actions that extract from the selected items, and the jobs they run.

``install`` writes one Lua action per preset (shipped and user), plus one that asks for a
description, into ``<resource path>/Scripts/clapsep/`` beside the shipped ``clapsep_core.lua``.
An action writes a job file (JSON) and starts ``clapsep reaper run JOB`` without waiting;
:func:`run_job_file` extracts every item's window with the same library code as ``clapsep
extract`` and writes the result next to the job (``job-X.json`` -> ``job-X.result.lua``) as a
Lua table the action can load without a JSON parser: ``{state = "running"}`` at once, then
``{state = "done", items = {...}}`` or ``{state = "done", error = "..."}``.

Stems are 32-bit float WAV (lossless, never clipped, sample-exact) in the job's ``out_dir``
under names that do not exist yet, so an earlier stem REAPER may still play is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clapsep_cli import presets, resources, store
from clapsep_cli.cli.common import load_model
from clapsep_cli.cli.extract_cmd import resolve_query
from clapsep_cli.engine import EngineOptions
from clapsep_cli.errors import ClapsepError
from clapsep_cli.extract import Extractor, FileResult, OutputPlan, Region
from clapsep_cli.queries import EmbeddingCache, Query

CORE = "clapsep_core.lua"
MARKER = "-- clapsep action:"
ASK_FILE = "clapsep - describe a sound.lua"
JOB_VERSION = 1
STEM_FORMAT, STEM_DEPTH = "wav", "32f"


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
class Action:
    """One action script: a preset's, or (preset None) the one that asks for a description."""

    file_name: str
    preset: str | None
    label: str
    description: str


def actions(available: list[presets.Preset]) -> list[Action]:
    """The free-text action, then one per preset, sorted by name."""
    out = [Action(ASK_FILE, None, "describe a sound", "Asks for a description of the sound.")]
    for p in sorted(available, key=lambda p: p.name):
        out.append(Action(f"clapsep - {p.name}.lua", p.name, p.name, p.description or p.name))
    return out


def action_script(action: Action, command: list[str]) -> str:
    """The text of one action: its settings, then a call into clapsep_core.lua beside it."""
    config = {"command": command, "preset": action.preset, "label": action.label}
    summary = " ".join(action.description.split())
    return (f"{MARKER} extract {action.label!r} from the selected items.\n"
            f"-- {summary}\n"
            "-- Written by `clapsep reaper install`; run that again after adding or changing presets.\n"
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


def install(resource_path: Path, command: list[str] | None = None) -> Installed:
    """Write the core and one action per preset into ``resource_path/Scripts/clapsep``,
    removing actions of presets that are gone. Presets that do not validate are skipped and
    reported in ``problems``."""
    if not resource_path.is_dir():
        raise ClapsepError(f"REAPER's resource folder {resource_path} does not exist (start REAPER once, or pass "
                           "--resource-path; REAPER shows it under Options > Show REAPER resource path)")
    command = command or clapsep_command()
    good, problems = presets.load_all()
    folder = resource_path / "Scripts" / "clapsep"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resources.shipped("plugins") / "reaper" / CORE, folder / CORE)
        written = []
        for action in actions(good):
            path = folder / action.file_name
            path.write_text(action_script(action, command), encoding="utf-8")
            written.append(path)
        removed = [p for p in _our_actions(folder) if p not in written]
        for path in removed:
            path.unlink()
    except OSError as err:
        raise ClapsepError(f"cannot write the REAPER actions into {folder}: {err.strerror or err}") from None
    return Installed(folder, written, removed, problems)


def _our_actions(folder: Path) -> list[Path]:
    """Action scripts an earlier install wrote into ``folder`` (recognised by their first line)."""
    found = []
    for path in sorted(folder.glob("clapsep - *.lua")):
        with path.open(encoding="utf-8", errors="replace") as f:
            if f.readline().startswith(MARKER):
                found.append(path)
    return found


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
    """One window of one source file, in seconds of the source."""

    source: Path
    start: float
    end: float


@dataclass(frozen=True)
class Job:
    """A job file from a REAPER action: a text or a preset, where stems go, what to extract."""

    text: str | None
    preset: str | None
    out_dir: Path
    items: list[JobItem]


def result_path(job_path: Path) -> Path:
    """Where the result of ``job-X.json`` goes: ``job-X.result.lua``."""
    return job_path.with_name(job_path.name.removesuffix(".json") + ".result.lua")


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
    if not (isinstance(query, dict) and len(query) == 1 and set(query) <= {"text", "preset"}
            and isinstance(next(iter(query.values())), str)):
        raise ClapsepError(f"{path}: 'query' must hold one 'text' or one 'preset'")
    if not isinstance(out_dir, str) or not out_dir:
        raise ClapsepError(f"{path}: 'out_dir' must name a folder")
    if not isinstance(items, list) or not items:
        raise ClapsepError(f"{path}: 'items' must list the windows to extract")
    return Job(query.get("text"), query.get("preset"), Path(out_dir), [_job_item(path, i) for i in items])


def _job_item(path: Path, item: Any) -> JobItem:
    def number(key: str) -> float:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ClapsepError(f"{path}: every item needs a number '{key}'")
        return float(value)

    if not isinstance(item, dict) or not isinstance(item.get("source"), str):
        raise ClapsepError(f"{path}: every item needs a 'source' file")
    start, end = number("start"), number("end")
    if not 0 <= start < end:
        raise ClapsepError(f"{path}: an item's window must have 0 <= start < end (got {start}, {end})")
    return JobItem(Path(item["source"]), start, end)


def free_stem_path(source: Path, query: Query, out_dir: Path) -> Path:
    """``<source stem>.<query>.wav`` in ``out_dir``, numbered ``-2``, ``-3`` ... if taken."""
    base = f"{source.stem}.{query.slug()}"
    n = 1
    while True:
        candidate = out_dir / f"{base}{'' if n == 1 else f'-{n}'}.{STEM_FORMAT}"
        if not candidate.exists():
            return candidate
        n += 1


def extract_items(job: Job) -> list[FileResult]:
    """Extract every item's window with one model load; a failing item is recorded, not raised."""
    texts = (job.text,) if job.text is not None else ()
    query, _, _ = resolve_query(tuple(str(i.source) for i in job.items), texts, job.preset, (), (), (), None)
    model = load_model(store.DEFAULT_MODEL, "auto", "auto", quiet=True)  # device, precision: the defaults
    cache = EmbeddingCache(store.store_root() / "embeddings", model.installed.fingerprint)
    results = []
    for item in job.items:
        plan = OutputPlan(output=free_stem_path(item.source, query, job.out_dir), fmt=STEM_FORMAT,
                          bit_depth=STEM_DEPTH)
        extractor = Extractor(model, query, EngineOptions(), plan, cache, Region(item.start, item.end))
        results.append(extractor.run_one(item.source))
    return results


def stem_entry(result: FileResult) -> dict[str, Any]:
    """What the action needs to place one stem (or to report why there is none)."""
    if result.status != "ok":
        return {"status": result.status, "error": result.error or result.status}
    return {"status": "ok", "target": str(result.target), "rate": result.rate, "offset": result.offset_frames,
            "frames": result.frames}


def write_result(path: Path, data: dict[str, Any]) -> None:
    """Write a result file atomically (the polling action never sees half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("return " + lua_literal(data) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_job_file(job_path: Path) -> None:
    """Run a job file from a REAPER action, reporting to its result file whatever happens."""
    result = result_path(job_path)
    write_result(result, {"state": "running"})
    try:
        results = extract_items(read_job(job_path))
    except ClapsepError as err:
        write_result(result, {"state": "done", "error": str(err)})
        raise
    except Exception as err:
        write_result(result, {"state": "done", "error": f"internal error ({type(err).__name__}: {err})"})
        raise
    write_result(result, {"state": "done", "items": [stem_entry(r) for r in results]})
