"""The Audacity 4 extension in the real Audacity 4.0.1, under Xvfb, in the Debian unstable root that
testbed/debian_unstable.sh builds (marker e2e; needs root, for chroot and mounts).

test_audacity4_registers_the_bundles_effects: Audacity 4 registers the bundle's six effects at its
first start. test_extract_by_clicking_adds_the_stem_undo_removes_it_a_failure_changes_nothing drives
Audacity 4 as a user does (xdotool): opens a generated WAV (a tone and noise), drags a selection,
clicks Effect > Extension > clapsep > Extract: dog and Apply, with a tiny random-weight model in a
store in the root and this checkout's clapsep (bound read-only into the root) run by a venv the
testbed left there. It checks that the new track's samples, read from the project's autosave
database, equal the job's output, which equals `clapsep extract --start --end` over the range
Audacity read; that one Ctrl+Z removes the track; and that a failing job (no model installed) shows
Audacity's error dialog and leaves the project as it was. Screenshots of each step are kept in the
test's tmp folder (printed on failure).

Audacity 4 runs once per user: a second `audacity` hands off to a running one ("handoff acked by
existing Audacity4"), even one with another HOME, and exits; so no other Audacity 4 of this user may
run meanwhile. The root's processes run chrooted into a bind mount of the root at another path, in a mount
namespace of their own: testbed/debian_unstable.sh, when it runs, kills every process whose root is
the root's own path (testbed/live_audacity4.py holds the driving).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clapsep_cli.bridges.audacity4 import setup as a4setup
from testbed.live_audacity4 import (
    DISPLAY,
    HOME,
    JOB_WRAPPER,
    RATE,
    REPO,
    ROOT,
    TRACK_ROW,
    Autosave,
    Desktop,
    Root,
    outside_usr,
    usable,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    reason = usable()
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



def test_extract_by_clicking_adds_the_stem_undo_removes_it_a_failure_changes_nothing(
        root: Root, tiny_store: Path, tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    if not outside_usr(sys.base_prefix):
        pytest.skip(f"the jobs run this Python inside the root: it must be installed outside /usr, not "
                    f"{sys.base_prefix}")
    python = str(Path(sys.prefix) / "bin" / "python")
    base = "/srv/clapsep-a4-e2e"
    host_base = ROOT / base.lstrip("/")
    host_home = ROOT / HOME.lstrip("/")
    shutil.copytree(tiny_store, host_base / "store")
    (host_base / "jobs").mkdir()
    wrapper = host_base / "job.sh"
    wrapper.write_text(JOB_WRAPPER.format(base=base, python=python))
    a4setup.install_bundle(["dog"], host_home / ".local/share/Audacity/Audacity4/extensions",
                           command=["/bin/sh", f"{base}/job.sh"])
    seconds = np.arange(6 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * seconds)
            + 0.05 * np.random.default_rng(0).standard_normal(seconds.size)).astype("float32")
    sf.write(host_base / "tone.wav", tone, RATE, subtype="FLOAT")
    env = {"PYTHONPATH": str(REPO), "CLAPSEP_HOME": f"{base}/store", "CLAPSEP_SERVER": "never",
           "HF_HUB_OFFLINE": "1"}
    desk = Desktop(root, tmp_path / "shots", env)
    print(f"screenshots: {desk.shots}")
    desk.sh(f"Xvfb {DISPLAY} -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 & sleep 1; "
            f"audacity {base}/tone.wav >{base}/audacity.log 2>&1 & echo started")
    try:
        desk.wait_window("^tone.* - Audacity", 120)
        [welcome] = desk.wait_window("^Getting started$", 30)
        for _ in range(3):  # its three pages: Next, Next, Next
            desk.click_from_corner(welcome, 79, 23)
            time.sleep(1)
        desk.wait_window("^Getting started$", 10, gone=True)
        autosave = Autosave(host_home)
        doc, blocks = autosave.read()
        assert desk.tracks() == 1

        # Select about 1-3 s with the mouse, then Extract: dog.
        desk.sh(f"xdotool mousemove 320 {TRACK_ROW} mousedown 1 mousemove 340 {TRACK_ROW} "
                f"mousemove 367 {TRACK_ROW} mouseup 1")
        time.sleep(0.5)
        desk.extract_dog()
        deadline = time.monotonic() + 180
        while not (host_base / "jobs/index").exists():
            assert time.monotonic() < deadline, f"no job ran (screenshots: {desk.shots})"
            time.sleep(0.5)
        name, rc = (host_base / "jobs/index").read_text().split()
        assert rc == "0", (host_base / "jobs" / name / "job.log").read_text()[-2000:]
        desk.wait_tracks(2, 30)
        desk.shot("extracted")

        # What Audacity read is the selected range of the file; the job's stem is `clapsep extract`'s.
        job_folder = host_base / "jobs" / name
        job = json.loads((job_folder / "job.json").read_text())
        [source] = job["inputs"]
        first, frames = round(job["start"] * RATE), source["frames"]
        assert 0.5 < job["start"] < 1.5 and 2.5 < job["end"] < 3.5
        assert abs(frames - (job["end"] - job["start"]) * RATE) <= 1
        np.testing.assert_array_equal(np.fromfile(job_folder / "in0.f32", "<f4"), tone[first:first + frames])
        stem = np.fromfile(job_folder / "out0.f32", "<f4")
        assert stem.shape == (frames,) and np.abs(stem).max() > 0
        desk.sh(f"cd /tmp && {python} -m clapsep_cli extract -p dog --start {first / RATE!r} "
                f"--end {(first + frames) / RATE!r} --bit-depth 32f -o {base}/cli.wav {base}/tone.wav", timeout=300)
        cli, rate = sf.read(host_base / "cli.wav", dtype="float32")
        assert rate == RATE
        np.testing.assert_array_equal(cli, stem)

        # The project's new track holds exactly those samples: its blocks are the new ones.
        doc_after, blocks_after = autosave.read()
        assert "tone.dog".encode("utf-32-le") in doc_after and "tone.dog".encode("utf-32-le") not in doc
        new = [samples for block, samples in blocks_after if block > max(b for b, _ in blocks)]
        np.testing.assert_array_equal(np.frombuffer(b"".join(new), "<f4"), stem)

        # One Ctrl+Z removes the track.
        desk.sh("xdotool mousemove 130 700 click 1 && sleep 0.3 && xdotool key ctrl+z")
        desk.wait_tracks(1, 15)
        desk.shot("undone")

        # A failing job (no model installed): Audacity's error dialog with clapsep's line; nothing changes.
        doc_undone, blocks_undone = autosave.read()
        (host_base / "fail").touch()
        desk.extract_dog()
        deadline = time.monotonic() + 120
        while len((host_base / "jobs/index").read_text().split()) < 4:
            assert time.monotonic() < deadline, f"the failing job did not run (screenshots: {desk.shots})"
            time.sleep(0.5)
        assert (host_base / "jobs/index").read_text().split()[3] == "1"
        [error] = desk.wait_window("^Extract: dog$", 20)
        desk.shot("error")
        assert desk.tracks() == 1
        desk.click_from_corner(error, 83, 31)  # OK
        desk.wait_window("^Extract: dog$", 10, gone=True)
        assert desk.tracks() == 1
        assert autosave.read() == (doc_undone, blocks_undone)
    except BaseException:
        try:
            desk.shot("failure")
        finally:
            log = host_base / "audacity.log"
            print(f"screenshots kept in {desk.shots}; Audacity's log: "
                  f"{log.read_text(errors='replace')[-1500:] if log.exists() else 'none'}")
        raise
