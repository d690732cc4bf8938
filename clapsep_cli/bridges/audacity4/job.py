"""One job of the Audacity 4 extension (plugins/audacity4): ``clapsep audacity job FOLDER``.

Audacity 4 has no mod-script-pipe: its extension effects (JavaScript, with a native library of
clapsep's) run inside Audacity instead. The effect writes the selected audio of each selected
track into FOLDER as raw interleaved 32-bit float frames (``in<N>.f32``) and describes the job in
``job.json``; the native library starts this command on a worker thread and waits. This command
separates (through the warm service, started on the first job as for the REAPER actions; or here,
as ``CLAPSEP_SERVER`` says), writes each stem back as raw frames (``out<N>.f32``) and the outcome
as ``result.json``, and prints ``clapsep-progress <fraction> <text>`` lines that the effect shows
in Audacity's progress dialog. The effect then adds the stems (or the labels of a find) to the
project in one undo step.

``job.json``::

    {"version": 1, "kind": "extract" | "remove" | "find", "query": TEXT | null, "preset": NAME | null,
     "start": SECONDS, "end": SECONDS,
     "inputs": [{"track": NAME, "file": "in0.f32", "channels": 1 | 2, "rate": HZ, "frames": N}, ...]}

``result.json``: ``{"tag": TAG, "tracks": [{"input": N, "name": NAME, "file": "out0.f32",
"channels": C, "rate": HZ, "frames": N}, ...], "events": [{"input": N, "start": S, "end": S,
"confidence": C}, ...]}`` (event times from the range's start).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from clapsep_cli import api
from clapsep_cli.errors import ClapsepError
from clapsep_cli.service.choose import EDITOR_SERVER, SERVER_ENV, choose_executor

KINDS = ("extract", "remove", "find")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Input:
    track: str
    file: Path
    channels: int
    rate: int
    frames: int


@dataclass(frozen=True)
class Job:
    folder: Path
    kind: str
    query: str | None
    preset: str | None
    start: float
    end: float
    inputs: list[Input]
    threshold: float | None = None  # find: DetectOptions' threshold (None: its default)


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ClapsepError(f"{where}: '{key}' is missing or of the wrong type")
    return value


def read_job(folder: Path) -> Job:
    """The job described by ``folder/job.json``."""
    path = folder / "job.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClapsepError(f"{path}: cannot read the job ({err})") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ClapsepError(f"{path}: not a clapsep Audacity 4 job of version {FORMAT_VERSION} "
                           "(run `clapsep audacity install` again)")
    kind = _field(data, "kind", str, str(path))
    if kind not in KINDS:
        raise ClapsepError(f"{path}: unknown kind '{kind}'")
    query = data.get("query") or None
    preset = data.get("preset") or None
    if not query and not preset:
        raise ClapsepError("no sound was described: type what to look for")
    inputs = []
    for entry in _field(data, "inputs", list, str(path)):
        where = f"{path}: an input"
        name = Path(_field(entry, "file", str, where)).name  # inside the folder, whatever it says
        inputs.append(Input(str(entry.get("track") or "audio"), folder / name,
                            int(_field(entry, "channels", int, where)), int(_field(entry, "rate", (int, float), where)),
                            int(_field(entry, "frames", int, where))))
    if not inputs:
        raise ClapsepError("no audio track is selected")
    start = float(_field(data, "start", (int, float), str(path)))
    end = float(_field(data, "end", (int, float), str(path)))
    if not end > start:
        raise ClapsepError("no time range is selected")
    threshold = data.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ClapsepError(f"{path}: 'threshold' must be a number")
    return Job(folder, kind, query, preset, start, end, inputs, None if threshold is None else float(threshold))


def read_raw(source: Input) -> np.ndarray:
    """The frames of one input, (frames, channels) float32."""
    data = np.fromfile(source.file, dtype="<f4")
    if source.channels not in (1, 2) or data.size != source.frames * source.channels:
        raise ClapsepError(f"{source.file}: holds {data.size} samples, expected {source.frames} x {source.channels}")
    return data.reshape(-1, source.channels)


def write_raw(path: Path, audio: np.ndarray) -> None:
    np.ascontiguousarray(audio, dtype="<f4").tofile(path)


class LineProgress:
    """The job's progress as ``clapsep-progress <fraction> <text>`` lines (for the native part),
    over all inputs."""

    def __init__(self, out: TextIO, inputs: int, what: str):
        self.out, self.inputs, self.what = out, inputs, what
        self.done_inputs, self.segments, self.total = 0, 0, 1

    def say(self, fraction: float, text: str) -> None:
        print(f"clapsep-progress {min(max(fraction, 0.0), 1.0):.4f} {text}", file=self.out, flush=True)

    def start_job(self, files: int, place: str) -> None:
        self.say(self.done_inputs / self.inputs, f"{self.what}{' ' + place if place else ''}")

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        self.segments, self.total = 0, max(segments, 1)

    def advance(self, segments: int) -> None:
        self.segments += segments
        self.say((self.done_inputs + self.segments / self.total) / self.inputs, self.what)

    def end_file(self, result: api.FileResult) -> None:
        self.done_inputs += 1
        self.say(self.done_inputs / self.inputs, self.what)


def executor(log: Callable[[str], None]) -> api.Executor:
    """The warm service, started on the first job (``CLAPSEP_SERVER``: ``require`` by default, as
    for every editor's click; ``auto`` uses only a running one, ``never`` runs here); here, saying
    why, when it cannot be used."""
    return choose_executor(os.environ.get(SERVER_ENV, EDITOR_SERVER), fallback=True, log=log)


def _failed(result: api.FileResult, source: Path) -> ClapsepError:
    return ClapsepError(str(result.error or result.status).replace(str(source), "the selected audio"))


def run_job(job: Job, out: TextIO = sys.stdout,
            make_executor: Callable[[Callable[[str], None]], api.Executor] = executor) -> dict[str, Any]:
    """Separate (or search) each input of ``job``; writes the outputs and ``result.json``, and
    returns what it wrote there."""
    import soundfile as sf

    req = api.request(*([job.query] if job.query else []), preset=job.preset)
    verb = {"extract": "extracting", "remove": "removing", "find": "finding"}[job.kind]
    progress = LineProgress(out, len(job.inputs), f"{verb} {req.tag}")

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    run = make_executor(log)
    tracks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for index, source in enumerate(job.inputs):
        wav = job.folder / f"in{index}.wav"
        sf.write(wav, read_raw(source), source.rate, subtype="FLOAT")
        if job.kind == "find":
            options = api.DetectOptions() if job.threshold is None else api.DetectOptions(threshold=job.threshold)
            result = run.find([wav], req, api.EventPlan(options), progress=progress).results[0]
            if result.status != "ok" or result.events is None:
                raise _failed(result, wav)
            events += [{"input": index, "start": e.start, "end": min(e.end, job.end - job.start),
                        "confidence": e.confidence} for e in result.events]
            continue
        # remove: `clapsep remove`'s request (everything but the sound), as the CLI makes it.
        plan = api.OutputPlan(output=job.folder / f"stem{index}.wav", fmt="wav", bit_depth="32f", overwrite=True)
        asked = api.removal(req) if job.kind == "remove" else req
        result = run.extract([wav], asked, plan, progress=progress).results[0]
        stem = result.target
        if result.status != "ok" or stem is None:
            raise _failed(result, wav)
        audio, rate = sf.read(stem, dtype="float32", always_2d=True)
        if rate != source.rate or audio.shape[1] != source.channels:
            raise ClapsepError(f"the stem came back at {rate} Hz, {audio.shape[1]} channels; the track has "
                               f"{source.rate} Hz, {source.channels}")
        # The stem spans exactly the selected frames (clapsep keeps a file's length).
        audio = audio[:source.frames]
        if audio.shape[0] < source.frames:
            audio = np.concatenate([audio, np.zeros((source.frames - audio.shape[0], source.channels), "float32")])
        write_raw(job.folder / f"out{index}.f32", audio)
        tracks.append({"input": index, "name": f"{source.track}.{req.tag}", "file": f"out{index}.f32",
                       "channels": source.channels, "rate": source.rate, "frames": int(audio.shape[0])})
    outcome = {"tag": req.tag, "tracks": tracks, "events": events}
    (job.folder / "result.json").write_text(json.dumps(outcome), encoding="utf-8")
    return outcome


def main(argv: list[str] | None = None) -> int:
    """``python -m clapsep_cli.bridges.audacity4.job FOLDER``, as the extension's native library
    runs it: 0 when done (its last line says what was made), else 1 with one line saying why."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clapsep_cli.bridges.audacity4.job FOLDER", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        outcome = run_job(read_job(Path(args[0])))
    except ClapsepError as err:
        print(f"clapsep: {err}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("clapsep: interrupted", flush=True)
        return 130
    made = ", ".join(track["name"] for track in outcome["tracks"]) or f"{len(outcome['events'])} events"
    print(f"done: {made}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
