"""The Audacity 4 extension in the real Audacity 4.0.1, under Xvfb, in the Debian unstable root that
testbed/debian_unstable.sh builds (marker e2e; needs root, for chroot and mounts).

A skeleton so far: it starts Audacity 4 in the root with clapsep's bundle installed and checks that
Audacity registers the bundle's effects. What was checked by clicking (docs/editors.md, "Audacity
4") is to come here next: select a range (xdotool drag), Effect > Extension > clapsep > Extract: dog,
Apply, then the new track over the range, one Ctrl+Z, Cancel, Find's labels.

Audacity 4 runs once per user: a second `audacity` hands off to a running one ("handoff acked by
existing Audacity4"), even one with another HOME, and exits; so no other Audacity 4 of this user may
run meanwhile. The root's processes run chrooted into a bind mount of the root at another path, in a mount
namespace of their own: testbed/debian_unstable.sh, when it runs, kills every process whose root is
the root's own path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clapsep_cli.bridges.audacity4 import setup as a4setup

pytestmark = pytest.mark.e2e

ROOT = Path(os.environ.get("CLAPSEP_DEBIAN_ROOT", "/var/cache/clapsep/debian-unstable"))
HOME = "/srv/clapsep-a4-e2e/home"  # inside the root
DISPLAY = ":57"

MOUNT = """set -e
R={root}; V={view}
mount --make-rprivate /
mount -t proc proc $R/proc
mount --rbind /dev $R/dev && mount --make-rslave $R/dev
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mkdir -p $V && mount --rbind $R $V
echo ready
exec sleep infinity
"""


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mounts)"
    if not (ROOT / "usr/bin/audacity").is_file():
        return f"no Debian root with Audacity at {ROOT} (testbed/debian_unstable.sh --build-only builds it)"
    if not (ROOT / "usr/bin/gcc").is_file() and shutil.which("cc") is None:
        return "no C compiler for the extension's native library"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


class Root:
    """A mount namespace with the root mounted, and commands run chrooted in it."""

    def __init__(self, tmp: Path):
        self.view = tmp / "root"
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                                        MOUNT.format(root=ROOT, view=self.view)],
                                       stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline().strip() == "ready"

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = ["HOME=" + HOME, "LANG=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DISPLAY=" + DISPLAY,
               "XDG_RUNTIME_DIR=/srv/clapsep-a4-e2e/run", "QT_QPA_PLATFORM=xcb"]
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "chroot", str(self.view),
                               "/usr/bin/env", "-i", *env, "/bin/bash", "-c", script],
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        # Everything started in it is chrooted into the view: end those (by pid), then the namespace.
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if os.readlink(proc / "root") == str(self.view):
                    os.kill(int(proc.name), 15)
            except OSError:
                continue
        self.holder.terminate()
        self.holder.wait(10)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    reason = _usable()
    if reason:
        pytest.skip(reason)
    shutil.rmtree(ROOT / "srv/clapsep-a4-e2e", ignore_errors=True)
    (ROOT / "srv/clapsep-a4-e2e/run").mkdir(parents=True, mode=0o700)
    chroot = Root(tmp_path)
    try:
        yield chroot
    finally:
        chroot.close()
        shutil.rmtree(ROOT / "srv/clapsep-a4-e2e", ignore_errors=True)


def test_audacity4_registers_the_bundles_effects(root: Root) -> None:
    host_home = ROOT / HOME.lstrip("/")
    folder = host_home / ".local/share/Audacity/Audacity4/extensions"
    bundle, _ = a4setup.install_bundle(["dog"], folder, command=["/usr/bin/python3", "-m", "job"])
    started = root.run(f"Xvfb {DISPLAY} -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 & sleep 1; "
                       "audacity >/srv/clapsep-a4-e2e/audacity.log 2>&1 & echo started")
    assert "started" in started.stdout
    known = host_home / ".local/share/Audacity/Audacity4/known_audio_plugins.json"
    manifest = f"{HOME}/{bundle.relative_to(host_home)}/manifest.json"  # as Audacity sees it
    titles: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(titles) < 6:
        time.sleep(2)
        try:
            plugins = json.loads(known.read_text())["plugins"]
        except (OSError, ValueError, KeyError):
            continue
        titles = {p["meta"]["attributes"]["title"] for p in plugins if p["path"] == manifest}
    log = ROOT / "srv/clapsep-a4-e2e/audacity.log"
    files = sorted(str(p.relative_to(host_home)) for p in host_home.rglob("*") if ".cache" not in p.parts)
    assert titles == {"Extract a sound", "Extract: dog", "Remove a sound", "Remove: dog", "Find a sound",
                      "Find: dog"}, (log.read_text(errors="replace")[-3000:] if log.exists() else "no log", files[:40])
