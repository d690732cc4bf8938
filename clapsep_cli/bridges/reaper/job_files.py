"""Job files of the REAPER actions, and running them: read (:func:`read_job`), planned as one
job of items, run by the executor :func:`~clapsep_cli.service.choose.choose_executor` gives an
editor (the warm service, started on the first click), and answered with a Lua result file."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import platform
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from clapsep_cli import __version__, api
from clapsep_cli.audio import atomic
from clapsep_cli.bridges.reaper.lua import lua_literal
from clapsep_cli.errors import ClapsepError
from clapsep_cli.queries import presets
from clapsep_cli.service import client
from clapsep_cli.service.choose import EDITOR_SERVER, SERVER_ENV, choose_executor

JOB_VERSION = 2
REMOVED = "the job file was removed"  # why a job stops: the action was stopped
STEM_FORMAT, STEM_DEPTH = "wav", "32f"
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class JobFile:
    """A job file from a REAPER action: what to do (``kind``: ``extract`` stems into ``out_dir``,
    or ``find`` events as ``detect`` says), a text or a preset file, the windows to work on (each
    an :class:`~clapsep_cli.api.Item`: a source file and a region of it), and the store and ffmpeg
    recorded at install time."""

    kind: str
    text: str | None
    preset_file: Path | None
    out_dir: Path | None
    items: list[api.Item]
    store: Path
    ffmpeg: Path | None
    detect: api.DetectOptions | None


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


def read_job(path: Path) -> JobFile:
    """Parse and check a job file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClapsepError(f"cannot read the job file {path}: {err}") from None
    if not isinstance(data, dict) or data.get("clapsep_reaper_job") != JOB_VERSION:
        raise ClapsepError(f"{path}: not a clapsep REAPER job of version {JOB_VERSION} "
                           "(run `clapsep reaper install` again)")
    kind = data.get("kind", "extract")
    if kind not in RUNS:
        raise ClapsepError(f"{path}: 'kind' must be one of {', '.join(RUNS)}")
    query, items, out_dir = data.get("query"), data.get("items"), data.get("out_dir")
    if not (isinstance(query, dict) and len(query) == 1 and set(query) <= {"text", "preset_file"}
            and isinstance(next(iter(query.values())), str)):
        raise ClapsepError(f"{path}: 'query' must hold one 'text' or one 'preset_file'")
    if kind == "extract" and (not isinstance(out_dir, str) or not out_dir):
        raise ClapsepError(f"{path}: 'out_dir' must name a folder")
    if not isinstance(items, list) or not items:
        raise ClapsepError(f"{path}: 'items' must list the windows to work on")
    preset_file = _absolute(path, query["preset_file"], "preset_file") if "preset_file" in query else None
    ffmpeg = _absolute(path, data["ffmpeg"], "ffmpeg") if "ffmpeg" in data else None
    return JobFile(kind, query.get("text"), preset_file, Path(out_dir) if kind == "extract" else None,
                   [_job_item(path, i) for i in items], _absolute(path, data.get("store"), "store"), ffmpeg,
                   _detect(path, data) if kind == "find" else None)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _job_item(path: Path, item: Any) -> api.Item:
    def number(key: str) -> float:
        value = _number(item.get(key))
        if value is None:
            raise ClapsepError(f"{path}: every item needs a number '{key}'")
        return value

    if not isinstance(item, dict) or not isinstance(item.get("source"), str):
        raise ClapsepError(f"{path}: every item needs a 'source' file")
    try:
        region = api.Region(number("start"), number("end") if "end" in item else None)
    except ClapsepError as err:
        raise ClapsepError(f"{path}: an item's {err}") from None
    return api.Item(Path(item["source"]), region)


def _detect(path: Path, data: dict[str, Any]) -> api.DetectOptions:
    """How a find job turns scores into events: its ``threshold``, where it gives one."""
    if "threshold" not in data:
        return api.DetectOptions()
    threshold = _number(data["threshold"])
    if threshold is None:
        raise ClapsepError(f"{path}: 'threshold' must be a number")
    try:
        return api.DetectOptions(threshold=threshold)
    except ClapsepError as err:
        raise ClapsepError(f"{path}: {err}") from None


@contextlib.contextmanager
def job_environment(job: JobFile) -> Iterator[None]:
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


def job_request(job: JobFile) -> api.Request:
    """The job's request: its text, or the preset file the action was installed from."""
    if job.preset_file is not None:
        if not job.preset_file.is_file():
            raise ClapsepError(f"the preset file {job.preset_file} is gone (run `clapsep reaper install` again)")
        return api.request(preset=presets.parse(job.preset_file, presets.source_of(job.preset_file)))
    return api.request(job.text or "")


def free_stem_path(source: Path, tag: str, out_dir: Path, chosen: set[Path] = frozenset()) -> Path:
    """``<source stem>.<tag>.wav`` in ``out_dir``, numbered ``-2``, ``-3`` ... if taken (on disk
    or in ``chosen``, the paths other items of the job were given)."""
    base = f"{source.stem}.{tag}"
    n = 1
    while True:
        candidate = out_dir / f"{base}{'' if n == 1 else f'-{n}'}.{STEM_FORMAT}"
        if not candidate.exists() and candidate not in chosen:
            return candidate
        n += 1


