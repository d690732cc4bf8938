"""How much CPU an idle watcher costs Audacity: Audacity's own CPU time (from /proc) over a
window without a watcher, then with the watcher's polling loop at each poll interval given.

    python -m tests.audacity.idle_cpu [--seconds 30] [--poll 2 --poll 1]

It starts its own Audacity under Xvfb (as the end-to-end tests do) with a 60 s stereo track,
and runs the watcher's loop in a process of its own (no model: no request is ever made).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clapsep_cli.bridges.audacity.pipe import AudacityPipe
from tests.audacity import live
from tests.helpers import tone, write_audio


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def share(pid: int, seconds: float) -> float:
    """Percent of one core the process used over the next ``seconds``."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)


def watcher(poll: float) -> subprocess.Popen[bytes]:
    """The watcher's loop, as `clapsep audacity watch` runs it, in a process of its own."""
    code = ("import sys; from clapsep_cli.bridges.audacity.watcher import watch; "
            "from clapsep_cli.bridges.audacity.pipe import AudacityPipe\n"
            f"for line in watch(lambda: AudacityPipe(greet=False), lambda *args: [], poll={poll!r}):\n"
            "    print(line, flush=True)")
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll", type=float, action="append")
    args = parser.parse_args()
    reason = live.missing()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        audio = write_audio(Path(tmp) / "long.wav", tone(60.0, 44100, 2), 44100)
        session = live.start(Path(tmp) / "audacity")
        try:
            with AudacityPipe() as pipe:
                pipe.command(f'Import2: Filename="{audio}"')
            time.sleep(2.0)
            print(f"Audacity without a watcher: {share(session.process.pid, args.seconds):.1f}% of a core")
            for poll in args.poll or [2.0, 1.0]:
                process = watcher(poll)
                try:
                    time.sleep(2.0)
                    used = share(session.process.pid, args.seconds)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
                print(f"Audacity with a watcher polling every {poll:g} s: {used:.1f}% of a core")
            print(f"Audacity without a watcher: {share(session.process.pid, args.seconds):.1f}% of a core")
        finally:
            live.stop(session)


if __name__ == "__main__":
    main()
