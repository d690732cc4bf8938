"""Stems of this checkout against another's (a commit before a refactor), sample for sample.

Both checkouts run `clapsep extract`/`remove` as processes on the same inputs with the same
full-size random-weight model (each side with its own empty query-embedding cache, so each
computes its own text and audio embeddings), in fp32 and bf16, and every stem's samples are
compared exactly (float WAV: its PEAK chunk holds a time stamp, so bytes differ run to run).

    git worktree add /tmp/base <commit> && (cd /tmp/base && python3 -m venv .venv && .venv/bin/pip install -e .)
    python benchmarks/same_stems.py --baseline /tmp/base --out bench-out/stems
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_store  # noqa: E402

# name -> (inputs: file -> (seconds, rate, channels), arguments after the command)
CASES: dict[str, tuple[dict[str, tuple[float, int, int]], list[str]]] = {
    "text, negative, stereo 44.1k": ({"a.wav": (12.0, 44100, 2)}, ["extract", "dog barking", "-n", "wind", "a.wav"]),
    "text, residual, mono 48k 25 s": ({"b.wav": (25.0, 48000, 1)}, ["extract", "speech", "--residual", "b.wav"]),
    "audio query, mono 32k": ({"c.wav": (7.0, 32000, 1), "ref.wav": (3.0, 22050, 1)},
                              ["extract", "--query-audio", "ref.wav", "c.wav"]),
    "remove, region": ({"d.wav": (20.0, 44100, 2)}, ["remove", "wind", "--start", "3.5", "--end", "14", "d.wav"]),
}


def write_input(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t)[:, None] * np.linspace(1.0, 0.5, channels)
    sf.write(str(path), (tone + 0.05 * rng.standard_normal((len(t), channels))).astype(np.float32), rate,
             subtype="PCM_16")


def run_side(python: Path, checkout: Path, store: Path, work: Path, precision: str) -> dict[str, list[Path]]:
    """Every case in ``work`` (a fresh folder) with ``python`` of ``checkout``; the stems each wrote."""
    env = {**os.environ, "CLAPSEP_HOME": str(store), "HF_HUB_OFFLINE": "1", "CLAPSEP_SERVER": "never"}
    written: dict[str, list[Path]] = {}
    for seed, (name, (inputs, args)) in enumerate(CASES.items()):
        folder = work / f"case{seed}"
        folder.mkdir(parents=True)
        for i, (file, spec) in enumerate(inputs.items()):
            write_input(folder / file, *spec, seed=seed * 10 + i)
        before = set(folder.iterdir())
        done = subprocess.run([str(python), "-m", "clapsep_cli", *args, "--device", "cpu", "--precision", precision,
                               "--bit-depth", "32f"], cwd=folder, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{checkout}: {name} failed:\n{done.stderr}")
        written[name] = sorted(set(folder.iterdir()) - before)
    return written


def fresh_store(model_store: Path, target: Path) -> Path:
    """``model_store``'s models (hard links) with no cached embeddings."""
    shutil.copytree(model_store / "models", target / "models", copy_function=os.link)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (with its .venv)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/stems"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    make_store(args.out / "model")
    sides = {"baseline": (args.baseline / ".venv" / "bin" / "python", args.baseline),
             "this": (Path(sys.executable), ROOT)}
    differing = 0
    for precision in ("fp32", "bf16"):
        stems = {}
        for side, (python, checkout) in sides.items():
            store = fresh_store(args.out / "model", args.out / side / precision / "store")
            stems[side] = run_side(python, checkout, store, args.out / side / precision / "work", precision)
        for name in CASES:
            base, this = stems["baseline"][name], stems["this"][name]
            assert [p.name for p in base] == [p.name for p in this], (name, base, this)
            for a, b in zip(base, this):
                x, y = sf.read(str(a), dtype="float32")[0], sf.read(str(b), dtype="float32")[0]
                same = x.shape == y.shape and np.array_equal(x, y)
                differing += not same
                detail = "identical" if same else f"DIFFERENT (max |diff| {np.max(np.abs(x - y)):.3g})"
                print(f"{precision}  {name:32s} {a.name:40s} {x.shape} {detail}")
    print(f"{differing} stem(s) differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
