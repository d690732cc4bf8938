"""Throughput and peak memory of `clapsep extract` against a naive baseline.

Full-size released architecture with random weights, on stereo 44.1 kHz files of the given
lengths. Each run is a separate process, so its peak RSS is its own.

* ours: `clapsep extract` (streaming engine) at overlap 0 and at the default overlap;
* baseline: what the released Space does: load the whole file as 32 kHz mono, pad to a
  multiple of 10 s, run hard 10 s chunks one at a time through the official forward path
  (laion-clap's HTS-AT with forward hooks, unmerged LoRA, conv STFT/ISTFT), concatenate, write.

    python benchmarks/throughput.py --minutes 1 10 60 --out bench-out

Prints a Markdown table; `--json FILE` saves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE, CHANNELS = 44100, 2
QUERY = "dog barking"


def make_source(path: Path, minutes: float) -> Path:
    """Stereo 44.1 kHz 16-bit test audio, written block by block."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(str(path), "w", RATE, CHANNELS, subtype="PCM_16") as f:
        for start in range(0, total, RATE * 10):
            n = min(RATE * 10, total - start)
            t = (start + np.arange(n)) / RATE
            tone = 0.2 * np.sin(2 * np.pi * 440 * t)[:, None] * np.array([1.0, 0.6])
            f.write((tone + 0.05 * rng.standard_normal((n, CHANNELS))).astype(np.float32))
    return path


def make_store(root: Path) -> None:
    """A store with a full-size random-weight model and the query's embedding cached."""
    from clapsep_cli import store
    from clapsep_cli.config import RELEASED
    from clapsep_cli.install import write_model
    from clapsep_cli.query_encoder import AudioEncoder, TextEncoder
    from clapsep_cli.separator import Separator
    from tests.official import write_tokenizer

    os.environ["CLAPSEP_HOME"] = str(root)
    if (root / "models" / store.DEFAULT_MODEL).exists():
        return
    torch.manual_seed(0)
    parts = {"separator": Separator(RELEASED).state_dict(), "text": TextEncoder(RELEASED).state_dict(),
             "audio": AudioEncoder(RELEASED).state_dict()}
    with tempfile.TemporaryDirectory() as tok:
        write_model(store.DEFAULT_MODEL, parts, RELEASED, write_tokenizer(Path(tok)), False,
                    {"origin": "benchmark (random weights)"})


def spawn(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd`` and read its peak RSS from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024, out


def ours(source: Path, out_dir: Path, overlap: float, precision: str, env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "clapsep_cli", "extract", QUERY, str(source), "--out-dir", str(out_dir),
           "--overwrite", "--json", "--device", "cpu", "--overlap", str(overlap), "--precision", precision]
    wall, peak, out = spawn(cmd, env)
    result = json.loads(out)["results"][0]
    return {"wall_s": wall, "process_s": result["processing_seconds"], "peak_mib": peak}


def baseline(source: Path, out_dir: Path, env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--baseline-worker", str(source), str(out_dir / "baseline.wav")]
    wall, peak, out = spawn(cmd, env)
    return {"wall_s": wall, "process_s": float(out.strip()), "peak_mib": peak}


def baseline_worker(source: Path, target: Path) -> None:
    """The naive pipeline; prints its processing seconds (after model construction)."""
    from clapsep_cli.config import RELEASED, SEGMENT_SAMPLES
    from clapsep_cli.dsp import SincResampler
    from clapsep_cli.separator import Separator
    from tests.official import OfficialPath, random_clapsep_training_state

    torch.manual_seed(0)
    clap = {k: v for k, v in Separator(RELEASED).state_dict().items() if k.startswith("audio_branch.")}
    path = OfficialPath(RELEASED, random_clapsep_training_state(RELEASED, clap))
    condition = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1).reshape(1, 1024)
    start = time.perf_counter()
    data, rate = sf.read(str(source), dtype="float32", always_2d=True)
    mono = SincResampler(rate, 32000)(torch.from_numpy(data.mean(axis=1)))
    padded = torch.nn.functional.pad(mono, (0, -len(mono) % SEGMENT_SAMPLES))
    chunks = [path(chunk[None], condition)[0] for chunk in padded.split(SEGMENT_SAMPLES)]
    out = torch.cat(chunks)[: len(mono)]
    sf.write(str(target), out.numpy(), 32000, subtype="PCM_16")
    print(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(*args.baseline_worker)
        return

    from clapsep_cli.engine import DEFAULT_OVERLAP

    args.out.mkdir(parents=True, exist_ok=True)
    make_store(args.out / "store")
    env = {**os.environ, "CLAPSEP_HOME": str(args.out / "store"), "PYTHONPATH": str(ROOT)}
    warm = make_source(args.out / "warmup.wav", 0.2)
    ours(warm, args.out, 0.0, "fp32", env)  # caches the query embedding
    rows = []
    for minutes in args.minutes:
        source = make_source(args.out / f"stereo44k_{minutes:g}min.wav", minutes)
        audio_s = minutes * 60
        runs = []
        for precision in args.precision:
            for overlap in (0.0, DEFAULT_OVERLAP):
                runs.append((f"clapsep {precision}, overlap {overlap:g}", ours(source, args.out, overlap, precision, env)))
        if not args.skip_baseline:
            runs.append(("baseline (hard 10 s chunks, official path, fp32)", baseline(source, args.out, env)))
        for name, r in runs:
            rows.append({"minutes": minutes, "pipeline": name, **r, "audio_s_per_s": audio_s / r["process_s"]})
            print(f"{minutes:g} min  {name}: {audio_s / r['process_s']:.1f} audio s/s, "
                  f"peak {r['peak_mib']:.0f} MiB, wall {r['wall_s']:.0f} s", flush=True)
    print("\n| audio | pipeline | audio s / s | peak RSS |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:g} min | {r['pipeline']} | {r['audio_s_per_s']:.1f} | {r['peak_mib']:.0f} MiB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
