"""Files per second of `clapsep extract --ray` on a Ray cluster on this machine against a local
`clapsep extract` of the same files: the cost of the cluster (start-up of the workers, one model
load per worker, shipping each file's plan), which on one machine's cores buys nothing.

The cluster is the tests' one (testbed/ray_cluster.py): ``--nodes`` node processes of ``--cpus``
CPUs each on 127.0.0.1, in a loopback-only network namespace when run as root; each worker takes
``--ray-cpus`` CPUs. Both runs are whole `clapsep` processes timed from start to exit, with the
full-size architecture at random weights (``--tiny``: the tests' tiny one, for a smoke run).

    python benchmarks/cluster.py                                  # 40 files of 30 s, 2 nodes of 1 CPU
    python benchmarks/cluster.py --nodes 2 --cpus 4 --ray-cpus 4  # on a machine with 8 free cores
    python benchmarks/cluster.py --tiny --files 6 --seconds 5     # a quick smoke run

Prints a Markdown table; ``--json FILE`` saves the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import QUERY, make_source, make_store  # noqa: E402
from testbed.ray_cluster import LocalCluster  # noqa: E402


def make_tiny_store(root: Path) -> None:
    """A store holding the tests' tiny random-weight model."""
    from clapsep_cli.models import install, store
    from clapsep_cli.network.architecture import TINY
    from testbed import official

    os.environ["CLAPSEP_HOME"] = str(root)
    if (root / "models" / store.DEFAULT_MODEL).exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        clap = official.random_clap_state(TINY, seed=0)
        training = official.random_clapsep_training_state(TINY, clap, seed=1)
        install.install(store.DEFAULT_MODEL, official.write_clap(Path(tmp) / "clap.pt", clap),
                        official.write_clapsep(Path(tmp) / "clapsep.ckpt", training, clap, 1),
                        official.write_tokenizer(Path(tmp) / "tok"), config=TINY)


def timed(cluster: LocalCluster, args: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one `clapsep` process (in the cluster's network namespace) and its report."""
    start = time.perf_counter()
    proc = cluster.popen([sys.executable, "-m", "clapsep_cli", *args, "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"clapsep {' '.join(args)} failed:\n{err}")
    return wall, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each node")
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs of each worker")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the full size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cluster")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    home = args.out / ("store-tiny" if args.tiny else "store")
    (make_tiny_store if args.tiny else make_store)(home)
    sources = args.out / f"sources-{args.files}x{args.seconds:g}"
    sources.mkdir(exist_ok=True)
    for i in range(args.files):
        make_source(sources / f"clip{i:04d}.wav", args.seconds / 60)

    env = {"CLAPSEP_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cluster = LocalCluster(nodes=args.nodes, cpus=args.cpus, env=env).start()
    rows = []
    try:
        runs = {"local": ["--device", "cpu"],
                "ray": ["--ray", cluster.address, "--ray-cpus", str(args.ray_cpus)]}
        for name, extra in runs.items():
            out = args.out / f"stems-{name}"
            shutil.rmtree(out, ignore_errors=True)
            wall, report = timed(cluster, ["extract", QUERY, str(sources), "--out-dir", str(out), *extra])
            assert [r["status"] for r in report["results"]] == ["ok"] * args.files
            rows.append({"run": name, "files": args.files, "audio_s": args.files * args.seconds, "wall_s": wall,
                         "files_per_s": args.files / wall, "model_load_s": report["timings"]["model_load_seconds"],
                         "workers": report.get("ray", {}).get("workers", 1)})
    finally:
        cluster.stop()

    local = rows[0]["files_per_s"]
    print(f"{args.files} files of {args.seconds:g} s, {'tiny' if args.tiny else 'full-size'} model; "
          f"cluster: {args.nodes} nodes of {args.cpus} CPUs, workers of {args.ray_cpus} CPUs\n")
    print("| run | workers | wall s | files/s | vs local | model load s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['workers']} | {r['wall_s']:.1f} | {r['files_per_s']:.2f} | "
              f"{r['files_per_s'] / local:.2f}x | {r['model_load_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
