"""The one atomic-write helper, including where the OS has no file locks (Windows)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clapsep_cli.audio import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    atomic.write_text(target, "first")
    with pytest.raises(RuntimeError), atomic.writing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_without_file_locks_writes_work_and_nothing_is_cleaned(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "fcntl", None)
    target = tmp_path / "stem.wav"
    atomic.write_text(target, "data")
    assert target.read_text() == "data"
    assert os.stat(target).st_mode & 0o777 == atomic.default_mode()
    dead = tmp_path / ".stem.wav.clapsep-999999999-abc.part"
    dead.write_text("left by a killed run")
    assert atomic.remove_stale(tmp_path) == [] and dead.exists()


@pytest.mark.skipif(atomic.fcntl is None, reason="no file locks here")
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
