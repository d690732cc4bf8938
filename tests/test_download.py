"""`clapsep models download` against a local server that speaks the Hugging Face Hub's file protocol.

The server (127.0.0.1 only, started and stopped here) answers ``HEAD``/``GET`` on
``/{repo}/resolve/main/{file}`` and ``/spaces/{repo}/resolve/main/{file}`` as the Hub does:
plain git files with their git blob id as ETag, LFS files (the checkpoints) with a redirect to a
second "CDN" server and ``X-Linked-Etag`` (their sha256) and ``X-Linked-Size``; the CDN honours
``Range``. ``HF_ENDPOINT`` points the real huggingface_hub client at it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from clapsep_cli.cli import main
from clapsep_cli.models import store
from clapsep_cli.models.download import (
    CLAP_FILE,
    CLAP_REPO,
    CLAPSEP_FILE,
    CLAPSEP_REPO,
    TOKENIZER_FILES,
    TOKENIZER_REPO,
)
from tests.helpers import Artefacts, tone, write_audio

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WAIT = 30.0  # the longest any server thread waits for the test


@dataclass
class HubState:
    """What the two servers serve and what they saw."""

    files: dict[str, bytes]  # URL path under the Hub -> content
    lfs: set[str]  # URL paths stored with LFS (served from the CDN)
    etags: dict[str, str] = field(default_factory=dict)  # URL path -> advertised checksum, where not the true one
    cut: dict[str, int] = field(default_factory=dict)  # CDN sha256 -> bytes to send before stalling (first GET only)
    drop: dict[str, int] = field(default_factory=dict)  # CDN sha256 -> bytes to send before hanging up (first GET)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    cdn_url: str = ""

    def true_etag(self, path: str) -> str:
        data = self.files[path]
        if path in self.lfs:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self, path: str) -> str:
        return self.etags.get(path, self.true_etag(path))


def _handler(state: HubState, cdn: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            state.requests.append((self.command, self.path, self.headers.get("Range")))
            if cdn:
                self._cdn(body)
            else:
                self._hub(body)

        def _hub(self, body: bool) -> None:
            path = self.path
            if path not in state.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files[path]
            if path in state.lfs:
                sha = state.true_etag(path)
                self.send_response(302)
                self.send_header("Location", f"{state.cdn_url}/{sha}")
                self.send_header("X-Linked-Etag", f'"{state.etag(path)}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", f'"{state.etag(path)}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _cdn(self, body: bool) -> None:
            sha = self.path.strip("/")
            data = next((d for p, d in state.files.items() if p in state.lfs and state.true_etag(p) == sha), None)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            ranged = self.headers.get("Range")
            if ranged:
                start = int(ranged.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            hang_up = state.drop.pop(sha, None)
            if hang_up is not None:
                self.wfile.write(data[start:hang_up])
                return  # HTTP/1.0: the connection closes, short of its Content-Length
            stop = state.cut.pop(sha, None)
            if stop is None:
                self.wfile.write(data[start:])
                return
            self.wfile.write(data[start:stop])
            self.wfile.flush()
            state.stalled.set()
            state.release.wait(WAIT)  # hold the connection open, half sent, until the test is done with it

    return Handler


@pytest.fixture
def hub(tiny_files: Artefacts) -> Iterator[tuple[str, HubState]]:
    files = {
        f"/{CLAP_REPO}/resolve/main/{CLAP_FILE}": tiny_files.clap.read_bytes(),
        f"/spaces/{CLAPSEP_REPO}/resolve/main/{CLAPSEP_FILE}": tiny_files.layouts[1].read_bytes(),
        **{f"/{TOKENIZER_REPO}/resolve/main/{name}": (tiny_files.tokenizer / name).read_bytes()
           for name in TOKENIZER_FILES},
    }
    state = HubState(files, {p for p in files if p.endswith((".pt", ".ckpt"))})
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, cdn)) for cdn in (False, True)]
    state.cdn_url = f"http://127.0.0.1:{servers[1].server_port}"
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield f"http://127.0.0.1:{servers[0].server_port}", state
    state.release.set()
    for s, t in zip(servers, threads):
        s.shutdown()
        s.server_close()
        t.join(WAIT)


def _download_cmd(endpoint: str, home: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "CLAPSEP_HOME": str(home),
           "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return [sys.executable, "-m", "clapsep_cli", "models", "download", "--architecture", "tiny"], env


def download(endpoint: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd, env = _download_cmd(endpoint, home)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("clapsep:")]


def _installed(home: Path) -> list[str]:
    models = home / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


@pytest.mark.slow
def test_clean_download_installs_a_working_model(hub: tuple[str, HubState], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, state = hub
    home = tmp_path / "store"
    result = download(endpoint, home)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("CLAPSEP_HOME", str(home))
    installed = store.get_model()
    assert installed.manifest["origin"] == "download"
    clapsep_path = f"/spaces/{CLAPSEP_REPO}/resolve/main/{CLAPSEP_FILE}"
    assert installed.manifest["sources"]["clapsep"]["sha256"] == state.true_etag(clapsep_path)
    assert installed.manifest["tokenizer"] is not None
    assert not (home / "downloads").exists()  # the originals are gone once converted
    src = write_audio(tmp_path / "in.wav", tone(2.0, 32000), 32000)
    extracted = CliRunner().invoke(main, ["extract", "dog", str(src)])
    assert extracted.exit_code == 0, extracted.output
    assert (tmp_path / "in.dog.wav").is_file()


@pytest.mark.slow
def test_interrupted_download_resumes_on_the_next_run(hub: tuple[str, HubState], tmp_path: Path) -> None:
    endpoint, state = hub
    home = tmp_path / "store"
    clap_path = f"/{CLAP_REPO}/resolve/main/{CLAP_FILE}"
    clap_sha, size = state.true_etag(clap_path), len(state.files[clap_path])
    state.cut[clap_sha] = size - 4096  # past the client's first 10 MiB write, short of the end
    assert size - 4096 > 10 << 20
    cmd, env = _download_cmd(endpoint, home)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = home / "downloads" / CLAP_REPO.replace("/", "--") / f"{clap_sha}.part"
    try:
        assert state.stalled.wait(WAIT), "the first run never reached the CDN"
        deadline = time.monotonic() + WAIT
        while not (part.is_file() and part.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # the user presses Ctrl-C part way
        _, stderr = first.communicate(timeout=WAIT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(WAIT)
    assert first.returncode == 130, stderr
    kept = part.stat().st_size
    assert 0 < kept < size and _installed(home) == []
    state.requests.clear()
    second = download(endpoint, home)
    assert second.returncode == 0, second.stderr
    assert "resuming at" in second.stderr
    cdn_gets = [r for r in state.requests if r[0] == "GET" and r[1] == f"/{clap_sha}"]
    assert [r[2] for r in cdn_gets] == [f"bytes={kept}-"]  # only the missing half was asked for
    assert _installed(home) == [store.DEFAULT_MODEL]


@pytest.mark.slow
def test_connection_lost_part_way_resumes_in_the_same_run(hub: tuple[str, HubState], tmp_path: Path) -> None:
    endpoint, state = hub
    home = tmp_path / "store"
    clap_path = f"/{CLAP_REPO}/resolve/main/{CLAP_FILE}"
    clap_sha, size = state.true_etag(clap_path), len(state.files[clap_path])
    state.drop[clap_sha] = size - 4096
    result = download(endpoint, home)
    assert result.returncode == 0, result.stderr
    ranges = [r[2] for r in state.requests if r[0] == "GET" and r[1] == f"/{clap_sha}"]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] is not None and 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) < size
    manifest = store.read_manifest(home / "models" / store.DEFAULT_MODEL)
    assert manifest["sources"]["clap"]["sha256"] == clap_sha


@pytest.mark.slow
def test_checksum_mismatch_fails_in_one_line_and_installs_nothing(hub: tuple[str, HubState], tmp_path: Path) -> None:
    endpoint, state = hub
    home = tmp_path / "store"
    clapsep_path = f"/spaces/{CLAPSEP_REPO}/resolve/main/{CLAPSEP_FILE}"
    state.etags[clapsep_path] = hashlib.sha256(b"the file the Hub recorded").hexdigest()
    result = download(endpoint, home)
    assert result.returncode == 1
    expected = (f"clapsep: error: {CLAPSEP_REPO}/{CLAPSEP_FILE}: downloaded bytes do not match the "
                f"checksum the server gives ({state.etags[clapsep_path]}); nothing installed, re-run to download it "
                "again")
    assert _error_lines(result.stderr) == [expected]
    assert _installed(home) == []
    assert not list((home / "downloads").rglob("*.part"))  # a bad file is not resumed either


@pytest.mark.slow
def test_missing_file_is_one_line_naming_it_and_the_offline_fix(hub: tuple[str, HubState], tmp_path: Path) -> None:
    endpoint, state = hub
    del state.files[f"/spaces/{CLAPSEP_REPO}/resolve/main/{CLAPSEP_FILE}"]
    started = time.monotonic()
    result = download(endpoint, tmp_path / "store")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    [line] = _error_lines(result.stderr)
    assert f"cannot download {CLAPSEP_REPO}/{CLAPSEP_FILE} from {endpoint}: HTTP 404 (not found)" in line
    assert "clapsep models import --clap FILE --clapsep FILE --tokenizer DIR" in line
    assert _installed(tmp_path / "store") == []


def test_refused_connection_is_one_line_naming_the_file_and_the_offline_fix(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = download(endpoint, tmp_path / "store")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    [line] = _error_lines(result.stderr)
    assert line.startswith(f"clapsep: error: cannot download {CLAP_REPO}/{CLAP_FILE} from {endpoint}: ")
    assert "models import" in line


def test_offline_mode_fails_fast_with_the_offline_fix(empty_home: Path) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(main, ["models", "download"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE is set" in result.output and "models import" in result.output
