"""Throughput of clapsep against the released recipe, of the pipeline around the network, and
of many short clips against one long file. Every figure is printed beside its baseline from the
same run; full-size released architecture, random weights.

* ``default``: `clapsep extract` at its default settings (``--precision auto``, overlap 0.1)
  against the released recipe on the same stereo 44.1 kHz file (``--minutes``, default 1 and
  10): what the released Space does, load the whole file as 32 kHz mono, pad to a multiple of
  10 s, run hard 10 s chunks one at a time through the official forward path (laion-clap's
  HTS-AT with forward hooks, unmerged LoRA, conv STFT/ISTFT, fp32), write. Whole-process wall
  time, each run a separate process (its peak RSS is its own).
* ``free``: the pipeline around the network with a network that costs nothing (mask = 1):
  decode, resample to 32 kHz, segment, STFT/iSTFT, crossfade, resample back, encode, in real
  time factors, for stereo 44.1 kHz WAV and 32 kHz mono, with the read-ahead thread (the
  default where the network runs on a GPU) and without it (``prefetch=0``, everything in one
  thread: the default on the CPU).
* ``find``: `clapsep find` beside `clapsep extract`, both at default settings, on the same stereo
  44.1 kHz files (``--find-minutes``, default 10 and 60): whole process, peak RSS.
* ``clips``: a folder of short stereo clips (``--clips`` of ``--clip-seconds``) against one file
  of the same total length, both by one `clapsep extract` at default settings: one job, its
  files read ahead, on CUDA their segments sharing batches (see ``Batcher``).

    python benchmarks/throughput.py --out bench-out                      # all of it, on the CPU
    python benchmarks/throughput.py --device cuda --minutes 1 60         # on a GPU
    python benchmarks/throughput.py --only free --free-seconds 20        # a quick smoke run

Prints Markdown tables; ``--json FILE`` saves the rows.
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
from typing import Any

import numpy as np
import soundfile as sf
import torch

from clapsep_cli.audio.reader import probe, read_blocks
from clapsep_cli.audio.writer import StemWriter, choose_format, resolve_clip
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.stream import separate_stream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE, CHANNELS = 44100, 2
QUERY = "dog barking"


def make_source(path: Path, minutes: float, rate: int = RATE, channels: int = CHANNELS) -> Path:
    """16-bit test audio (a tone plus noise), written block by block."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, total, rate * 10):
            n = min(rate * 10, total - start)
            t = (start + np.arange(n)) / rate
            tone = 0.2 * np.sin(2 * np.pi * 440 * t)[:, None] * np.linspace(1.0, 0.6, channels)
            f.write((tone + 0.05 * rng.standard_normal((n, channels))).astype(np.float32))
    return path


