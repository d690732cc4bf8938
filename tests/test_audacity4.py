"""The Audacity 4 extension's parts that run without Audacity: the native library (built with this
machine's C compiler and called through ctypes with the ABI Audacity 4 uses), the bundle install
and the job runner (``python -m clapsep_cli.bridges.audacity4.job``) with a stand-in executor.
What Audacity itself does with them is in tests/test_audacity4_e2e.py (marker e2e)."""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from clapsep_cli import api
from clapsep_cli.bridges.audacity4 import job as a4job
from clapsep_cli.bridges.audacity4 import setup as a4setup
from clapsep_cli.errors import ClapsepError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Audacity 4 extension: Linux and macOS")

NONE, BOOL, NUMBER, STRING, OBJECT, BUFFER = range(6)


class Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_uint64)]


class Union(ctypes.Union):
    _fields_ = [("as_bool", ctypes.c_bool), ("as_number", ctypes.c_double), ("as_string", ctypes.c_char_p),
                ("as_object", ctypes.c_void_p), ("as_buffer", Buffer)]


class Value(ctypes.Structure):
    """ext_value of Audacity 4's src/extensions/native/nativeextension.h (pack 8)."""

    _anonymous_ = ("u",)
    _fields_ = [("type", ctypes.c_uint32), ("u", Union)]


class Handle(int):
    """An object the library returned (passed back as EXT_VALUE_OBJECT)."""


