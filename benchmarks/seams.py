"""How much overlap segments need: where estimates are unreliable, and what overlap costs.

Full-size architecture with random weights (the same store as throughput.py) on 60 s of
varied material (tones, noise bursts). Segments are taken half-overlapping, so every stretch is
estimated twice: once near one segment's edge, once well inside the other. Their disagreement
(dB relative to the stem), by distance from the nearer edge, shows how far into a segment its
estimate settles; the crossfade must keep the weight of that edge zone small. Also printed:
segments per minute at each overlap (the cost).

    python benchmarks/seams.py --out bench-out
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_store  # noqa: E402

RATE = 32000


def material(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.15 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    bursts = (rng.random(len(t)) < 2e-5).astype(float)
    x += np.convolve(bursts, rng.standard_normal(3000) * np.exp(-np.arange(3000) / 500), mode="same") * 0.3
    x += 0.02 * rng.standard_normal(len(t))
    return x.astype(np.float32)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    make_store(args.out / "store")
    os.environ["CLAPSEP_HOME"] = str(args.out / "store")
    from clapsep_cli.engine.options import EngineOptions
    from clapsep_cli.engine.segments import segment_count
    from clapsep_cli.models import store
    from clapsep_cli.models.loaded import ClapSep
    from clapsep_cli.network.architecture import SEGMENT_SAMPLES

    model = ClapSep(store.get_model(), torch.device("cpu"))
    x = material(args.seconds)
    print("| overlap | crossfade | segments per hour |\n|---|---|---|")
    for overlap in (0.0, 0.05, 0.1, 0.25, 0.5):
        options = EngineOptions(overlap=overlap)
        per_hour = segment_count(3600 * RATE, options)
        print(f"| {overlap:g} | {(SEGMENT_SAMPLES - options.hop) / RATE:.1f} s | {per_hour} |")

    from clapsep_cli.audio import dsp

    hop = SEGMENT_SAMPLES // 2
    starts = range(0, len(x) - SEGMENT_SAMPLES + 1, hop)
    segs = torch.from_numpy(np.stack([x[s : s + SEGMENT_SAMPLES, 0] for s in starts]))
    cond = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    spec = dsp.stft(segs)
    with torch.inference_mode():
        est = dsp.istft(spec * model.masks(segs, cond.reshape(1, -1).expand(len(segs), -1), spec), SEGMENT_SAMPLES)
    # In the shared stretch of segments k and k+1, position i is i samples after segment k+1's
    # start and hop - i before segment k's end: one estimate is near its edge, the other 5 s
    # inside its segment. Disagreement by distance from the nearer edge:
    bins = [(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.5)]
    distance = np.minimum(np.arange(hop), hop - np.arange(hop)) / RATE
    totals = np.zeros(len(bins))
    for k in range(len(segs) - 1):
        a, b = est[k, hop:].numpy(), est[k + 1, :hop].numpy()
        ref = np.mean(((a + b) / 2) ** 2)
        for j, (lo, hi) in enumerate(bins):
            sel = (distance >= lo) & (distance < hi)
            totals[j] += np.mean((a[sel] - b[sel]) ** 2) / ref
    print("\n| distance from segment edge | neighbour disagreement |\n|---|---|")
    for (lo, hi), total in zip(bins, totals):
        print(f"| {lo:g}-{hi:g} s | {10 * np.log10(total / (len(segs) - 1)):.1f} dB |")

if __name__ == "__main__":
    main()
