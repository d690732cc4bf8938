"""A real Audacity under Xvfb, with its own HOME, XDG folders and settings, for the end-to-end
tests (tests/audacity/live.py) and the benchmarks.

Audacity 3.2 scans new plug-ins at its first start in a helper process (``audacity --host``)
that loads mod-script-pipe too: it re-creates the FIFOs and exits, leaving the main process
listening on FIFOs that no longer have a name. So Audacity is started twice: once with the
module off, to register the plug-ins, then with it on (and the test's macros installed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError, PipePaths
from clapsep_cli.bridges.audacity.setup import find_module, install_macros, write_pipe_settings

SETTINGS = """[Version]
Major=3
Minor=2
Micro=4
[GUI]
ShowSplashScreen=0
[Update]
DefaultUpdatesChecking=0
UpdateNoticeShown=1
[Directories]
TempDir={temp}
"""


@dataclass
class LiveAudacity:
    """A running Audacity and its X server."""

    root: Path
    xvfb: subprocess.Popen[bytes]
    process: subprocess.Popen[bytes]
    env: dict[str, str]


def missing() -> str | None:
    """Why no live Audacity can run here, or None."""
    for tool in ("audacity", "Xvfb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        find_module()
    except Exception as err:  # noqa: BLE001 - reported as the reason
        return str(err)
    if _listening(PipePaths.default().to_audacity):
        return "another Audacity of this user is serving mod-script-pipe"
    return None


def start(root: Path) -> LiveAudacity:
    """Xvfb on a free display, then Audacity (twice, see above) with isolated folders."""
    xvfb, display = _xvfb()
    env = _environment(root, display)
    try:
        _write_settings(root)
        first = _launch(env, root / "first-start.log")
        try:
            _wait_for_plugin_scan(root, first)
        finally:
            _end(first)
        shutil.rmtree(root / "temp")
        _write_settings(root)
        write_pipe_settings(_config(root), find_module())
        install_macros(["dog"], root / "data" / "audacity" / "Macros")
        process = _launch(env, root / "audacity.log")
    except BaseException:
        _end(xvfb)
        raise
    live = LiveAudacity(root, xvfb, process, env)
    try:
        _wait_for_pipe(process)
    except BaseException:
        stop(live)
        raise
    return live


def stop(live: LiveAudacity) -> None:
    """End Audacity and Xvfb, and remove the FIFOs Audacity leaves when killed."""
    _end(live.process)
    _end(live.xvfb)
    paths = PipePaths.default()
    for path in (paths.to_audacity, paths.from_audacity):
        if path.exists() and not _listening(path):
            path.unlink()


def _config(root: Path) -> Path:
    return root / "config" / "audacity" / "audacity.cfg"


def _write_settings(root: Path) -> None:
    (root / "temp").mkdir(parents=True, exist_ok=True)
    _config(root).parent.mkdir(parents=True, exist_ok=True)
    _config(root).write_text(SETTINGS.format(temp=root / "temp"))


def _environment(root: Path, display: str) -> dict[str, str]:
    folders = {"HOME": "home", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data", "XDG_CACHE_HOME": "cache",
               "XDG_STATE_HOME": "state"}
    for name in folders.values():
        (root / name).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WAYLAND", "DBUS_"))}
    env.update({k: str(root / v) for k, v in folders.items()})
    env.update(DISPLAY=display, HF_HUB_OFFLINE="1")
    return env


def _xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Xvfb on the first free display (it reports the number on a pipe)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=[write], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    try:
        while not number.endswith(b"\n"):  # closing early would make Xvfb fail writing the rest
            chunk = os.read(read, 64)
            if not chunk:
                break
            number += chunk
    finally:
        os.close(read)
    if not number.strip():
        _end(xvfb)
        raise RuntimeError("Xvfb did not start")
    return xvfb, f":{number.decode().strip()}"


def _launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["audacity"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _wait_for_plugin_scan(root: Path, process: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    """Until the plug-in registry lists the Nyquist plug-ins and no scanning helper runs."""
    registry = _config(root).with_name("pluginregistry.cfg")
    deadline = time.monotonic() + limit
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Audacity exited at its first start (status {process.returncode})")
        done = registry.exists() and ".ny" in registry.read_text(errors="replace") and not _children(process.pid)
        quiet_since = (quiet_since or time.monotonic()) if done else None
        if quiet_since is not None and time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.05)
    raise RuntimeError("Audacity's first start did not finish its plug-in scan")


def _wait_for_pipe(process: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Audacity exited (status {process.returncode})")
        try:
            with AudacityPipe(settle=0.5):
                return
        except PipeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _end(process: subprocess.Popen[bytes]) -> None:
    """Terminate one process we started (and the helpers it started), and reap it."""
    for child in _children(process.pid):
        os.kill(child, signal.SIGTERM)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(path: Path) -> bool:
    """Whether some process reads the FIFO ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True
