"""A Ray cluster on this machine for tests and benchmarks: a head and more node processes, all
on 127.0.0.1, inside a loopback-only network namespace where this runs as root.

Every process is started here (``ray start --block``, each in its own process group) and ended
here by process id; waits are bounded. Ray's own address discovery routes towards a public
resolver, so every node and driver is told 127.0.0.1 and, in the namespace, has nothing else.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
START_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _namespace_possible() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def descendants(roots: Sequence[int]) -> set[int]:
    """``roots`` and every process below them."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return {p for p in found if Path(f"/proc/{p}").exists()}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LocalCluster:
    """``nodes`` Ray node processes (the first the head) of ``cpus`` CPUs each, with ``env``."""

    def __init__(self, nodes: int = 2, cpus: int = 1, env: dict[str, str] | None = None):
        self.temp = Path(tempfile.mkdtemp(prefix="/tmp/clapsep-ray-"))  # unix socket paths must stay short
        # A token of this cluster's own (Ray would otherwise make one in ~/.ray), for nodes and drivers alike;
        # Ray's files, a driver's own `--ray local` instance's too, under the cluster's folder (not /tmp/ray).
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_TMPDIR": str(self.temp)}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes, self.cpus = nodes, cpus
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.holder: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []
        self.namespaced = _namespace_possible()

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the cluster's network namespace (if it has one)."""
        if self.holder is None:
            return list(argv)
        return ["nsenter", "-t", str(self.holder.pid), "-n", *argv]

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.wrap(argv), env=kw.pop("env", self.env), start_new_session=True, **kw)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._log = open(self.temp / "nodes.log", "ab")  # noqa: SIM115 - closed with the cluster
        if self.namespaced:
            self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                                           start_new_session=True)
            deadline = time.monotonic() + 30
            while "state UNKNOWN" not in self._ip_link() and time.monotonic() < deadline:
                time.sleep(0.05)
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--num-gpus", "0",
                  "--disable-usage-stats", "--block"]
        log = self._log
        self.popen([RAY, "start", "--head", "--port", str(self.port), "--include-dashboard=false",
                    "--temp-dir", str(self.temp), *common], stdout=log, stderr=log)
        self._wait_for(1)
        for _ in range(self.nodes - 1):
            self.popen([RAY, "start", "--address", self.address, *common], stdout=log, stderr=log)
        self._wait_for(self.nodes)

    def _ip_link(self) -> str:
        if self.holder is None:
            return ""
        out = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-n", "ip", "link", "show", "lo"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    def _wait_for(self, nodes: int) -> None:
        """Until ``nodes`` raylets have registered (by the GCS's node table, via ``ray status``)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for proc in self.started:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited ({proc.returncode}): {self.log_text()[-3000:]}")
            status = subprocess.run(self.wrap([RAY, "status", "--address", self.address]), env=self.env,
                                    capture_output=True, text=True, timeout=60)
            if status.returncode == 0 and len(re.findall(r"^\s*1 node_", status.stdout, re.M)) >= nodes:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{nodes} Ray nodes did not come up in {START_SECONDS} s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return (self.temp / "nodes.log").read_text(errors="replace")

    def pids(self) -> set[int]:
        return descendants([p.pid for p in self.started])

    def workers(self) -> set[int]:
        """Worker processes that hold a clapsep model (the actors)."""
        return {p for p in self.pids() if cmdline(p).startswith("ray::Worker")}

    def sockets(self) -> list[tuple[str, str, int]]:
        """(protocol, local address, pid) of every socket the cluster's processes hold."""
        pids = self.pids()
        found = []
        for proto, flag in (("tcp", "-tanp"), ("udp", "-uanp")):
            out = subprocess.run(self.wrap(["ss", "-H", flag]), capture_output=True, text=True, timeout=30).stdout
            for line in out.splitlines():
                cols = line.split()
                for pid in (int(p) for p in re.findall(r"pid=(\d+)", line)):
                    if pid in pids:
                        found.append((proto, cols[3], pid))
        return found

    def stop(self) -> None:
        """End every process started here, by process group, TERM first, then KILL after a short wait."""
        everyone = self.pids()
        for proc in self.started:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self.started):
            time.sleep(0.1)
        for proc in self.started:
            _signal_group(proc.pid, signal.SIGKILL)
        for pid in everyone:  # processes Ray moved to groups of their own
            if Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.started:
            proc.wait(timeout=30)
        if self.holder is not None:
            _signal_group(self.holder.pid, signal.SIGKILL)
            self.holder.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
