"""Click-to-stem latency with and without the warm service (`clapsep serve`), on the CPU, in one run.

Each figure is the wall time of a whole client process, as an editor or a script starts it:
  - `clapsep extract` of a 5 s stereo region (20-25 s of a 60 s file), and of the whole 60 s file;
  - REAPER's "describe a sound" action on one 5 s item, run by the tests' fake REAPER
    (tests/reaper/run.lua under lua5.4), from the click until the stem is on its track.
Cold: `--server never` (CLAPSEP_SERVER=never for the action): the process imports torch, loads
the model and separates. Warm: a service is up and has served one job; the client hands its job
over. The query's embedding is cached for both (the warm-up run writes it), so neither loads
the text encoder. The model is the full-size architecture at random weights (`--tiny`: the
tests' tiny one, for a smoke run).

    python benchmarks/warm_latency.py --out bench-out --repeat 5
    python benchmarks/warm_latency.py --out bench-out --repeat 5 --audacity --baseline /tmp/before
    python benchmarks/warm_latency.py --out bench-out --repeat 5 --audacity --audacity4   # as root

--audacity4: Audacity 4.0.1 in the Debian root (testbed/debian_unstable.sh), warm only, from the
click on Apply until the track is there (Audacity's progress window closes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster import make_tiny_store  # noqa: E402
from benchmarks.throughput import QUERY, make_source, make_store  # noqa: E402
from clapsep_cli.bridges.reaper.lua import lua_literal  # noqa: E402
from clapsep_cli.bridges.reaper.setup import ASK_FILE  # noqa: E402

HARNESS = ROOT / "tests" / "reaper" / "run.lua"  # the fake REAPER the tests drive the actions with


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    if cmd[0] == "lua5.4":  # the fake REAPER: the action must have put the stem on a new track
        recorded = json.loads(Path(cmd[-1]).read_text(encoding="utf-8"))
        if recorded["script_errors"] or recorded["timed_out"] or len(recorded["tracks"]) != 2:
            raise SystemExit(f"the REAPER action failed: {recorded['script_errors'] or recorded['messages']}")
    return wall


def extract(source: Path, out: Path, server: str, region: bool) -> list[str]:
    return [sys.executable, "-m", "clapsep_cli", "extract", QUERY, str(source), "--out-dir", str(out), "--overwrite",
            "--device", "cpu", "--server", server, *(["--start", "20", "--end", "25"] if region else [])]


def reaper_action(work: Path, source: Path, env: dict[str, str]) -> Callable[[str], list[str]]:
    """Install the actions; a function giving the command that clicks the free-text one on one
    5 s item (20-25 s of ``source``) with CLAPSEP_SERVER set as given."""
    resource = work / "reaper"
    resource.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "clapsep_cli", "reaper", "install", "--resource-path", str(resource)],
                   env=env, check=True, capture_output=True)
    bare = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "XDG_RUNTIME_DIR": env["XDG_RUNTIME_DIR"]}
    take = {"file": str(source), "type": "WAVE", "source_length": 60.0, "stretch_markers": 0,
            "values": {"D_STARTOFFS": 20.0}}
    clicks = 0

    def click(server: str) -> list[str]:
        nonlocal clicks
        clicks += 1
        scenario = {"os": "Other", "resource": str(resource), "project_path": str(work / f"project{clicks}"),
                    "process_log": str(work / "processes.log"), "child_env": {**bare, "CLAPSEP_SERVER": server},
                    "time_limit": 600, "answer": QUERY,
                    "tracks": [{"name": "Dialog", "items": [{"position": 0.0, "length": 5.0, "selected": True,
                                                              "loop": False, "take": take}]}]}
        spec = work / f"scenario{clicks}.lua"
        spec.write_text("return " + lua_literal(scenario) + "\n", encoding="utf-8")
        return ["lua5.4", str(HARNESS), str(spec), str(resource / "Scripts" / "clapsep" / ASK_FILE),
                str(work / f"recorded{clicks}.json")]

    return click


def audacity_extract(checkout: Path, server: str) -> list[str]:
    return [str(checkout / ".venv" / "bin" / "python"), "-m", "clapsep_cli", "audacity", "extract", QUERY,
            "--device", "cpu", "--server", server]


def audacity_rows(args: argparse.Namespace, store: Path, source: Path) -> dict[str, tuple[float, float]]:
    """The Audacity cases, for each checkout in turn: (cold, warm) medians per row."""
    from clapsep_cli.bridges.audacity import project
    from clapsep_cli.bridges.audacity.pipe import AudacityPipe
    from testbed import live_audacity

    def select(start: float, end: float) -> None:
        """Only the source track left, the range selected on it."""
        with AudacityPipe() as pipe:
            count = len(project.tracks(pipe))
            if count > 1:
                project.select_tracks(pipe, list(range(1, count)), count)
                pipe.command("RemoveTracks:")
            pipe.command(f"SelectTime: Start={start} End={end}")
            pipe.command("SelectTracks: Track=0 TrackCount=1 Mode=Set")

    reason = live_audacity.missing()
    if reason:
        raise SystemExit(f"--audacity: {reason}")
    checkouts = {"this checkout": ROOT, **({f"baseline {args.baseline}": args.baseline} if args.baseline else {})}
    rows = {}
    root = Path(tempfile.mkdtemp(prefix="cs-audacity-", dir="/tmp"))
    live = live_audacity.start(root)
    try:
        with AudacityPipe() as pipe:
            pipe.command(f'Import2: Filename="{source}"')
        for label, checkout in checkouts.items():
            runtime = Path(tempfile.mkdtemp(prefix="cs-bench-", dir="/tmp"))
            env = {**os.environ, "CLAPSEP_HOME": str(store), "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1",
                   "XDG_RUNTIME_DIR": str(runtime)}
            env.pop("CLAPSEP_SERVER", None)
            python = str(checkout / ".venv" / "bin" / "python")
            serve = subprocess.Popen([python, "-m", "clapsep_cli", "serve"], env=env, stderr=subprocess.DEVNULL)
            try:
                select(20, 25)
                timed(audacity_extract(checkout, "require"), env)  # the service's first job loads the model
                for name, (start, end) in {"5 s selection": (20, 25), "60 s selection": (0, 60)}.items():
                    times = {}
                    for server in ("never", "require"):
                        times[server] = []
                        for _ in range(args.repeat):
                            select(start, end)
                            times[server].append(timed(audacity_extract(checkout, server), env))
                    rows[f"Audacity, {name} (`clapsep audacity extract`), {label}"] = (
                        statistics.median(times["never"]), statistics.median(times["require"]))
            finally:
                subprocess.run([python, "-m", "clapsep_cli", "serve", "--stop"], env=env, capture_output=True)
                serve.wait(timeout=60)
                shutil.rmtree(runtime, ignore_errors=True)
    finally:
        live_audacity.stop(live)
        shutil.rmtree(root, ignore_errors=True)
    return rows


def audacity4_rows(args: argparse.Namespace, store: Path, source: Path) -> dict[str, tuple[float | None, float]]:
    """Audacity 4.0.1 in the Debian root, set up as tests/test_audacity4_e2e.py does: from the click
    on Apply (Effect > Extension > clapsep > Extract: dog) until the project's database holds the new
    track's audio and Audacity's progress window has closed, the warm service serving: the effect's
    first job starts it and loads the model (not timed). Only warm: Audacity's environment is fixed
    when it starts."""
    from clapsep_cli.bridges.audacity4 import setup as a4setup
    from testbed import live_audacity4 as a4

    reason = a4.usable() or (None if a4.outside_usr(sys.base_prefix) else "needs a Python installed outside /usr")
    if reason:
        raise SystemExit(f"--audacity4: {reason}")
    base = a4.ROOT / "srv/clapsep-a4-e2e"
    shutil.rmtree(base, ignore_errors=True)
    (base / "run").mkdir(parents=True, mode=0o700)
    home = a4.ROOT / a4.HOME.lstrip("/")
    job = [str(Path(sys.prefix) / "bin" / "python"), "-m", "clapsep_cli.bridges.audacity4.job"]
    a4setup.install_bundle(["dog"], home / ".local/share/Audacity/Audacity4/extensions", command=job)
    work = Path(tempfile.mkdtemp(prefix="cs-a4-", dir="/tmp"))
    root = a4.Root(work, shared=[*a4.SHARED, str(args.out.resolve())])
    desk = a4.Desktop(root, work / "shots", {"PYTHONPATH": str(ROOT), "CLAPSEP_HOME": str(store.resolve()),
                                             "HF_HUB_OFFLINE": "1"})
    autosave = a4.Autosave(home)

    def select_5s() -> None:
        desk.select(20, 25)

    def select_all() -> None:
        desk.sh("xdotool mousemove 130 700 click 1 && sleep 0.3 && xdotool key ctrl+a")

    def click_to_stem(select: Callable[[], None]) -> float:
        select()
        time.sleep(0.5)
        newest = max(block for block, _ in autosave.read()[1])  # the effect's audio gets higher ids
        desk.extract_dog()
        clicked = time.perf_counter()
        # Done: the project's database holds new audio (Audacity writes it when it applies the
        # effect's edit) and the progress window has closed.
        def done() -> bool:
            if max(block for block, _ in autosave.read()[1]) <= newest:
                return False
            return not root.run("xdotool search --onlyvisible --name '^Audacity$'", env=desk.env).stdout.strip()

        while not done():
            if time.perf_counter() - clicked > 600:
                raise SystemExit(f"--audacity4: no stem after 600 s (screenshots: {desk.shots})")
            time.sleep(0.05)
        took = time.perf_counter() - clicked
        desk.sh("xdotool mousemove 130 700 click 1 && sleep 0.3 && xdotool key ctrl+z")  # the track goes
        time.sleep(1.5)
        return took

    rows: dict[str, tuple[float | None, float]] = {}
    try:
        desk.open(str(source.resolve()), "/srv/clapsep-a4-e2e/audacity.log")
        click_to_stem(select_5s)  # starts the service, which loads the model
        for name, select in {"5 s selection (20-25 s)": select_5s, "60 s selection (all)": select_all}.items():
            times = [click_to_stem(select) for _ in range(args.repeat)]
            rows[f"Audacity 4 (Effect > Extension > clapsep > Extract: dog), {name}"] = (None, statistics.median(times))
    finally:
        root.close()
        shutil.rmtree(base, ignore_errors=True)
        print(f"Audacity 4 screenshots: {desk.shots}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the full size")
    parser.add_argument("--audacity", action="store_true", help="the Audacity cases only (real Audacity, Xvfb)")
    parser.add_argument("--baseline", type=Path, help="with --audacity: another checkout to time too (DIR/.venv)")
    parser.add_argument("--audacity4", action="store_true",
                        help="Audacity 4.0.1 in the Debian root (as root; tests/test_audacity4_e2e.py's set-up), warm")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / ("store-tiny" if args.tiny else "store")
    (make_tiny_store if args.tiny else make_store)(store)
    source = make_source(args.out / "sixty_seconds.wav", 1.0)
    if args.audacity or args.audacity4:
        rows = audacity_rows(args, store, source) if args.audacity else {}
        print_rows(args, {**rows, **(audacity4_rows(args, store, source) if args.audacity4 else {})}, None)
        return
    runtime = Path(tempfile.mkdtemp(prefix="cs-bench-", dir="/tmp"))  # this run's own service
    env = {**os.environ, "CLAPSEP_HOME": str(store), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("CLAPSEP_SERVER", None)
    out = args.out / "warm-latency"
    click = reaper_action(args.out, source, env)
    cases = {"5 s region (`extract --start 20 --end 25`)": lambda server: extract(source, out, server, True),
             "60 s file (`extract`)": lambda server: extract(source, out, server, False),
             "REAPER action, one 5 s item (fake REAPER)": lambda server: click(server)}
    try:
        timed(extract(source, out, "never", True), env)  # caches the query's embedding
        serve = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "serve"], env=env, stderr=subprocess.DEVNULL)
        timed(extract(source, out, "require", True), env)  # the service's first job loads the model
        rows = {}
        for name, command in cases.items():
            cold = [timed(command("never"), env) for _ in range(args.repeat)]
            warm = [timed(command("auto" if "REAPER" not in name else "require"), env) for _ in range(args.repeat)]
            rows[name] = (statistics.median(cold), statistics.median(warm))
        status = json.loads(subprocess.run([sys.executable, "-m", "clapsep_cli", "serve", "--status", "--json"],
                                           env=env, capture_output=True, text=True, check=True).stdout)
    finally:
        subprocess.run([sys.executable, "-m", "clapsep_cli", "serve", "--stop"], env=env, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)
    serve.wait(timeout=60)
    print_rows(args, rows, status["rss_bytes"])


def print_rows(args: argparse.Namespace, rows: dict[str, tuple[float | None, float]], rss: int | None) -> None:
    memory = f"; service resident memory {rss / 2**20:.0f} MiB" if rss is not None else ""
    print(f"{'tiny' if args.tiny else 'full-size'} model, CPU ({os.cpu_count()} cores), median of {args.repeat} "
          f"whole client processes{memory}")
    print("| click-to-stem | cold (`--server never`) | warm (service up) | speed-up |")
    print("|---|---|---|---|")
    for name, (cold, warm) in rows.items():
        if cold is None:
            print(f"| {name} | - | {warm:.2f} s | - |")
        else:
            print(f"| {name} | {cold:.2f} s | {warm:.2f} s | {cold / warm:.1f}x |")


if __name__ == "__main__":
    main()
