"""Driving the real Audacity 4.0.1 as a user does, in the Debian unstable root that
testbed/debian_unstable.sh builds (chroot, Xvfb, xdotool): for tests/test_audacity4_e2e.py and
benchmarks/warm_latency.py --audacity4.

Audacity 4 runs once per user: a second `audacity` hands off to a running one ("handoff acked by
existing Audacity4"), even one with another HOME, and exits; so no other Audacity 4 of this user may
run meanwhile. The root's processes run chrooted into a bind mount of the root at another path, in a
mount namespace of their own: testbed/debian_unstable.sh, when it runs, kills every process whose root
is the root's own path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("CLAPSEP_DEBIAN_ROOT", "/var/cache/clapsep/debian-unstable"))
HOME = "/srv/clapsep-a4-e2e/home"  # inside the root
DISPLAY = ":57"
REPO = Path(__file__).resolve().parents[1]


def outside_usr(path: str) -> bool:
    return not (path == "/" or path == "/usr" or path.startswith("/usr/"))


# This checkout and the Python running the tests (its venv and base installation), read-only at
# the same paths inside the root: the effect's jobs run this clapsep with this Python's packages.
SHARED = sorted(p for p in {str(REPO), sys.prefix, sys.base_prefix} if outside_usr(p))

MOUNT = """set -e
R={root}; V={view}
mount --make-rprivate /
mount -t proc proc $R/proc
mount --rbind /dev $R/dev && mount --make-rslave $R/dev
mount --rbind /sys $R/sys && mount --make-rslave $R/sys
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mkdir -p $V && mount --rbind $R $V
for host in {shared}; do mkdir -p "$V$host" && mount --bind -o ro "$host" "$V$host"; done
echo ready
exec sleep infinity
"""


def usable() -> str | None:
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

    def __init__(self, tmp: Path, shared: list[str] = SHARED):
        self.view = tmp / "root"
        # The mount points that the shared paths need in the root, made here and removed by close().
        self.made = sorted({ROOT / Path(*Path(p).parts[1:i]) for p in shared for i in range(2, len(Path(p).parts) + 1)
                            if not (ROOT / Path(*Path(p).parts[1:i])).exists()}, key=lambda d: -len(d.parts))
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                                        MOUNT.format(root=ROOT, view=self.view, shared=" ".join(sorted(shared)))],
                                       stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline().strip() == "ready"

    def run(self, script: str, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        env = ["HOME=" + HOME, "LANG=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DISPLAY=" + DISPLAY,
               "XDG_RUNTIME_DIR=/srv/clapsep-a4-e2e/run", "QT_QPA_PLATFORM=xcb",
               *(f"{k}={v}" for k, v in (env or {}).items())]
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "chroot", str(self.view),
                               "/usr/bin/env", "-i", *env, "/bin/bash", "-c", script],
                              capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list[int]:
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if os.readlink(proc / "root") == str(self.view):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def close(self) -> None:
        # Everything started in it is chrooted into the view: end those (by pid), then the namespace.
        for signal in (15, 9):
            for pid in self.processes():
                try:
                    os.kill(pid, signal)
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.holder.terminate()
        self.holder.wait(10)
        for folder in self.made:  # deepest first; empty ones only
            try:
                folder.rmdir()
            except OSError:
                pass
        socket = ROOT / "tmp" / "Audacity4"  # Audacity 4's single-instance socket, left when it is killed
        if socket.is_socket():
            socket.unlink()


# ---------------------------------------------------------------- clicking, as a user does
# Screen positions in Audacity 4.0.1's main window at its first start on a 1600x1000 screen (no
# window manager: the window sits at 0,0); dialogs are found by their window names.
EFFECT_MENU = (380, 14)
EXTENSION_ITEM = (400, 468)  # Effect > Extension
CLAPSEP_ITEM = (622, 468)  # Extension > clapsep
EXTRACT_DOG_ITEM = (809, 500)  # clapsep > Extract: dog (the second item)
TRACK_ROW = 215  # y of the first track's middle; the clip spans 0-6 s from x=296, about 23.6 px a second
EMPTY_X = 1050  # x in the timeline, right of every clip: track rows and the empty area differ in colour
EMPTY_COLOUR = (33, 36, 51)
RATE = 44100
JOB_WRAPPER = """#!/bin/sh
# The bundle's command in this test: clapsep's job, its folder kept (Audacity's effect removes it).
[ -e {base}/fail ] && export CLAPSEP_HOME={base}/no-store
{python} -m clapsep_cli.bridges.audacity4.job "$1"
rc=$?
n=$(date +%s%N)
cp -r "$1" {base}/jobs/$n && echo "$n $rc" >> {base}/jobs/index
exit $rc
"""


class Desktop:
    """Audacity 4 in the root, driven with xdotool; screenshots numbered into ``shots``."""

    def __init__(self, root: Root, shots: Path, env: dict[str, str]):
        self.root, self.shots, self.env, self.count = root, shots, env, 0
        shots.mkdir(parents=True, exist_ok=True)

    def sh(self, script: str, timeout: float = 60) -> str:
        done = self.root.run(script, timeout=timeout, env=self.env)
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
        return done.stdout

    def shot(self, name: str) -> Path:
        self.count += 1
        inside = "/srv/clapsep-a4-e2e/shot.png"
        self.sh(f"import -window root {inside}")
        target = self.shots / f"{self.count:02d}-{name}.png"
        shutil.copy(ROOT / inside.lstrip("/"), target)
        return target

    def windows(self, pattern: str) -> list[str]:
        out = self.root.run(f"xdotool search --name '{pattern}' 2>/dev/null", env=self.env).stdout
        return out.split()

    def wait_window(self, pattern: str, seconds: float, gone: bool = False) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.windows(pattern)
            if bool(found) != gone:
                return found
            time.sleep(0.5)
        raise AssertionError(f"window '{pattern}' {'still there' if gone else 'not seen'} after {seconds} s "
                             f"(screenshots: {self.shots})")

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        values = dict(line.split("=") for line in self.sh(f"xdotool getwindowgeometry --shell {window}").split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def click_from_corner(self, window: str, right: int, bottom: int) -> None:
        """Click a point given from the window's bottom right corner (a dialog's buttons)."""
        x, y, width, height = self.geometry(window)
        self.sh(f"xdotool mousemove {x + width - right} {y + height - bottom} click 1")

    def tracks(self) -> int:
        """How many track rows the main window shows: runs of one colour, not the empty area's, at
        least 40 px tall, down the timeline right of the clips (rows are 114 px, between lines)."""
        from PIL import Image

        image = Image.open(self.shot("tracks")).convert("RGB")
        column = [image.getpixel((EMPTY_X, y)) for y in range(150, 760)]
        rows, run = 0, 1
        for above, colour in zip(column, column[1:] + [None]):
            if colour == above:
                run += 1
                continue
            if run >= 40 and above != EMPTY_COLOUR:
                rows += 1
            run = 1
        return rows

    def wait_tracks(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (shown := self.tracks()) != count:
            assert time.monotonic() < deadline, f"{shown} tracks shown, not {count} (screenshots: {self.shots})"
            time.sleep(1)

    def extract_dog(self) -> None:
        """Effect > Extension > clapsep > Extract: dog, then Apply in its dialog."""
        x, y = EFFECT_MENU
        self.sh(f"xdotool mousemove {x} {y} click 1")
        time.sleep(1)
        steps = [EXTENSION_ITEM, (EXTENSION_ITEM[0] + 160, EXTENSION_ITEM[1]), CLAPSEP_ITEM,
                 (EXTRACT_DOG_ITEM[0] - 110, CLAPSEP_ITEM[1]), EXTRACT_DOG_ITEM]
        for x, y in steps:  # along the menus, as a hand moves, so no submenu closes on the way
            self.sh(f"xdotool mousemove {x} {y}")
            time.sleep(0.6)
        self.shot("menu")
        self.sh("xdotool click 1")
        [dialog] = self.wait_window("^Extract: dog$", 15)
        self.shot("dialog")
        self.click_from_corner(dialog, 57, 32)  # Apply


class Autosave:
    """Audacity 4's database of the unsaved project (SessionData/*.aup4unsaved, SQLite): the
    current state of the project (``autosave``: the document, strings in UTF-32) and its audio
    (``sampleblocks``: float32 samples when the project's format is 32-bit float)."""

    def __init__(self, home: Path):
        self.folder = home / ".local/share/Audacity/Audacity4/SessionData"

    def read(self) -> tuple[bytes, list[tuple[int, bytes]]]:
        import sqlite3

        [path] = self.folder.glob("*.aup4unsaved")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            doc = db.execute("select doc from autosave").fetchone()[0]
            blocks = db.execute("select blockid, samples from sampleblocks order by blockid").fetchall()
        return doc, blocks


