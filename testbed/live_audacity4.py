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

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
REMOVE_DOG_ITEM = (809, 564)  # clapsep > Remove: dog (the fourth item)
ANALYZE_MENU = (437, 14)
ANALYZE_EXTENSION_ITEM = (447, 180)  # Analyze > Extension (the menu's last item)
ANALYZE_CLAPSEP_ITEM = (620, 180)  # Extension > clapsep
FIND_DOG_ITEM = (801, 212)  # clapsep > Find: dog (the second item)
TRACK_ROW = 215  # y of the first track's middle; the clip spans 0-6 s from x=296, about 23.6 px a second
ZERO_X, PX_PER_SECOND = 296, 23.99  # the timeline's 0 s and its zoom at the first start (the project's viewstate_zoom)
EMPTY_X = 1050  # x in the timeline, right of every clip: track rows and the empty area differ in colour
EMPTY_COLOUR = (33, 36, 51)
RATE = 44100
JOB_WRAPPER = """#!/bin/sh
# The bundle's command in this test: clapsep's job, its folder kept (Audacity's effect removes it).
# It notes its folder in {base}/started, and while {base}/hold exists it waits before starting clapsep:
# a job that lasts as long as a test needs (the tiny model separates a minute of audio in half a second).
[ -e {base}/fail ] && export CLAPSEP_HOME={base}/no-store
echo "$1" >> {base}/started
while [ -e {base}/hold ]; do sleep 0.1; done
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

    def open(self, path: str, log: str) -> None:
        """Start Xvfb and Audacity 4 with the audio file ``path`` (inside the root, its output to
        ``log``), and leave its "Getting started" window (three pages: Next, Next, Next)."""
        self.sh(f"Xvfb {DISPLAY} -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 & sleep 1; "
                f"audacity {path} >{log} 2>&1 & echo started")
        self.wait_window(f"^{Path(path).stem}.* - Audacity", 120)
        [welcome] = self.wait_window("^Getting started$", 30)
        for _ in range(3):
            self.click_from_corner(welcome, 79, 23)
            time.sleep(1)
        self.wait_window("^Getting started$", 10, gone=True)

    def select(self, start: float, end: float) -> None:
        """Drag over the first track from ``start`` to ``end`` seconds (Audacity keeps what the
        pixels say: the job's start and end are the selection)."""
        x0, x1 = (round(ZERO_X + t * PX_PER_SECOND) for t in (start, end))
        self.sh(f"xdotool mousemove {x0} {TRACK_ROW} mousedown 1 mousemove {x0 + 20} {TRACK_ROW} "
                f"mousemove {x1} {TRACK_ROW} mouseup 1")
        time.sleep(0.5)

    def effect(self, menu: tuple[int, int], steps: list[tuple[int, int]], title: str) -> None:
        """Open ``menu``, move along ``steps`` (the last one the entry), click it, then Apply in
        the effect's dialog, titled ``title``."""
        self.sh(f"xdotool mousemove {menu[0]} {menu[1]} click 1")
        time.sleep(1)
        for x, y in steps:  # along the menus, as a hand moves, so no submenu closes on the way
            self.sh(f"xdotool mousemove {x} {y}")
            time.sleep(0.6)
        self.shot("menu")
        self.sh("xdotool click 1")
        [dialog] = self.wait_window(f"^{title}$", 15)
        self.shot("dialog")
        self.click_from_corner(dialog, 57, 32)  # Apply

    def _clapsep_entry(self, item: tuple[int, int]) -> list[tuple[int, int]]:
        return [EXTENSION_ITEM, (EXTENSION_ITEM[0] + 160, EXTENSION_ITEM[1]), CLAPSEP_ITEM,
                (EXTRACT_DOG_ITEM[0] - 110, CLAPSEP_ITEM[1]), item]

    def extract_dog(self) -> None:
        """Effect > Extension > clapsep > Extract: dog, then Apply in its dialog."""
        self.effect(EFFECT_MENU, self._clapsep_entry(EXTRACT_DOG_ITEM), "Extract: dog")

    def remove_dog(self) -> None:
        """Effect > Extension > clapsep > Remove: dog, then Apply in its dialog."""
        self.effect(EFFECT_MENU, self._clapsep_entry(REMOVE_DOG_ITEM), "Remove: dog")

    def find_dog(self) -> None:
        """Analyze > Extension > clapsep > Find: dog, then Apply in its dialog (its Threshold as it is)."""
        steps = [ANALYZE_EXTENSION_ITEM, (ANALYZE_EXTENSION_ITEM[0] + 110, ANALYZE_EXTENSION_ITEM[1]),
                 ANALYZE_CLAPSEP_ITEM, (FIND_DOG_ITEM[0] - 60, ANALYZE_CLAPSEP_ITEM[1]), FIND_DOG_ITEM]
        self.effect(ANALYZE_MENU, steps, "Find: dog")

    def progress(self, seconds: float = 15) -> str:
        """The progress window Audacity shows while an effect's job runs ("Applying …", a bar and
        Cancel): a window named "Audacity"."""
        return self.wait_window("^Audacity$", seconds)[0]

    def cancel(self) -> None:
        """Click Cancel in the progress window."""
        self.click_from_corner(self.progress(), 83, 34)

    def alive(self) -> bool:
        """Audacity's process runs (Audacity 4's is called ``main``) and its main window is there."""
        names = []
        for pid in self.root.processes():
            with contextlib.suppress(OSError):
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        return "main" in names and bool(self.windows(" - Audacity"))

    @contextlib.contextmanager
    def kept_on_failure(self, log: Path) -> Iterator[None]:
        """On any failure inside: a last screenshot, and where the screenshots are and the end of
        Audacity's ``log`` printed."""
        try:
            yield
        except BaseException:
            try:
                self.shot("failure")
            finally:
                print(f"screenshots kept in {self.shots}; Audacity's log: "
                      f"{log.read_text(errors='replace')[-1500:] if log.exists() else 'none'}")
            raise


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

    def project(self) -> Element:
        """The project as it is now (the ``project`` element of the autosaved document)."""
        import sqlite3

        [path] = self.folder.glob("*.aup4unsaved")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            names, doc = db.execute("select dict, doc from autosave").fetchone()
        [project] = parse_document(names, doc).children
        return project

    def tracks(self) -> list[Element]:
        """The project's tracks, in order (``wavetrack``, ``labeltrack`` ...)."""
        return [e for e in self.project().children if e.tag.endswith("track")]

    def audio(self, name: str) -> Any:
        """The samples of the mono 32-bit float audio track ``name`` from 0 s to its last clip's end
        (float32; silence between clips), from its clips' blocks, offsets and trims."""
        import numpy as np

        [track] = [t for t in self.tracks() if t.tag == "wavetrack" and t.attrs["name"] == name]
        rate = track.attrs["rate"]
        samples = dict(self.read()[1])
        placed = []
        for clip in track.find("waveclip"):
            [sequence] = clip.find("sequence")
            data = np.frombuffer(b"".join(samples[b.attrs["blockid"]] for b in sequence.find("waveblock")), "<f4")
            assert data.size == sequence.attrs["numsamples"], (name, clip.attrs)
            left, right = round(clip.attrs["trimLeft"] * rate), round(clip.attrs["trimRight"] * rate)
            placed.append((round((clip.attrs["offset"] + clip.attrs["trimLeft"]) * rate), data[left:data.size - right]))
        out = np.zeros(max(first + data.size for first, data in placed), "float32")
        for first, data in placed:
            out[first:first + data.size] = data
        return out

    def labels(self, name: str) -> list[tuple[float, float, str]]:
        """The labels of the label track ``name``: (start, end, text), in order."""
        [track] = [t for t in self.tracks() if t.tag == "labeltrack" and t.attrs["name"] == name]
        return [(label.attrs["t"], label.attrs["t1"], label.attrs["title"]) for label in track.find("label")]


@dataclass
class Element:
    tag: str
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list[Element] = field(default_factory=list)

    def find(self, tag: str) -> list[Element]:
        return [child for child in self.children if child.tag == tag]


def parse_document(names_blob: bytes, doc: bytes) -> Element:
    """Audacity's binary project document (its ProjectSerializer: tags and attributes by name id,
    the names in ``names_blob``; strings UTF-32) as a tree under an element with no tag."""
    names: dict[int, str] = {}
    i = 0
    while i < len(names_blob):
        kind, i = names_blob[i], i + 1
        if kind == 0:  # the character size
            i += 1
            continue
        assert kind == 15, f"unknown name record {kind}"
        ident, size = struct.unpack_from("<HH", names_blob, i)
        names[ident] = names_blob[i + 4:i + 4 + size].decode("utf-32-le")
        i += 4 + size
    top = Element("")
    stack, i = [top], 0
    numbers = {4: ("<i", 4), 6: ("<i", 4), 8: ("<i", 4), 7: ("<q", 8), 9: ("<f", 8), 10: ("<d", 12)}
    while i < len(doc):
        kind = doc[i]
        if kind in (11, 12):  # data, raw text (the XML header)
            (size,) = struct.unpack_from("<i", doc, i + 1)
            i += 5 + size
            continue
        name = names[struct.unpack_from("<H", doc, i + 1)[0]]
        i += 3
        if kind == 1:
            stack[-1].children.append(Element(name))
            stack.append(stack[-1].children[-1])
        elif kind == 2:
            assert stack.pop().tag == name
        elif kind == 3:
            (size,) = struct.unpack_from("<i", doc, i)
            stack[-1].attrs[name] = doc[i + 4:i + 4 + size].decode("utf-32-le")
            i += 4 + size
        elif kind == 5:
            stack[-1].attrs[name] = bool(doc[i])
            i += 1
        elif kind in numbers:  # float and double are followed by their digits (an int)
            form, size = numbers[kind]
            stack[-1].attrs[name] = struct.unpack_from(form, doc, i)[0]
            i += size
        else:
            raise ValueError(f"unknown field type {kind} at {i - 3}")
    return top