def make_store(root: Path) -> None:
    """A store with a full-size random-weight model and the query's embedding cached."""
    from clapsep_cli.models import store
    from clapsep_cli.models.install import write_model
    from clapsep_cli.network.architecture import RELEASED
    from clapsep_cli.network.encoders import AudioEncoder, TextEncoder
    from clapsep_cli.network.separation import SeparationNet
    from testbed.official import write_tokenizer

    os.environ["CLAPSEP_HOME"] = str(root)
    if (root / "models" / store.DEFAULT_MODEL).exists():
        return
    torch.manual_seed(0)
    parts = {"separator": SeparationNet(RELEASED).state_dict(), "text": TextEncoder(RELEASED).state_dict(),
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


def ours(sources: list[Path], out_dir: Path, device: str, env: dict[str, str]) -> dict[str, Any]:
    """One `clapsep extract` at default settings over ``sources``."""
    cmd = [sys.executable, "-m", "clapsep_cli", "extract", QUERY, *map(str, sources), "--out-dir", str(out_dir),
           "--overwrite", "--json", "--device", device]
    wall, peak, out = spawn(cmd, env)
    report = json.loads(out)
    return {"wall_s": wall, "process_s": sum(r["processing_seconds"] for r in report["results"]), "peak_mib": peak,
            "precision": report["precision"]}


def finding(source: Path, device: str, env: dict[str, str]) -> dict[str, Any]:
    """One `clapsep find` at default settings on ``source``."""
    cmd = [sys.executable, "-m", "clapsep_cli", "find", QUERY, str(source), "--json", "--device", device]
    wall, peak, out = spawn(cmd, env)
    report = json.loads(out)
    return {"wall_s": wall, "process_s": report["results"][0]["processing_seconds"], "peak_mib": peak,
            "precision": report["precision"], "events": len(report["results"][0]["events"])}


def baseline(source: Path, out_dir: Path, device: str, env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--baseline-worker", str(source), str(out_dir / "baseline.wav"),
           "--device", device]
    wall, peak, out = spawn(cmd, env)
    return {"wall_s": wall, "process_s": float(out.strip()), "peak_mib": peak}


def baseline_worker(source: Path, target: Path, device: torch.device) -> None:
    """The naive pipeline on ``device``; prints its processing seconds (after model construction)."""
    from clapsep_cli.audio.dsp import SincResampler
    from clapsep_cli.network.architecture import RELEASED, SEGMENT_SAMPLES
    from clapsep_cli.network.separation import SeparationNet
    from testbed.official import OfficialPath, random_clapsep_training_state

    torch.manual_seed(0)
    clap = {k: v for k, v in SeparationNet(RELEASED).state_dict().items() if k.startswith("audio_branch.")}
    path = OfficialPath(RELEASED, random_clapsep_training_state(RELEASED, clap))
    for module in (path.encoder, path.decoder, path.stft, path.istft):
        module.to(device)
    condition = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1).reshape(1, 1024).to(device)
    start = time.perf_counter()
    data, rate = sf.read(str(source), dtype="float32", always_2d=True)
    mono = SincResampler(rate, 32000)(torch.from_numpy(data.mean(axis=1)))
    padded = torch.nn.functional.pad(mono, (0, -len(mono) % SEGMENT_SAMPLES))
    chunks = [path(chunk[None].to(device), condition)[0].cpu() for chunk in padded.split(SEGMENT_SAMPLES)]
    out = torch.cat(chunks)[: len(mono)]
    sf.write(str(target), out.numpy(), 32000, subtype="PCM_16")
    print(time.perf_counter() - start)


class FreeModel:
    """A network that costs nothing: every mask is 1."""

    def __init__(self, device: torch.device):
        self.device = device

    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return torch.ones(spec.shape, device=spec.device)


def free_pipeline(source: Path, target: Path, prefetch: int, device: torch.device) -> float:
    """Seconds to separate ``source`` with :class:`FreeModel`, from decoding to the written stem."""

    start = time.perf_counter()
    info = probe(source)
    fmt = choose_format(info)
    writer = StemWriter(target, info.rate, info.channels, fmt, resolve_clip(None, fmt), True)
    options = EngineOptions(prefetch=prefetch)
    for stem, _ in separate_stream(FreeModel(device), torch.zeros(1, 1024), read_blocks(info),
                                          info.rate, options):
        writer.write(stem)
    writer.commit()
    return time.perf_counter() - start


