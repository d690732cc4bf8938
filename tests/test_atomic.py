"""The one atomic-write helper: temporary files, their locks, and removing what dead writers left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import Timeout

from clapsep_cli.audio import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    atomic.write_text(target, "first")
    with pytest.raises(RuntimeError), atomic.writing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_a_temp_file_is_guarded_by_a_lock_beside_it_and_both_go_when_it_is_published(tmp_path: Path) -> None:
    target = tmp_path / "stem.wav"
    tmp = atomic.TempFile(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.path.name, atomic.lock_of(tmp.path).name]
    assert atomic.TEMP_RE.match(tmp.path.name) and tmp.path.read_bytes() == b""
    assert os.stat(tmp.path).st_mode & 0o777 == atomic.default_mode()
    with pytest.raises(Timeout):  # held, even against another lock of the same file in this process
        atomic.file_lock(atomic.lock_of(tmp.path)).acquire(blocking=False)
    tmp.path.write_text("data")
    tmp.publish(overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["stem.wav"] and target.read_text() == "data"


def test_the_temp_files_of_a_killed_writer_go_with_their_locks_and_nothing_else(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from clapsep_cli.audio import atomic; "
            "held = atomic.TempFile(Path(sys.argv[1])); print('ready', flush=True); time.sleep(120)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a.wav")], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert writer.stdout.readline().strip() == "ready"
        [part] = [p for p in tmp_path.iterdir() if atomic.TEMP_RE.match(p.name)]
        assert atomic.remove_abandoned(tmp_path / "a.wav") == [] and part.exists()  # its writer holds it
    finally:
        writer.kill()
        writer.wait(timeout=30)
    orphan = tmp_path / f".b.wav.clapsep-{writer.pid}-x1.part.lock"  # its temporary file went, the lock not
    orphan.write_bytes(b"")
    unlocked = tmp_path / f".c.wav.clapsep-{writer.pid}-x2.part"  # never locked (an older clapsep's)
    unlocked.write_text("left")
    mine = tmp_path / f".d.wav.clapsep-{os.getpid()}-x3.part"  # this live process's: kept
    mine.write_text("mine")
    foreign = tmp_path / ".e.wav.1234.part"  # not ours
    foreign.write_text("theirs")
    assert sorted(atomic.remove_stale(tmp_path)) == sorted([part, unlocked])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, foreign.name])


def test_a_lock_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    part = tmp_path / ".a.wav.clapsep-999999999-x1.part"
    part.write_text("left")
    atomic.lock_of(part).symlink_to(victim)
    assert atomic.remove_stale(tmp_path) == []
    assert victim.read_text() == "precious" and part.exists()


def test_liveness_never_signals_a_process_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) ends the process on Windows: there the check must ask, not signal."""
    def no_signals(pid: int, sig: int) -> None:
        raise AssertionError("signalled a process")

    asked: list[int] = []
    monkeypatch.setattr(atomic, "_WINDOWS", True)
    monkeypatch.setattr(atomic.os, "kill", no_signals)
    monkeypatch.setattr(atomic, "_windows_alive", lambda pid: asked.append(pid) or False)
    assert atomic._alive(4242) is False and asked == [4242]


def test_a_pid_too_large_for_the_system_is_not_running() -> None:
    assert atomic._alive(10**30) is False


def test_abandoned_temp_files_of_a_destination_go_whoever_wrote_them(tmp_path: Path) -> None:
    """A writer on another machine has a pid that means nothing here: only its lock tells."""
    target = tmp_path / "a.wav"
    live_pid = tmp_path / f".a.wav.clapsep-{os.getpid()}-x1.part"  # this pid runs, but nobody holds the file
    live_pid.write_text("left by a worker elsewhere")
    other = tmp_path / f".b.wav.clapsep-{os.getpid()}-x2.part"
    other.write_text("another destination's")
    held = atomic.TempFile(target)  # a writer still at work
    try:
        assert atomic.remove_stale(tmp_path) == []  # the pids look alive
        assert atomic.remove_abandoned(target) == [live_pid]
        assert held.path.exists() and other.exists()
    finally:
        held.discard()
