"""``--ray``: the same extract on a Ray cluster this module starts on 127.0.0.1 (a head and a
second node of one CPU each, in a loopback-only network namespace when run as root).

The drivers are real ``clapsep`` processes; every stem is compared byte for byte with a local
``clapsep extract`` of the same files. Faults are real too: a worker process killed by its pid
while it writes a stem, and a driver killed mid-job.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from clapsep_cli.cli import main
from testbed.ray_cluster import LocalCluster, cmdline, descendants
from tests.helpers import tone, write_audio

RUN_SECONDS = 300
TEMP = re.compile(r"^\..+\.clapsep-(\d+)-[A-Za-z0-9_]+\.part$")

# name, seconds, rate, channels, soundfile format/subtype (None: made by ffmpeg). The long files
# come last in name order, so a job is still running them when the short ones are done.
SOURCES = [
    ("a01.wav", 3.0, 8000, 1, "PCM_16"), ("a02.wav", 4.5, 16000, 2, "PCM_24"), ("a03.wav", 2.2, 22050, 1, "FLOAT"),
    ("a04.wav", 6.0, 48000, 6, "PCM_16"), ("a05.wav", 3.3, 96000, 2, "PCM_24"), ("a06.flac", 5.0, 44100, 2, "PCM_16"),
    ("a07.flac", 2.5, 32000, 1, "PCM_24"), ("a08.ogg", 4.0, 44100, 2, "VORBIS"), ("a09.ogg", 3.0, 22050, 1, "VORBIS"),
    ("a10.mp3", 4.0, 44100, 2, "MPEG_LAYER_III"), ("a11.mp3", 3.5, 16000, 1, "MPEG_LAYER_III"),
    ("a12.aiff", 3.0, 48000, 2, "PCM_16"), ("a13.aiff", 2.0, 11025, 1, "PCM_24"), ("a14.m4a", 4.0, 44100, 2, None),
    ("a15.wav", 12.5, 44100, 2, "PCM_16"), ("a16.flac", 7.0, 48000, 3, "PCM_16"), ("a17.wav", 1.0, 32000, 1, "PCM_16"),
    ("z18.wav", 45.0, 44100, 2, "PCM_16"), ("z19.flac", 40.0, 48000, 2, "PCM_24"), ("z20.wav", 50.0, 32000, 1, "FLOAT"),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in folder.iterdir() if not p.name.startswith(".")}


def assert_same_stems(got: Path, expected: Path, names: set[str] | None = None) -> None:
    """Every stem in ``expected`` (or those of ``names``) is in ``got`` with the same bytes.

    Two formats carry bytes that differ between two local runs of the same file: libsndfile's
    PEAK chunk of float WAVs holds the time of writing, and each Ogg stream a random serial
    number. Those stems must hold exactly the same samples, in the same format."""
    want = digests(expected)
    if names is not None:
        want = {n: d for n, d in want.items() if n in names}
    assert set(digests(got)) == set(want) and want
    for name, sha in want.items():
        if digest(got / name) == sha:
            continue
        a, b = sf.info(str(got / name)), sf.info(str(expected / name))
        assert name.endswith(".ogg") or a.subtype == "FLOAT", f"{name}: bytes differ"
        assert (a.format, a.subtype, a.samplerate, a.channels, a.frames) == (
            b.format, b.subtype, b.samplerate, b.channels, b.frames)
        assert np.array_equal(sf.read(str(got / name))[0], sf.read(str(expected / name))[0]), f"{name}: samples differ"


def stems(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP.match(p.name)] if folder.exists() else []


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    for i, (name, seconds, rate, channels, subtype) in enumerate(SOURCES):
        wave = tone(seconds, rate, channels, freq=220.0 + 40 * i, seed=i)
        if subtype is None:
            if shutil.which("ffmpeg") is None:
                pytest.skip("ffmpeg is not installed")
            wav = write_audio(folder / ".tmp.wav", wave, rate, subtype="PCM_16")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(folder / name)],
                           check=True, timeout=120)
            wav.unlink()
        else:
            write_audio(folder / name, wave, rate, subtype=subtype)
    return folder


@pytest.fixture(scope="module")
def cluster(tiny_store: Path) -> Iterator[LocalCluster]:
    pytest.importorskip("ray")
    root = str(Path(__file__).resolve().parents[1])
    env = {"CLAPSEP_HOME": str(tiny_store), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    running = LocalCluster(nodes=2, cpus=1, env=env).start()
    yield running
    running.stop()


def clapsep(cluster: LocalCluster, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A ``clapsep`` driver process in the cluster's network namespace."""
    return cluster.popen([sys.executable, "-m", "clapsep_cli", *(str(a) for a in args)],
                         env={**cluster.env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=RUN_SECONDS)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def local(cluster: LocalCluster, sources: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A local ``clapsep extract`` of the sources: its stems and its report."""
    out = tmp_path_factory.mktemp("local")
    rc, stdout, err = finish(clapsep(cluster, "extract", "dog barking", sources, "--out-dir", out, "--device", "cpu",
                                     "--json"))
    assert rc == 0, err
    return out, json.loads(stdout)


def assert_loopback_only(cluster: LocalCluster) -> None:
    found = cluster.sockets()
    assert found, "no sockets seen: the check would prove nothing"
    away = [s for s in found if not re.match(r"^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]|\[::1\]):\d+$", s[1])]
    assert not away, f"sockets beyond loopback: {away}"


def shape(report: dict, out: Path) -> dict:
    """A report without what differs between runs (times, the cluster section), paths relative to ``out``."""
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("processing_seconds", "realtime_factor", "timings", "ray", "query_embeddings")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(out), "OUT") if isinstance(value, str) else value
    return strip(report)  # type: ignore[return-value]


def test_cluster_stems_are_byte_identical_to_a_local_run(cluster: LocalCluster, sources: Path,
                                                          local: tuple[Path, dict], tmp_path: Path) -> None:
    local_out, local_report = local
    out = tmp_path / "stems"
    rc, stdout, err = finish(clapsep(cluster, "extract", "dog barking", sources, "--out-dir", out,
                                     "--ray", cluster.address, "--json"))
    assert rc == 0, err
    report = json.loads(stdout)
    assert len(report["results"]) == 20 and {r["status"] for r in report["results"]} == {"ok"}
    assert len(stems(out)) == 20
    assert_same_stems(out, local_out)
    assert shape(report, out) == shape(local_report, local_out)
    assert set(report) == set(local_report) | {"ray"}
    assert report["ray"]["workers"] == 2 and report["ray"]["worker_resources"] == {"CPU": 1, "GPU": 0}
    assert temp_files(out) == []
    assert_loopback_only(cluster)


def test_the_json_report_on_the_cluster_is_the_local_one_for_bad_inputs_too(cluster: LocalCluster, sources: Path,
                                                                           tmp_path: Path) -> None:
    """A file that is no audio fails as it is planned, one with a NaN as a worker reads it."""
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    nan = write_audio(tmp_path / "nan.wav", tone(3.0, 16000), 16000)
    with sf.SoundFile(nan, "r+") as f:
        f.seek(16000)
        f.write(np.full((100, 1), np.nan, np.float32))
    files = [sources / "a02.wav", broken, nan]
    reports = {}
    for where, extra in (("local", ["--device", "cpu"]), ("ray", ["--ray", cluster.address])):
        rc, stdout, err = finish(clapsep(cluster, "extract", "dog barking", *files, "--out-dir", tmp_path / where,
                                         "--json", *extra))
        assert rc == 1, err
        reports[where] = json.loads(stdout)
    assert [r["status"] for r in reports["local"]["results"]] == ["ok", "failed", "failed"]
    assert shape(reports["ray"], tmp_path / "ray") == shape(reports["local"], tmp_path / "local")
    assert set(reports["ray"]) == set(reports["local"]) | {"ray"}


def test_remove_on_the_cluster_matches_a_local_remove(cluster: LocalCluster, sources: Path, tmp_path: Path) -> None:
    """Without --json and not on a terminal: the local run's lines on stdout, no bar; --report."""
    files = [sources / n for n in ("a02.wav", "a08.ogg", "a16.flac")]
    args = ["remove", "dog barking", *files, "--method", "subtract", "--residual"]
    rc, _, err = finish(clapsep(cluster, *args, "--out-dir", tmp_path / "local", "--device", "cpu"))
    assert rc == 0, err
    out = tmp_path / "ray"
    rc, stdout, err = finish(clapsep(cluster, *args, "--out-dir", out, "--ray", cluster.address, "--ray-workers", 1,
                                     "--report", tmp_path / "report.json"))
    assert rc == 0, err
    name = "{}.without_dog_barking{}"
    assert stdout.splitlines() == [f"{f} -> {out / name.format(f.stem, f.suffix)} + "
                                   f"{out / name.format(f.stem, '.residual' + f.suffix)}" for f in files]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "subtract" and report["ray"]["workers"] == 1
    assert len(stems(tmp_path / "local")) == 6
    assert_same_stems(tmp_path / "ray", tmp_path / "local")


def test_find_on_the_cluster_gives_the_events_and_files_of_a_local_find(cluster: LocalCluster, sources: Path,
                                                                         tmp_path: Path) -> None:
    files = [sources / n for n in ("a02.wav", "a08.ogg", "a16.flac")]
    args = ["find", "dog barking", *files, "--threshold", "0.01,0.005", "--format", "audacity", "--json"]
    reports = {}
    for where, extra in (("local", ["--device", "cpu"]), ("ray", ["--ray", cluster.address])):
        rc, stdout, err = finish(clapsep(cluster, *args, "--out-dir", tmp_path / where, *extra))
        assert rc == 0, err
        reports[where] = json.loads(stdout)
    events = [r["events"] for r in reports["local"]["results"]]
    assert all(events) and [r["events"] for r in reports["ray"]["results"]] == events
    assert shape(reports["ray"], tmp_path / "ray") == shape(reports["local"], tmp_path / "local")
    for f in files:
        name = f"{f.stem}.dog_barking.labels.txt"
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()


ERRORS_DRIVER = """
import sys
from pathlib import Path
from clapsep_cli import api

address, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
plan = api.OutputPlan(out_dir=out)
for where, executor in (("ray", api.Cluster(address, device="cpu", max_workers=1)),
                        ("here", api.Separator(device="cpu"))):
    result = executor.extract([source], api.request("dog"), plan).results[0]
    print(where, result.status, type(result.problem).__name__, result.error, sep="|")
try:
    api.Cluster(address, "nonexistent", device="cpu", max_workers=1).extract([source], api.request("dog"), plan)
except api.ClapsepError as err:
    print("missing", type(err).__name__, err, sep="|")
"""


def test_errors_from_workers_keep_their_class_and_message(cluster: LocalCluster, tmp_path: Path) -> None:
    bad = write_audio(tmp_path / "bad.wav", tone(3.0, 16000), 16000)
    with sf.SoundFile(bad, "r+") as f:  # planning probes the header; the NaN is found as a worker reads
        f.seek(16000)
        f.write(np.full((100, 1), np.nan, np.float32))
    proc = cluster.popen([sys.executable, "-c", ERRORS_DRIVER, cluster.address, str(bad), str(tmp_path / "out")],
                         env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, stdout, err = finish(proc)
    assert rc == 0, err
    lines = dict(line.split("|", 1) for line in stdout.strip().splitlines())
    assert lines["ray"] == lines["here"]
    assert lines["ray"].startswith(f"failed|AudioError|{bad}: sample 16000 (1.000 s)")
    assert lines["missing"].startswith("ModelMissingError|model 'nonexistent' is not installed; ")


def test_a_worker_killed_mid_file_is_replaced_and_the_job_completes(cluster: LocalCluster, sources: Path,
                                                                    local: tuple[Path, dict], tmp_path: Path) -> None:
    """``auto`` through RAY_ADDRESS; with --json, whose stdout must stay one JSON document
    although Ray reports the dead worker on the driver's stdout."""
    out = tmp_path / "stems"
    proc = clapsep(cluster, "extract", "dog barking", sources, "--out-dir", out, "--ray", "auto", "--json",
                   env={"RAY_ADDRESS": cluster.address})
    killed = None
    deadline = time.monotonic() + RUN_SECONDS
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        workers = cluster.workers()
        writing = [p for p in temp_files(out) if int(TEMP.match(p.name).group(1)) in workers]
        if writing and len(stems(out)) >= 4:
            assert_loopback_only(cluster)  # the driver and the workers, mid-job
            killed = int(TEMP.match(writing[0].name).group(1))
            half_written = writing[0].name
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    rc, stdout, err = finish(proc)
    assert killed is not None, "no worker was caught writing: the job ended first"
    assert rc == 0, err
    report = json.loads(stdout)
    assert "A worker died" in err  # Ray's notice, which it prints on the driver's stdout, went to stderr
    assert [r["status"] for r in report["results"]] == ["ok"] * 20
    assert_same_stems(out, local[0])
    assert temp_files(out) == [], f"{half_written} or another temporary file was left"
    assert not Path(f"/proc/{killed}").exists()


def test_a_killed_driver_reruns_only_the_remaining_files(cluster: LocalCluster, sources: Path,
                                                         local: tuple[Path, dict], tmp_path: Path) -> None:
    out = tmp_path / "stems"
    args = ["extract", "dog barking", sources, "--out-dir", out, "--ray", cluster.address, "--json"]
    proc = clapsep(cluster, *args)
    deadline = time.monotonic() + RUN_SECONDS
    while len(stems(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "clapsep_cli" in cmdline(proc.pid)  # the driver itself (nsenter has become it)
    workers = cluster.workers()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 60  # Ray ends a dead driver's workers
    while workers & cluster.workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers & cluster.workers()
    done = set(digests(out))
    assert 3 <= len(done) < 20, "the driver was not killed mid-job"

    rc, stdout, err = finish(clapsep(cluster, *args))
    assert rc == 0, err
    report = json.loads(stdout)
    by_status = {s: {Path(r["target"]).name for r in report["results"] if r["status"] == s} for s in ("ok", "skipped")}
    assert by_status["skipped"] == done
    assert len(by_status["ok"]) == 20 - len(done) and not by_status["ok"] & done
    assert_same_stems(out, local[0])
    assert temp_files(out) == []

    rc, stdout, err = finish(clapsep(cluster, *args))  # nothing left: no worker, no model
    assert rc == 0, err
    report = json.loads(stdout)
    assert [r["status"] for r in report["results"]] == ["skipped"] * 20
    assert report["model_loaded"] is False and "ray" not in report


def test_local_starts_a_cluster_of_its_own_and_ends_it(cluster: LocalCluster, sources: Path,
                                                       local: tuple[Path, dict], tmp_path: Path) -> None:
    out = tmp_path / "stems"
    proc = clapsep(cluster, "extract", "dog barking", sources / "a01.wav", sources / "a06.flac", "--out-dir", out,
                   "--ray", "local", "--json")
    seen: set[int] = set()
    deadline = time.monotonic() + RUN_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= descendants([proc.pid])
        time.sleep(0.1)
    rc, stdout, err = finish(proc)
    assert rc == 0, err
    assert len(seen) > 3  # Ray's own processes were started under the driver
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and "ray" in cmdline(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in seen if Path(f"/proc/{p}").exists() and "ray" in cmdline(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the driver left processes of its cluster running"
    report = json.loads(stdout)
    assert [r["status"] for r in report["results"]] == ["ok", "ok"]
    assert_same_stems(out, local[0], {n for n in stems(local[0]) if n.startswith(("a01.", "a06."))})


def test_on_a_terminal_the_driver_shows_files_audio_and_throughput(cluster: LocalCluster, sources: Path,
                                                                    tmp_path: Path) -> None:
    reader, writer = pty.openpty()
    files = [sources / n for n in ("a15.wav", "z18.wav", "z19.flac", "z20.wav")]
    proc = cluster.popen([sys.executable, "-m", "clapsep_cli", "extract", "dog barking", *files, "--out-dir",
                          tmp_path, "--ray", cluster.address], stdout=writer, stderr=subprocess.DEVNULL)
    os.close(writer)
    shown = b""
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 65536)
        except OSError:  # the driver closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(reader)
    assert proc.wait(timeout=RUN_SECONDS) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    assert "files on 2 Ray workers" in text
    assert re.search(r"\d+/4 .*[0-9.]+ audio h, [0-9.]+ files/s, [0-9.]+ audio s/s", text), text[-2000:]
    assert f"{files[0]} -> {tmp_path / 'a15.dog_barking.wav'}" in text


def test_without_ray_the_flag_names_the_extra(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is not installed
    src = write_audio(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    result = CliRunner().invoke(main, ["extract", "dog", str(src), "--ray", "auto"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "clapsep: error: --ray needs Ray, which is not installed: pip install -e '.[ray]' in the clapsep checkout"]


def test_an_address_that_takes_no_connection_fails_at_once(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    src = write_audio(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        started = time.monotonic()
        result = CliRunner().invoke(main, ["extract", "dog", str(src), "--ray", f"127.0.0.1:{port}"])
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"clapsep: error: cannot reach the Ray cluster at 127.0.0.1:{port} (--ray): Connection refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


@pytest.mark.parametrize("option", [("--ray-workers", "2"), ("--ray-cpus", "4")])
def test_worker_options_without_ray_are_refused(home: Path, tmp_path: Path, option: tuple[str, str]) -> None:
    src = write_audio(tmp_path / "a.wav", tone(1.0, 16000), 16000)
    result = CliRunner().invoke(main, ["extract", "dog", str(src), *option])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "clapsep: error: --ray-cpus and --ray-workers shape the workers of a Ray cluster: give --ray too"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
