"""The one atomic-write helper, including where the OS has no file locks (Windows)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clapsep_cli import atomic


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
