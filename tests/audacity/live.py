"""The real Audacity for a test module: started once (testbed/live_audacity.py), skipped where
none can run, except under CI=true, where that is a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from clapsep_cli.bridges.audacity.pipe import PIPE_DIR_ENV
from testbed.live_audacity import LiveAudacity, missing, start, stop

__all__ = ["LiveAudacity", "session"]


def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAudacity]:
    """A live Audacity for a module's tests (a fixture's body): skipped where none can run,
    failed instead under CI=true (where it must), stopped at the end."""
    if os.environ.get(PIPE_DIR_ENV):
        pytest.fail(f"unset {PIPE_DIR_ENV}: these tests talk to the real Audacity's pipes")
    reason = missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and the Audacity end-to-end tests cannot run: {reason}")
        pytest.skip(reason)
    live = start(tmp_path_factory.mktemp("audacity"))
    try:
        yield live
    finally:
        stop(live)