def run_default(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for minutes in args.minutes:
        source = make_source(args.out / f"stereo44k_{minutes:g}min.wav", minutes)
        mine = ours([source], args.out, args.device, env)
        rows.append({"case": f"{minutes:g} min stereo 44.1 kHz", "pipeline": f"clapsep defaults ({mine['precision']})",
                     "audio_s": minutes * 60, **mine})
        if not args.skip_baseline:
            rows.append({"case": f"{minutes:g} min stereo 44.1 kHz", "pipeline": "released recipe (fp32)",
                         "audio_s": minutes * 60, **baseline(source, args.out, args.device, env)})
    print("\n| audio | pipeline | whole process | audio s / s | peak RSS |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['pipeline']} | {r['wall_s']:.1f} s | {r['audio_s'] / r['wall_s']:.1f} | "
              f"{r['peak_mib']:.0f} MiB |")
    return rows


def run_find(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for minutes in args.find_minutes:
        source = make_source(args.out / f"stereo44k_{minutes:g}min.wav", minutes)
        case = f"{minutes:g} min stereo 44.1 kHz"
        mine = ours([source], args.out, args.device, env)
        rows.append({"case": case, "pipeline": f"clapsep extract ({mine['precision']})", "audio_s": minutes * 60,
                     **mine})
        found = finding(source, args.device, env)
        rows.append({"case": case, "pipeline": f"clapsep find ({found['precision']})", "audio_s": minutes * 60,
                     **found})
    print("\n| audio | command | whole process | processing | peak RSS |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['pipeline']} | {r['wall_s']:.1f} s | {r['process_s']:.1f} s | "
              f"{r['peak_mib']:.0f} MiB |")
    return rows


def run_free(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    minutes = args.free_seconds / 60
    sources = {"stereo 44.1 kHz WAV": make_source(args.out / f"free_stereo44k_{args.free_seconds:g}s.wav", minutes),
               "mono 32 kHz WAV": make_source(args.out / f"free_mono32k_{args.free_seconds:g}s.wav", minutes, 32000, 1)}
    free_pipeline(sources["mono 32 kHz WAV"], args.out / "free-warmup.wav", 0, device)  # first-call costs
    rows = []
    for name, source in sources.items():
        for label, prefetch in (("read-ahead thread (default on a GPU)", 2), ("one thread (default on the CPU)", 0)):
            times = [free_pipeline(source, args.out / "free-stem.wav", prefetch, device) for _ in range(args.repeat)]
            rows.append({"case": name, "pipeline": label, "audio_s": args.free_seconds, "process_s": min(times)})
    print(f"\n| free model (mask = 1), {args.free_seconds:g} s | pipeline | real time factor (best of "
          f"{args.repeat}) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['pipeline']} | {r['audio_s'] / r['process_s']:.0f}x |")
    return rows


def run_clips(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    folder = args.out / f"clips_{args.clips}x{args.clip_seconds:g}s"
    folder.mkdir(exist_ok=True)
    clips = [make_source(folder / f"clip{i:03d}.wav", args.clip_seconds / 60) for i in range(args.clips)]
    total = args.clips * args.clip_seconds
    long = make_source(args.out / f"stereo44k_{total:g}s.wav", total / 60)
    rows = [{"case": f"{args.clips} clips of {args.clip_seconds:g} s", "pipeline": "one extract over the folder",
             "audio_s": total, **ours(clips, args.out / "clips-out", args.device, env)},
            {"case": f"one file of {total:g} s", "pipeline": "one extract", "audio_s": total,
             **ours([long], args.out, args.device, env)}]
    print("\n| input (stereo 44.1 kHz) | run | processing | whole process |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['pipeline']} ({r['precision']}) | {r['process_s']:.1f} s | {r['wall_s']:.1f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["default", "free", "clips", "find"],
                        default=["default", "free", "clips", "find"])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--find-minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--free-seconds", type=float, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--clip-seconds", type=float, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(*args.baseline_worker, torch.device(args.device))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if "free" in args.only:
        rows += run_free(args)
    if {"default", "clips", "find"} & set(args.only):
        make_store(args.out / "store")
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "CLAPSEP_HOME": str(args.out / "store"), "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
        ours([make_source(args.out / "warmup.wav", 0.2)], args.out, args.device, env)  # caches the query embedding
        if "default" in args.only:
            rows += run_default(args, env)
        if "clips" in args.only:
            rows += run_clips(args, env)
        if "find" in args.only:
            rows += run_find(args, env)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
