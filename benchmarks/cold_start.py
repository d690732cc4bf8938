"""Wall time of a cold `clapsep extract --preset dialogue` on a 10 s file, with and without the
query embedding cache (full-size architecture, random weights, CPU), beside `clapsep --help` and
`clapsep presets list`, which load no model and import no torch.

"Cold" means a new process each time (imports, model load, separation, write). Without the
cache the run also loads the CLAP text encoder and embeds the preset's texts; with it, it does
neither.

    python benchmarks/cold_start.py --out bench-out --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_source, make_store  # noqa: E402


def light_commands(env: dict[str, str], repeat: int) -> dict[str, list[float]]:
    """Whole-process wall times of the commands that start without the model."""
    rows: dict[str, list[float]] = {"`clapsep --help`": [], "`clapsep presets list`": []}
    for _ in range(repeat):
        for name, args in zip(rows, (["--help"], ["presets", "list"])):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "clapsep_cli", *args], env=env, capture_output=True, check=True)
            rows[name].append(time.perf_counter() - start)
    return rows


def run_once(source: Path, out_dir: Path, env: dict[str, str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "clapsep_cli", "extract", "--preset", "dialogue", str(source), "--out-dir",
           str(out_dir), "--overwrite", "--json", "--device", "cpu"]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_store(args.out / "store")
    env = {**os.environ, "CLAPSEP_HOME": str(args.out / "store"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    source = make_source(args.out / "ten_seconds.wav", 10 / 60)
    cache = args.out / "store" / "embeddings"
    rows = light_commands(env, args.repeat)
    rows.update({"extract, no cache": [], "extract, warm cache": []})
    for _ in range(args.repeat):
        shutil.rmtree(cache, ignore_errors=True)
        seconds, report = run_once(source, args.out, env)
        assert report["query_embeddings"]["text_encoder_loaded"]
        rows["extract, no cache"].append(seconds)
        seconds, report = run_once(source, args.out, env)
        assert not report["query_embeddings"]["text_encoder_loaded"]
        rows["extract, warm cache"].append(seconds)
    print(f"| command (extract: `--preset dialogue` on 10 s) | wall time (median of {args.repeat}) |\n|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} s |")


if __name__ == "__main__":
    main()
