"""The warm service (``clapsep serve``) as its clients meet it: a real service process on a real
socket; the command line, Python and the REAPER job runner handing it jobs; clients many at
once, killed services, stale sockets, hostile messages, another user, the idle exit, a soak."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import AuthenticationError, Connection
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapsep_cli import api
from clapsep_cli.errors import AudioError, ClapsepError, ModelMissingError
from clapsep_cli.jobs.data import to_data
from clapsep_cli.jobs.progress import NoProgress
from clapsep_cli.service import client, protocol
from tests.helpers import as_written, stems, tone, write_audio

RATE = 44100
BLOCK_TORCH = """
import sys
sys.modules["torch"] = None
from clapsep_cli.cli import main
main(sys.argv[1:], prog_name="clapsep")
"""


def clapsep(*args: object, server: str | None = None, no_torch: bool = False, cwd: Path | None = None,
            env: dict[str, str] | None = None, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``clapsep`` as a user runs it, in this test's environment (``server``: $CLAPSEP_SERVER)."""
    env = {**os.environ, **(env or {})}
    env.pop("CLAPSEP_SERVER", None)
    if server is not None:
        env["CLAPSEP_SERVER"] = server
    cmd = [sys.executable, "-c", BLOCK_TORCH] if no_torch else [sys.executable, "-m", "clapsep_cli"]
    return subprocess.run([*cmd, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


@pytest.fixture
def runtime(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime folder of this test's own (so its service is its own), stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.delenv("CLAPSEP_SERVER")
    yield folder
    client.stop()
    shutil.rmtree(folder, ignore_errors=True)


def start_serve(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``clapsep serve`` as a child of the test, saying what it does into ``log``; returns once it answers."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "serve", *args], stderr=err)
    deadline = time.monotonic() + 60
    while client.status() is None:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def service(tiny_store: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One service for the tests that only use it, on the shared tiny store."""
    folder = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(folder))
        mp.setenv("CLAPSEP_HOME", str(tiny_store))
        proc = start_serve("--idle", "600", log=folder.with_name(folder.name + ".log"))
        try:
            yield proc
        finally:
            client.stop()
            proc.wait(timeout=60)
            shutil.rmtree(folder, ignore_errors=True)
            folder.with_name(folder.name + ".log").unlink(missing_ok=True)


@pytest.fixture
def warm(service: subprocess.Popen[bytes], home: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.Popen[bytes]:
    """This test's clients see the shared service."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", _service_folder(service))
    monkeypatch.delenv("CLAPSEP_SERVER")
    return service


def _service_folder(proc: subprocess.Popen[bytes]) -> str:
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"XDG_RUNTIME_DIR="))


def sources(folder: Path) -> Path:
    folder.mkdir()
    write_audio(folder / "mix.wav", tone(12.0, RATE, 2, seed=1), RATE)
    write_audio(folder / "talk.flac", tone(7.0, 48000, 1, freq=220.0, seed=2), 48000, subtype="PCM_16")
    return folder




# --- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["extract", "dog barking", "--residual", "--start", "2", "--end", "7"],
    ["remove", "dog barking"],
    ["find", "dog barking", "--format", "audacity"],
], ids=["extract-region", "remove", "find"])
def test_the_service_writes_the_bytes_of_an_in_process_run_and_the_cli_imports_no_torch(
        warm: subprocess.Popen[bytes], tmp_path: Path, command: list[str]) -> None:
    src = sources(tmp_path / "src")
    here = clapsep(*command, "mix.wav", "talk.flac", "--out-dir", tmp_path / "here", server="never", cwd=src)
    there = clapsep(*command, "mix.wav", "talk.flac", "--out-dir", tmp_path / "there", cwd=src, no_torch=True)
    assert here.returncode == 0, here.stderr
    assert there.returncode == 0, there.stderr
    assert there.stdout.replace(str(tmp_path / "there"), "OUT") == here.stdout.replace(str(tmp_path / "here"), "OUT")
    assert stems(tmp_path / "there") == stems(tmp_path / "here")
    assert len(list((tmp_path / "here").iterdir())) == (4 if "--residual" in command else 2)


def test_the_json_report_through_the_service_is_the_in_process_one_but_for_timings(
        warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    (src / "broken.wav").write_text("not audio")
    with sf.SoundFile(src / "mix.wav", "r+") as f:  # one more that fails as it is read, not as it is planned
        f.seek(RATE)
        f.write(np.full((10, 2), np.nan, np.float32))

    def report(name: str, server: str) -> dict:
        done = clapsep("extract", "dog barking", "mix.wav", "talk.flac", "broken.wav", "--out-dir", tmp_path / name,
                       "--json", server=server, cwd=src)
        assert done.returncode == 1, done.stderr
        data = json.loads(done.stdout.replace(str(tmp_path / name), "OUT"))
        for key in ("timings", "query_embeddings"):
            data.pop(key)
        for result in data["results"]:
            result.pop("processing_seconds", None)
            result.pop("realtime_factor", None)
        return data

    here, there = report("here", "never"), report("there", "require")
    assert there == here
    assert [r["status"] for r in here["results"]] == ["failed", "ok", "failed"] and here["failed"] == 2


def test_a_region_of_a_file_named_relative_to_the_client_lands_where_and_as_the_client_means(
        warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    done = clapsep("extract", "dog barking", "src/mix.wav", "--start", "1", "--end", "6", "--json", cwd=tmp_path,
                   umask=0o027)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["results"][0]
    assert result["target"] == "src/mix.dog_barking.wav" and result["duration"] == pytest.approx(5.0)
    assert stat.S_IMODE((src / "mix.dog_barking.wav").stat().st_mode) == 0o640  # the client's umask, not the service's


def test_require_starts_a_service_and_two_at_once_leave_one(runtime: Path, tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    procs = [subprocess.Popen([sys.executable, "-m", "clapsep_cli", "extract", "dog", "mix.wav", "--out-dir",
                               str(tmp_path / f"out{n}"), "--server", "require"], cwd=src, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert stems(tmp_path / "out0") == stems(tmp_path / "out1")
    found = client.status()
    assert found is not None and found["jobs_done"] == 2
    assert serve_processes(runtime) == [found["pid"]]


def serve_processes(folder: Path) -> list[int]:
    """The pids of `clapsep serve` processes whose runtime folder is ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"serve" in cmdline and b"clapsep_cli" in cmdline and f"XDG_RUNTIME_DIR={folder}".encode() in environ:
            if (entry / "stat").read_text().split()[2] != "Z":
                found.append(int(entry.name))
    return found


def kill_service(pid: int) -> None:
    """SIGKILL the service and reap it where it is this test's child (a zombie looks alive)."""
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def test_a_service_killed_mid_job_costs_one_line_and_no_stem_and_the_next_call_works(
        runtime: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_audio(src / "long.wav", tone(60.0, RATE, 2, seed=3), RATE)
    client.start()
    pid = client.status()["pid"]
    out = tmp_path / "out"
    out.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "extract", "dog", "long.wav", "--out-dir", str(out)],
                           cwd=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.suffix == ".part" for p in out.iterdir()):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.01)
    kill_service(pid)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1
    assert err.strip().splitlines() == ["clapsep: error: the clapsep service stopped during the job (was it killed?); "
                                        "no stem it had not finished was kept: run the command again"]
    assert not (out / "long.dog.wav").exists()
    assert (runtime / "clapsep" / "service.sock").exists()  # stale: nobody listens
    again = clapsep("extract", "dog", "long.wav", "--out-dir", out, cwd=src)  # auto: no service, runs here
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["long.dog.wav"]  # the killed job's temporary file is gone


def test_a_stale_socket_is_refused_quietly_then_replaced(runtime: Path, tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    client.start()
    kill_service(client.status()["pid"])
    assert (runtime / "clapsep" / "service.sock").exists()
    status = clapsep("serve", "--status")
    assert (status.returncode, status.stderr.strip()) == (1, "clapsep: error: no clapsep service is running")
    done = clapsep("extract", "dog", "mix.wav", "--out-dir", tmp_path / "here", "--server", "require", cwd=src)
    assert done.returncode == 0, done.stderr
    status = clapsep("serve", "--status")
    assert status.returncode == 0 and "1 jobs done" in status.stdout
    log = (runtime / "clapsep" / "service.log").read_text()
    assert "removed the stale socket" in log


def test_idle_service_exits_and_leaves_no_socket_or_key(runtime: Path, tmp_path: Path) -> None:
    proc = start_serve("--idle", "1", log=tmp_path / "serve.log")
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        client.status()  # asking how it is is no job: it does not keep the service up
        time.sleep(0.1)
    assert proc.wait(timeout=1) == 0
    assert sorted(p.name for p in (runtime / "clapsep").iterdir()) == ["service.lock"]
    assert "idle for 1 s: exiting" in (tmp_path / "serve.log").read_text()


def test_stop_cancels_the_running_job_and_ends_the_service(runtime: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_audio(src / "long.wav", tone(60.0, RATE, 2, seed=3), RATE)
    proc = start_serve(log=tmp_path / "serve.log")
    out = tmp_path / "out"
    out.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "extract", "dog", "long.wav", "--out-dir", str(out)],
                           cwd=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not any(p.suffix == ".part" for p in out.iterdir()):
        assert job.poll() is None, job.communicate()
        time.sleep(0.01)
    stopped = clapsep("serve", "--stop")
    assert stopped.stdout.strip() == f"stopped the clapsep service (pid {proc.pid})"
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1 and "stopped in the clapsep service (the clapsep service was stopped)" in err
    assert proc.wait(timeout=30) == 0
    assert list(out.iterdir()) == []


# --- Python clients ----------------------------------------------------------------------------

def test_eight_clients_at_once_get_all_fifty_jobs_and_a_bad_file_fails_only_its_own(
        warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    bad = src / "broken.wav"
    bad.write_text("not audio")
    req = api.request("dog barking")
    reference = api.Separator(device="cpu").extract([src / "talk.flac"], req, api.OutputPlan(out_dir=tmp_path / "ref"))
    expected = as_written(reference.results[0].target)
    before = client.status()["jobs_done"]
    jobs: dict[int, api.Job] = {}
    problems: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(worker, 50, 8):
                inputs = [src / "talk.flac", *([bad] if worker == 3 else [])]
                plan = api.OutputPlan(out_dir=tmp_path / "out", name_template=f"{{stem}}.{n}.{{ext}}")
                jobs[n] = client.ServiceExecutor(device="cpu").extract(inputs, req, plan)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            problems.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not problems
    assert sorted(jobs) == list(range(50))
    for n, job in jobs.items():
        assert job.results[0].status == "ok" and as_written(job.results[0].target) == expected, n
        if n % 8 == 3:
            assert job.results[1].status == "failed" and str(bad) in (job.results[1].error or "")
    assert client.status()["jobs_done"] - before == 50


def test_jobs_run_in_order_of_arrival(warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    write_audio(tmp_path / "long.wav", tone(240.0, RATE, 2, seed=3), RATE)  # seconds of work, even warm
    write_audio(tmp_path / "short.wav", tone(1.0, RATE, 1), RATE)
    finished: list[int] = []
    queued: list[int] = []

    def job(n: int, source: str) -> None:
        plan = api.OutputPlan(out_dir=tmp_path / "out", name_template=f"{{stem}}.{n}.{{ext}}")
        client.ServiceExecutor(device="cpu").extract([tmp_path / source], api.request("dog"), plan)
        finished.append(n)

    threads = [threading.Thread(target=job, args=(0, "long.wav"))]
    threads[0].start()
    while client.status()["running"] is None:  # the long job holds the worker; the rest queue behind it
        time.sleep(0.01)
    for n in range(1, 6):
        threads.append(threading.Thread(target=job, args=(n, "short.wav")))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len((status := client.status())["queued"]) < n and time.monotonic() < deadline:
            time.sleep(0.005)  # arrived before the next one is sent
        queued.append(len(status["queued"]))
    for t in threads:
        t.join(timeout=120)
    assert queued == [1, 2, 3, 4, 5]  # all waited behind the long job
    assert finished == list(range(6))


class StopAt:
    """A progress that raises ``error`` at the first advance."""

    def __init__(self, error: BaseException):
        self.error, self.ended = error, []

    def start_job(self, files: int, place: str) -> None:
        pass

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        pass

    def advance(self, segments: int) -> None:
        raise self.error

    def end_file(self, result: api.FileResult) -> None:
        self.ended.append(result.status)


def test_a_client_that_stops_its_job_cancels_it_there(warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    write_audio(tmp_path / "long.wav", tone(60.0, RATE, 2, seed=3), RATE)
    executor = client.ServiceExecutor(device="cpu")
    job = api.plan([tmp_path / "long.wav"], api.request("dog"))
    progress = StopAt(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        executor.run(job, progress)
    assert job.results[0].status == "pending" and not job.results[0].target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["long.wav"]
    assert client.status()["running"] is None
    write_audio(tmp_path / "short.wav", tone(2.0, RATE, 1), RATE)
    assert executor.extract([tmp_path / "short.wav"], api.request("dog")).results[0].status == "ok"


def test_memory_stays_flat_over_a_soak_of_500_jobs(warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    write_audio(tmp_path / "clip.wav", tone(0.5, 16000, 1), 16000)
    executor = client.ServiceExecutor(device="cpu")
    plan = api.OutputPlan(out_dir=tmp_path / "out", overwrite=True)
    rss = []
    for n in range(500):
        assert executor.extract([tmp_path / "clip.wav"], api.request("dog barking"), plan).results[0].status == "ok"
        if n in (99, 499):
            rss.append(client.status()["rss_bytes"])
    assert rss[1] - rss[0] < 16 * 2**20, f"resident memory grew from {rss[0] >> 20} to {rss[1] >> 20} MiB"


# --- hostile and foreign clients ---------------------------------------------------------------

def raw_connection() -> Connection:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(protocol.socket_path()))
    return Connection(sock.detach())


def authenticated() -> Connection:
    conn = raw_connection()
    protocol.authenticate(conn, protocol.read_key() or b"", server=False)
    return conn


def reply_to(payload: bytes) -> dict | None:
    with authenticated() as conn:
        with contextlib.suppress(BrokenPipeError):  # the service stops reading an oversized message
            conn.send_bytes(payload)
        try:
            return protocol.receive(conn)
        except (EOFError, OSError):
            return None


def good_job(src: Path, model: str = "default") -> dict:
    """A run request as a client sends it: the job it planned, whole."""
    return {**protocol.hello(), "verb": "run", "cwd": str(src), "session": {"model": model, "device": "cpu",
                                                                          "precision": "auto"},
            "job": to_data(api.plan([src / "mix.wav"], api.request("dog"), api.OutputPlan(overwrite=True)))}


@pytest.mark.parametrize("payload,answer", [
    (lambda: b"\xff\xfe not json", "not UTF-8 JSON"),
    (lambda: b"[1, 2, 3]", "must be a JSON object"),
    (lambda: json.dumps({**protocol.hello(), "verb": "dance"}).encode(), "unknown request 'dance'"),
    (lambda: json.dumps({"verb": "status", "version": "0.0.0"}).encode(), "mismatch"),
    (lambda: json.dumps({**protocol.hello(), "verb": "run", "job": 5}).encode(), "'job' has the wrong type (int)"),
    (lambda: b"x" * (protocol.MAX_MESSAGE + 1), f"larger than {protocol.MAX_MESSAGE} bytes"),
], ids=["not-json", "not-an-object", "unknown-verb", "other-version", "wrong-type", "oversized"])
def test_a_malformed_message_gets_an_error_reply_and_the_service_serves_on(
        warm: subprocess.Popen[bytes], payload: Callable[[], bytes], answer: str) -> None:
    reply = reply_to(payload())
    assert reply is not None and reply["event"] in ("error", "mismatch")
    assert answer in json.dumps(reply)
    assert client.status() is not None


def run_raw(message: dict) -> list[dict]:
    """Every message a raw run request gets, up to its last."""
    with authenticated() as conn:
        conn.send_bytes(json.dumps(message).encode())
        events = [protocol.receive(conn)]
        while events[-1]["event"] not in ("done", "error", "cancelled", "mismatch"):
            events.append(protocol.receive(conn))
    return [e for e in events if e["event"] != "alive"]  # the heartbeat of a job that waited a while


@pytest.mark.parametrize("spoil,answer", [
    ("unknown-type", "in a message: unknown type 'Popen'"),
    ("query-not-a-query", "'request.query' has the wrong type (int)"),
    ("inside-the-query", "in a message: a Query is malformed"),
    ("results-not-results", "'results' has the wrong type (PosixPath)"),
    ("plan-not-planned", "a pending result's plan has the wrong type (NoneType)"),
    ("no-such-folder", "the client's folder cannot be entered"),
])
def test_a_job_of_the_wrong_shape_fails_alone(warm: subprocess.Popen[bytes], tmp_path: Path, spoil: str,
                                              answer: str) -> None:
    src = sources(tmp_path / "src")
    message = good_job(src)
    if spoil == "unknown-type":
        message["job"]["plan"] = {"$": "Popen", "args": ["rm", "-rf", "/"]}
    elif spoil == "query-not-a-query":
        message["job"]["request"] = {"$": "Request", "query": 5}
    elif spoil == "inside-the-query":
        message["job"]["request"] = {"$": "Request", "query": {"$": "Query", "positive": 5}}
    elif spoil == "results-not-results":
        message["job"]["results"] = {"$path": "/etc"}
    elif spoil == "plan-not-planned":
        message["job"]["results"][0]["planned"] = None
    else:
        message["cwd"] = str(tmp_path / "gone")
    events = run_raw(message)
    assert [e["event"] for e in events] == ["queued", "error"]
    assert answer in events[-1]["error"]["template"]
    assert run_raw(good_job(src))[-1]["event"] == "done"


def test_the_service_runs_the_clients_plan_and_sends_each_result_once(warm: subprocess.Popen[bytes],
                                                                       tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    events = run_raw(good_job(src))
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["queued", "start_job", "start_file"] and kinds[-2:] == ["end_file", "done"]
    assert set(kinds[3:-2]) <= {"advance", "log"}
    assert events[-2]["index"] == 0 and events[-2]["result"]["status"] == "ok"  # the one result, once
    assert set(events[-1]) == {"event", "ran"} and "results" not in json.dumps(events[-1])
    assert events[-1]["ran"]["model_loaded"] is True


def test_a_file_changed_between_plan_and_run_fails_clearly_there(warm: subprocess.Popen[bytes],
                                                                 tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    write_audio(src / "same.wav", tone(3.0, RATE, 1, seed=5), RATE)
    job = api.plan([src / "mix.wav", src / "talk.flac", src / "same.wav"], api.request("dog"),
                   api.OutputPlan(out_dir=tmp_path / "out"))
    write_audio(src / "mix.wav", tone(2.0, RATE, 2, seed=1), RATE)  # another size
    stat = (src / "same.wav").stat()
    os.utime(src / "same.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, touched
    seen = []

    class Ends(NoProgress):
        def end_file(self, result: api.FileResult) -> None:
            seen.append(result.input.name)

    client.ServiceExecutor(device="cpu").run(job, Ends())
    assert [r.status for r in job.results] == ["failed", "ok", "failed"] and seen == ["talk.flac"]
    assert job.results[0].error == (f"{src / 'mix.wav'}: changed since the job was planned (its size differs); "
                                    "run it again")
    assert job.results[2].error == (f"{src / 'same.wav'}: changed since the job was planned (its modification time "
                                    "differs); run it again")
    assert type(job.results[0].problem) is AudioError
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["talk.dog.flac"]


def test_errors_keep_their_class_and_message_across_the_service(warm: subprocess.Popen[bytes],
                                                                tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    with pytest.raises(ModelMissingError, match=r"^model 'nonexistent' is not installed; "):
        client.ServiceExecutor("nonexistent", device="cpu").extract([src / "mix.wav"], api.request("dog"),
                                                                     api.OutputPlan(out_dir=tmp_path / "out"))
    bad = src / "bad.wav"
    write_audio(bad, tone(2.0, RATE, 1), RATE)
    job = api.plan([bad], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "out"))
    with sf.SoundFile(bad, "r+") as f:  # samples become NaN, its size and time kept: it fails as it is read there
        f.seek(RATE)
        f.write(np.full(1000, np.nan, np.float32))
    stat = bad.stat()
    os.utime(bad, ns=(stat.st_atime_ns, job.results[0].planned.mtime_ns))
    client.ServiceExecutor(device="cpu").run(job)
    here = api.Separator(device="cpu").extract([bad], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "here"))
    assert job.results[0].status == here.results[0].status == "failed"
    assert type(job.results[0].problem) is type(here.results[0].problem) is AudioError
    assert job.results[0].error == here.results[0].error


def test_a_truncated_or_unauthenticated_message_costs_only_its_connection(warm: subprocess.Popen[bytes]) -> None:
    with authenticated() as conn:  # a length header for 1000 bytes, then 10, then hang up
        os.write(conn.fileno(), struct.pack("!i", 1000) + b"0123456789")
    with raw_connection() as conn:  # no handshake: garbage, then hang up
        os.write(conn.fileno(), b"\x00\x00\x00\x05hello")
    with pytest.raises(AuthenticationError), raw_connection() as conn:
        protocol.authenticate(conn, b"not the key", server=False)
    assert client.status() is not None


def test_the_socket_and_key_are_this_users_alone(warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    folder = protocol.runtime_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert protocol.socket_path().stat().st_mode & 0o777 == 0o600
    assert protocol.key_path().stat().st_mode & 0o777 == 0o600
    if os.getuid() != 0:
        pytest.skip("running the client as another user needs root")
    sock, key = str(protocol.socket_path()), protocol.key_path()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and tries the socket and the key
        outcome = []
        try:
            os.setgid(65534)
            os.setuid(65534)
            for attempt in (lambda: socket.socket(socket.AF_UNIX).connect(sock), key.read_bytes):
                try:
                    attempt()
                    outcome.append("allowed")
                except PermissionError:
                    outcome.append("refused")
        finally:
            os.write(write, " ".join(outcome).encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        assert f.read() == "refused refused"


# --- the editors -------------------------------------------------------------------------------

def reaper_job(path: Path, src: Path, out: Path, store: Path) -> Path:
    path.write_text(json.dumps({"clapsep_reaper_job": 2, "kind": "extract", "query": {"text": "dog barking"},
                                "out_dir": str(out), "store": str(store),
                                "items": [{"source": str(src / "mix.wav"), "start": 1.5, "end": 6.5}]}))
    return path


def test_reaper_clicks_start_the_service_and_place_the_bytes_of_an_in_process_run(
        runtime: Path, home: Path, tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1", "XDG_RUNTIME_DIR": str(runtime)}
    results = {}
    for name, extra in (("here", {"CLAPSEP_SERVER": "never"}), ("first", {}), ("second", {})):
        out = tmp_path / name
        out.mkdir()
        job = reaper_job(tmp_path / f"job-{name}.json", src, out, home)
        done = subprocess.run([sys.executable, "-m", "clapsep_cli", "reaper", "run", str(job)], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        results[name] = job.with_name(job.name.removesuffix(".json") + ".result.lua").read_text()
        log = job.with_name(job.name.removesuffix(".json") + ".log").read_text()
        assert ("running in the clapsep service" in log) == (name != "here")
    assert stems(tmp_path / "first") == stems(tmp_path / "second") == stems(tmp_path / "here")
    assert all('["state"] = "done"' in text and '["status"] = "ok"' in text for text in results.values())
    assert client.status()["jobs_done"] == 2


def test_audacity_requests_served_through_the_service_insert_what_a_separator_here_makes(
        warm: subprocess.Popen[bytes], tmp_path: Path) -> None:
    from clapsep_cli.bridges.audacity import finding, requests
    from clapsep_cli.bridges.audacity.pipe import AudacityPipe
    from tests.audacity.fake_pipe import FakeAudacity, greeting
    from tests.audacity.mini_project import MiniProject

    req = api.request("dog barking")
    outcomes = []
    for name, executor in (("here", api.Separator(device="cpu")), ("service", client.ServiceExecutor(device="cpu"))):
        mini = MiniProject(16000)
        mini.wave("walk", tone(6.0, 16000, 2, seed=4))
        mini.selection = (1.0, 4.5)
        (tmp_path / name).mkdir()
        with FakeAudacity(tmp_path / name, greeting(mini)) as fake, AudacityPipe(fake.paths, settle=0.5) as pipe:
            added = requests.extract_selection(pipe, req, requests.StemMaker(executor))
            found = finding.find_selection(pipe, req, finding.EventSearch(executor, api.DetectOptions(threshold=0.01)))
        stem = next(lane for lane in mini.lanes if lane.name == added[0].name)
        outcomes.append((added[0].name, added[0].start, stem.audio, found.events))
    (name_here, start_here, audio_here, events_here), (name_there, start_there, audio_there, events_there) = outcomes
    assert (name_there, start_there) == (name_here, start_here) == ("walk.dog_barking", 1.0)
    assert audio_there.tobytes() == audio_here.tobytes() and len(audio_here) == 3.5 * 16000
    assert events_there == events_here and events_here


# --- a service that stops answering ------------------------------------------------------------

SILENCE = 3.0  # seconds: $CLAPSEP_SERVICE_TIMEOUT in these tests, so a stopped service shows soon


@contextlib.contextmanager
def sigstopped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The service stopped as Ctrl-Z stops it (alive, holding its socket and lock, answering
    nothing), resumed however the block ends."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def end_service(proc: subprocess.Popen[bytes]) -> None:
    """Stop the service (resumed first, whatever the test left) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
    with contextlib.suppress(ClapsepError):
        client.stop()
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def timed(*args: object, **kwargs: object) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = clapsep(*args, **kwargs)
    return done, time.monotonic() - started


def test_a_stopped_service_is_told_within_the_bound_auto_runs_here_and_require_fails(
        runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(protocol.SILENCE_ENV, f"{SILENCE:g}")
    src = sources(tmp_path / "src")
    proc = start_serve(log=tmp_path / "serve.log")
    try:
        here, here_seconds = timed("extract", "dog", "mix.wav", "--out-dir", tmp_path / "here", server="never", cwd=src)
        assert here.returncode == 0, here.stderr
        with sigstopped(proc):
            started = time.monotonic()
            with pytest.raises(client.Unresponsive, match=rf"\(pid {proc.pid}\) did not answer within 3 s"):
                client.status()
            assert time.monotonic() - started < SILENCE + 2
            auto, auto_seconds = timed("extract", "dog", "mix.wav", "--out-dir", tmp_path / "auto", cwd=src)
            required, required_seconds = timed("extract", "dog", "mix.wav", "--out-dir", tmp_path / "required",
                                               "--server", "require", cwd=src)
        told = (f"the clapsep service (pid {proc.pid}) did not answer within 3 s: is it stopped or hung? "
                f"(`kill -CONT {proc.pid}` resumes a stopped one, `kill -KILL {proc.pid}` ends a hung one)")
        assert auto.returncode == 0, auto.stderr
        assert [line for line in auto.stderr.splitlines() if "clapsep service" in line] == [
            f"clapsep: {told}; running the job here instead"]
        assert stems(tmp_path / "auto") == stems(tmp_path / "here")
        assert auto_seconds < here_seconds + SILENCE + 20  # one wait for the bound, then the run here
        assert required.returncode == 1
        assert required.stderr.strip().splitlines() == [f"clapsep: error: {told}"]
        assert not (tmp_path / "required").exists()
        assert SILENCE - 0.5 < required_seconds < SILENCE + 10
        assert client.status()["jobs_done"] == 0  # resumed, it answers again; no job went to it
    finally:
        end_service(proc)


def test_a_service_stopped_mid_job_is_told_within_the_bound_and_drops_the_job_when_it_resumes(
        runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(protocol.SILENCE_ENV, f"{SILENCE:g}")
    src = tmp_path / "src"
    src.mkdir()
    write_audio(src / "long.wav", tone(60.0, RATE, 2, seed=3), RATE)
    proc = start_serve(log=tmp_path / "serve.log")
    out = tmp_path / "out"
    out.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "extract", "dog", "long.wav", "--out-dir", str(out),
                            "--server", "require"], cwd=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.suffix == ".part" for p in out.iterdir()):  # the service is writing the stem
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.01)
        with sigstopped(proc):
            stopped = time.monotonic()
            _, err = job.communicate(timeout=SILENCE + 30)
            waited = time.monotonic() - stopped
        assert job.returncode == 1
        assert err.strip().splitlines() == [
            f"clapsep: error: the clapsep service (pid {proc.pid}) stopped answering during the job (nothing for "
            f"3 s): is it stopped or hung? (`kill -CONT {proc.pid}` resumes a stopped one, `kill -KILL {proc.pid}` "
            "ends a hung one); the job there stops when it resumes: run the command again"]
        assert waited < SILENCE + 10
        deadline = time.monotonic() + 60  # resumed, it finds its client gone and drops the job
        while (list(out.iterdir()) or client.status()["running"] is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.iterdir()) == [] and client.status()["running"] is None
        assert "cancelled: the client hung up" in (tmp_path / "serve.log").read_text()
        write_audio(src / "short.wav", tone(1.0, RATE, 1), RATE)
        again = clapsep("extract", "dog", "short.wav", "--out-dir", out, "--server", "require", cwd=src)
        assert again.returncode == 0, again.stderr
        assert client.status()["jobs_done"] == 2
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        end_service(proc)


def test_a_job_queued_behind_a_long_one_hears_the_service_and_waits_past_the_bound(
        warm: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(protocol.SILENCE_ENV, f"{SILENCE:g}")
    # Long enough to outlast the bound on a fast, quiet machine too: 15 min, separated with half-segment
    # overlap (180 network segments).
    write_audio(tmp_path / "long.wav", tone(900.0, 16000, 1, seed=3), 16000)
    write_audio(tmp_path / "short.wav", tone(1.0, RATE, 1), RATE)
    executor = client.ServiceExecutor(device="cpu", overlap=0.5)
    long_job: list[api.Job] = []
    first = threading.Thread(target=lambda: long_job.append(
        executor.extract([tmp_path / "long.wav"], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "a"))))
    first.start()
    try:
        while client.status()["running"] is None:
            assert first.is_alive()
            time.sleep(0.01)
        started = time.monotonic()
        short = executor.extract([tmp_path / "short.wav"], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "b"))
        waited = time.monotonic() - started
    finally:
        first.join(timeout=300)
    assert short.results[0].status == "ok" and long_job[0].results[0].status == "ok"
    assert waited > SILENCE + 1, "the long job was too short to test the heartbeat"


def test_the_runtime_folder_is_made_private_and_one_open_to_others_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run" / "user"))
    folder = protocol.runtime_dir()
    assert folder == tmp_path / "run" / "user" / "clapsep"
    assert folder.stat().st_mode & 0o777 == folder.parent.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)
    with pytest.raises(ClapsepError, match="must be this user's own folder, closed to others"):
        protocol.socket_path()
    shared = tmp_path / "shared"  # where platformdirs would point if another user could write there
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(protocol.platformdirs, "user_runtime_dir", lambda name: str(shared / name))
    with pytest.raises(ClapsepError, match="others may write in it"):
        protocol.runtime_dir()
    shared.chmod(0o777 | stat.S_ISVTX)  # sticky, as /tmp is: others cannot replace what is ours
    assert protocol.runtime_dir() == shared / "clapsep"
    assert client.status() is None  # no service there, and none is started by asking


def test_sigterm_ends_the_service_like_stop(runtime: Path, tmp_path: Path) -> None:
    proc = start_serve(log=tmp_path / "serve.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not (runtime / "clapsep" / "service.sock").exists() and client.status() is None


def test_a_model_replaced_in_the_store_is_loaded_again(runtime: Path, tiny_store: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("CLAPSEP_HOME", str(store))
    src = sources(tmp_path / "src")
    proc = start_serve(log=tmp_path / "serve.log")
    executor = client.ServiceExecutor(device="cpu")
    assert executor.extract([src / "talk.flac"], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "a")
                            ).results[0].status == "ok"
    manifest = store / "models" / "default" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "fingerprint": "reinstalled"}))  # what a new install changes
    assert executor.extract([src / "talk.flac"], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "b")
                            ).results[0].status == "ok"
    client.stop()
    proc.wait(timeout=30)
    assert (tmp_path / "serve.log").read_text().count("model 'default' changed in the store: loading it again") == 1