class ItemLog:
    """The job's progress (:class:`~clapsep_cli.api.Progress`) as lines in its log, one item
    after another, asking ``cancelled()`` before each item starts."""

    def __init__(self, job: api.Job, log: Callable[[str], None], cancelled: Callable[[], bool]):
        self.results, self.log, self.cancelled = job.results, log, cancelled
        self.told = 0  # items logged

    def start_job(self, files: int, place: str) -> None:
        pass

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        if self.cancelled():
            raise api.Cancelled(REMOVED)
        while self.results[self.told].status != "pending":  # items the job does not separate
            self.up_to(1)
        self._item()

    def advance(self, segments: int) -> None:
        pass

    def end_file(self, result: api.FileResult) -> None:
        if result.status != "ok":
            outcome = result.error
        elif result.events is not None:
            outcome = f"{len(result.events)} events"
        else:
            outcome = str(result.target)
        self.log(f"  {result.status}: {outcome}")

    def up_to(self, count: int) -> None:
        """Log the next ``count`` items, which the job does not separate (failed or skipped)."""
        for _ in range(count):
            self._item()
            self.end_file(self.results[self.told - 1])

    def _item(self) -> None:
        result = self.results[self.told]
        self.told += 1
        planned = result.planned
        window = ""
        if planned is not None:
            end = f"{planned.last / planned.info.rate:.6f} s" if planned.bounded else "its end"
            window = f" from {planned.first / planned.info.rate:.6f} s to {end}"
        self.log(f"item {self.told}/{len(self.results)}: {result.input}{window}")


def extract_items(job: JobFile, log: Callable[[str], None], cancelled: Callable[[], bool]) -> list[api.FileResult]:
    """Extract every item's window into a free stem path of the job's folder, in one job."""
    assert job.out_dir is not None  # read_job requires one for an extraction
    req = job_request(job)
    items: list[api.Item] = []
    chosen: set[Path] = set()
    for item in job.items:
        output = free_stem_path(item.path, req.tag, job.out_dir, chosen)
        chosen.add(output)
        items.append(replace(item, output=output))
    return run_items(api.plan(items, req, api.OutputPlan(fmt=STEM_FORMAT, bit_depth=STEM_DEPTH)), log, cancelled)


def find_items(job: JobFile, log: Callable[[str], None], cancelled: Callable[[], bool]) -> list[api.FileResult]:
    """Find the job's sound in every item's window, in one job, writing no file: a result per
    item, whose events are in seconds of its source's clock. A window the job holds twice is
    searched once (a plan keeps one of equal items), and its result given to both."""
    assert job.detect is not None  # read_job gives every find its options
    windows = list(dict.fromkeys(job.items))
    planned = api.plan(windows, job_request(job), api.EventPlan(job.detect))
    found = dict(zip(windows, run_items(planned, log, cancelled), strict=True))
    return [found[item] for item in job.items]


def run_items(planned: api.Job, log: Callable[[str], None], cancelled: Callable[[], bool]) -> list[api.FileResult]:
    """Run a planned job of items (one model load, shared batches), logging each item; a failing
    item is recorded, not raised. Before each item and at the end, ``cancelled()`` is asked; if
    true, the stems written so far are removed and :class:`~clapsep_cli.api.Cancelled` is raised."""
    progress = ItemLog(planned, log, cancelled)
    # The warm service, started on the first click so the next ones answer at once
    # (CLAPSEP_SERVER=auto uses only a running one, never runs here); here when it cannot be used.
    executor = choose_executor(os.environ.get(SERVER_ENV, EDITOR_SERVER), fallback=True, log=log)
    if isinstance(executor, client.ServiceExecutor):
        log("running in the clapsep service")
    try:
        executor.run(planned, progress)
        if cancelled():
            raise api.Cancelled(REMOVED)
    except api.Cancelled:
        remove_stems(planned.results)
        raise
    progress.up_to(len(planned.results) - progress.told)
    return planned.results


def remove_stems(results: list[api.FileResult]) -> None:
    for result in results:
        if result.status == "ok" and result.target is not None:
            result.target.unlink(missing_ok=True)


def _failure(result: api.FileResult) -> dict[str, Any]:
    return {"status": result.status, "error": result.error or result.status}


def stem_entry(result: api.FileResult) -> dict[str, Any]:
    """What the action needs to place one stem (or to report why there is none)."""
    if result.status != "ok":
        return _failure(result)
    return {"status": "ok", "target": str(result.target), "rate": result.rate, "offset": result.offset_frames,
            "frames": result.frames}


def event_entry(result: api.FileResult) -> dict[str, Any]:
    """What the action needs to mark one item's events (or to report why it has none): each
    event's start and end in seconds of the source's clock, its confidence and its label."""
    if result.status != "ok":
        return _failure(result)
    return {"status": "ok", "events": [{"start": float(e.start), "end": float(e.end),
                                        "confidence": float(e.confidence), "label": e.label}
                                       for e in result.events or []]}


RUNS = {"extract": (extract_items, stem_entry), "find": (find_items, event_entry)}  # per job kind


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
            run, entry = RUNS[job.kind]
            with job_environment(job):
                results = run(job, log, lambda: not job_path.exists())
            outcome = {"state": "done", "items": [entry(r) for r in results]}
        except api.Cancelled:
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