class Native:
    """The library as Audacity 4 calls it: extension_dispatch_v0(call, args, count, result)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.fn = self.lib.extension_dispatch_v0
        self.fn.restype = ctypes.c_int32
        self.fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(Value), ctypes.c_uint32, ctypes.POINTER(Value)]

    def call(self, name: str, *args: object) -> object:
        values = (Value * max(len(args), 1))()
        keep = []
        for value, arg in zip(values, args):
            if isinstance(arg, Handle):
                value.type, value.as_object = OBJECT, int(arg)
            elif isinstance(arg, str):
                keep.append(arg.encode())
                value.type, value.as_string = STRING, keep[-1]
            elif isinstance(arg, float | int):
                value.type, value.as_number = NUMBER, float(arg)
            elif isinstance(arg, np.ndarray):
                value.type = BUFFER
                value.as_buffer.data, value.as_buffer.size = arg.ctypes.data, arg.nbytes
            else:
                raise TypeError(arg)
        result = Value()
        status = self.fn(name.encode(), values, len(args), ctypes.byref(result))
        text = result.as_string.decode() if result.type == STRING and result.as_string else None
        if status != 0:
            raise RuntimeError(f"status {status}: {text}")
        if result.type == OBJECT:
            return Handle(result.as_object)
        return {NONE: None, NUMBER: result.as_number, STRING: text}[result.type]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Native:
    try:
        cc = a4setup.find_compiler()
    except ClapsepError as err:
        pytest.skip(str(err))
    target = tmp_path_factory.mktemp("native") / "clapsep.so"
    a4setup.build_library(target, cc)
    return Native(target)


def test_raw_files_round_trip_channels_as_audacity_hands_them(native: Native, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    left, right = rng.standard_normal(1000).astype("float32"), rng.standard_normal(1000).astype("float32")
    path = str(tmp_path / "in.f32")
    handle = native.call("raw_create", path)
    assert native.call("raw_write", handle, left[:600], right[:600]) == 600
    assert native.call("raw_write", handle, left[600:], right[600:]) == 400
    assert native.call("raw_close", handle) == 1000
    frames = np.fromfile(path, dtype="<f4").reshape(-1, 2)  # interleaved, as the job reads it
    np.testing.assert_array_equal(frames, np.stack([left, right], 1))

    back = [np.full(700, 9.0, "float32"), np.full(700, 9.0, "float32")]
    handle = native.call("raw_open", path, 2)
    assert native.call("raw_read", handle, *back) == 700
    np.testing.assert_array_equal(back[0], left[:700])
    assert native.call("raw_read", handle, *back) == 300
    np.testing.assert_array_equal(back[1][:300], right[700:])
    assert not back[1][300:].any()  # a short read leaves silence
    native.call("raw_close", handle)


def test_bad_arguments_and_unknown_calls_are_refused(native: Native, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="status 2"):
        native.call("no_such_call")
    handle = native.call("raw_create", str(tmp_path / "x.f32"))
    with pytest.raises(RuntimeError, match="status 3"):  # channels of different lengths
        native.call("raw_write", handle, np.zeros(4, "float32"), np.zeros(5, "float32"))
    native.call("raw_close", handle)
    with pytest.raises(RuntimeError, match="status 3"):  # only ever a folder job_folder made
        native.call("remove_folder", str(tmp_path))
    assert tmp_path.is_dir()


def test_run_reports_progress_and_the_last_line(native: Native, tmp_path: Path) -> None:
    script = "print('clapsep-progress 0.5 halfway', flush=True); print('done: walk.dog')"
    assert native.call("run", str(tmp_path / "log"), sys.executable, "-c", script) == "done: walk.dog"
    assert native.call("progress") == 0.5 and native.call("progress_text") == "halfway"
    assert "halfway" in (tmp_path / "log").read_text()
    with pytest.raises(RuntimeError, match="status 1: clapsep: no time range is selected"):
        native.call("run", str(tmp_path / "log"), sys.executable, "-c",
                    "print('clapsep: no time range is selected'); raise SystemExit(1)")


def test_cancel_stops_the_running_program(native: Native, tmp_path: Path) -> None:
    import threading

    outcome: list[str] = []

    def run() -> None:
        try:
            native.call("run", str(tmp_path / "log"), sys.executable, "-c", "import time; time.sleep(60)")
        except RuntimeError as err:
            outcome.append(str(err))

    worker = threading.Thread(target=run)
    started = time.monotonic()
    worker.start()
    time.sleep(0.5)
    native.call("cancel")
    worker.join(10)
    assert outcome == ["status 1: clapsep: cancelled"] and time.monotonic() - started < 10


def test_job_folder_is_private_and_removable(native: Native) -> None:
    folder = Path(native.call("job_folder"))
    try:
        assert folder.is_dir() and folder.name.startswith("clapsep-audacity4-") and folder.stat().st_mode & 0o077 == 0
        native.call("write_text", str(folder / "job.json"), '{"a": 1}')
        assert native.call("read_text", str(folder / "job.json")) == '{"a": 1}'
    finally:
        native.call("remove_folder", str(folder))
    assert not folder.exists()


def test_install_writes_a_bundle_per_content_and_removes_older_ones(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    first, removed = a4setup.install_bundle(["dog"], tmp_path, command=["/x/python", "-m", "job"])
    assert removed == []
    manifest = json.loads((first / "manifest.json").read_text())
    effects = manifest["contributes"]["audacity.effects"]
    assert [e["title"] for e in effects] == ["Extract a sound", "Extract: dog", "Remove a sound", "Remove: dog",
                                              "Find a sound", "Find: dog"]
    assert {e["group"] for e in effects if e["title"].startswith("Find")} == {"analyze"}
    assert all(e["script"] == "clapsep.js" and e["vendor"] == "clapsep" for e in effects)
    script = (first / "clapsep.js").read_text()
    assert "/* CONFIG */" not in script and '"/x/python"' in script
    assert (first / a4setup.platform_folder() / "clapsep.so").is_file()
    # Same content: same folder. New effects: a new folder (Audacity 4 registers a manifest's
    # effects once, by its path), and the old one goes.
    assert a4setup.install_bundle(["dog"], tmp_path, command=["/x/python", "-m", "job"]) == (first, [])
    second, removed = a4setup.install_bundle(["dog", "rain"], tmp_path, command=["/x/python", "-m", "job"])
    assert second != first and removed == [first] and not first.exists()


def test_detects_which_audacity_from_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert a4setup.detect_major(tmp_path) is None
    (tmp_path / ".config" / "audacity").mkdir(parents=True)
    (tmp_path / ".config" / "audacity" / "audacity.cfg").write_text("")
    assert a4setup.detect_major(tmp_path) == 3
    (tmp_path / ".config" / "audacity4").mkdir()
    assert a4setup.detect_major(tmp_path) == 4
    assert a4setup.detect_major(tmp_path, version="3.7.5") == 3


class FakeExecutor:
    """extract: the stem is half the input (and the residual the other half); find: one event."""

    def extract(self, paths: list[Path], req: object, plan: object, progress: object = None) -> object:
        progress.start_job(1, "")  # type: ignore[attr-defined]
        audio, rate = sf.read(paths[0], dtype="float32", always_2d=True)
        target = Path(plan.output)  # type: ignore[attr-defined]
        residual = target.with_name(target.stem + ".residual.wav")
        sf.write(target, audio / 2, rate, subtype="FLOAT")
        sf.write(residual, audio / 2, rate, subtype="FLOAT")
        return SimpleNamespace(results=[SimpleNamespace(status="ok", target=target, residual=residual, error=None)])

    def find(self, paths: list[Path], req: object, plan: object, progress: object = None) -> object:
        event = SimpleNamespace(start=0.5, end=9.0, confidence=0.8)
        return SimpleNamespace(results=[SimpleNamespace(status="ok", events=[event], error=None)])


def write_job(folder: Path, kind: str, audio: np.ndarray, **extra: object) -> None:
    audio.astype("<f4").tofile(folder / "in0.f32")
    job = {"version": 1, "kind": kind, "query": None, "preset": "dog", "start": 1.0, "end": 3.0,
           "inputs": [{"track": "walk", "file": "in0.f32", "channels": audio.shape[1], "rate": 8000,
                       "frames": audio.shape[0]}], **extra}
    (folder / "job.json").write_text(json.dumps(job))


def test_job_writes_the_stem_as_raw_frames_of_the_selected_length(tmp_path: Path) -> None:
    audio = np.random.default_rng(1).standard_normal((16000, 2)).astype("float32")
    write_job(tmp_path, "extract", audio)
    outcome = a4job.run_job(a4job.read_job(tmp_path), out=open(tmp_path / "out.txt", "w"),
                            make_executor=lambda log: FakeExecutor())
    assert outcome["tracks"] == [{"input": 0, "name": "walk.dog", "file": "out0.f32", "channels": 2, "rate": 8000,
                                  "frames": 16000}]
    stem = np.fromfile(tmp_path / "out0.f32", dtype="<f4").reshape(-1, 2)
    np.testing.assert_allclose(stem, audio / 2, atol=1e-7)
    assert json.loads((tmp_path / "result.json").read_text()) == outcome
    assert "clapsep-progress" in (tmp_path / "out.txt").read_text()


def test_remove_job_lands_clapsep_removes_stem(tmp_path: Path) -> None:
    """Remove: dog is `clapsep remove -p dog`: the removal request (everything but the sound, by the
    CLI's default method), its stem landing; not the extraction's residual."""
    audio = np.random.default_rng(2).standard_normal((8000, 1)).astype("float32")
    write_job(tmp_path, "remove", audio)
    asked = []

    class Recording(FakeExecutor):
        def extract(self, paths: list[Path], req: object, plan: object, progress: object = None) -> object:
            asked.append(req)
            done = super().extract(paths, req, plan, progress)
            target = done.results[0].target
            sf.write(target, audio / 4, 8000, subtype="FLOAT")  # the residual stays audio / 2
            return done

    a4job.run_job(a4job.read_job(tmp_path), out=open(tmp_path / "out.txt", "w"), make_executor=lambda log: Recording())
    assert asked == [api.removal(api.request(preset="dog"))]
    np.testing.assert_allclose(np.fromfile(tmp_path / "out0.f32", dtype="<f4").reshape(-1, 1), audio / 4, atol=1e-7)

def test_find_job_cuts_events_at_the_range_end(tmp_path: Path) -> None:
    write_job(tmp_path, "find", np.zeros((16000, 1), "float32"), threshold=0.2)
    job = a4job.read_job(tmp_path)
    assert job.threshold == 0.2
    outcome = a4job.run_job(job, out=open(tmp_path / "out.txt", "w"), make_executor=lambda log: FakeExecutor())
    assert outcome["events"] == [{"input": 0, "start": 0.5, "end": 2.0, "confidence": 0.8}]


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 2}, "version 1"),
    ({"kind": "mix"}, "unknown kind"),
    ({"preset": None}, "no sound was described"),
    ({"start": 3.0}, "no time range"),
    ({"inputs": []}, "no audio track"),
])
def test_bad_jobs_fail_in_one_line(tmp_path: Path, change: dict[str, object], message: str) -> None:
    write_job(tmp_path, "extract", np.zeros((10, 1), "float32"))
    job = json.loads((tmp_path / "job.json").read_text())
    (tmp_path / "job.json").write_text(json.dumps({**job, **change}))
    with pytest.raises(ClapsepError, match=message):
        a4job.read_job(tmp_path)
