"""Network throughput by batch size and precision: how many 10 s segments per second the
full-size released architecture (random weights) separates, STFT, masking and iSTFT included,
with nothing else around it. Use it to pick ``--batch-size`` for a device.

    python benchmarks/batch_sizes.py --device cuda --batch-sizes 1 2 4 8 16 32
    python benchmarks/batch_sizes.py --device cpu --batch-sizes 1 2 4 --precisions fp32 bf16

Prints a Markdown table; each row is the best of ``--repeat`` timed passes over ``--segments``
stereo segments, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_store  # noqa: E402
from clapsep_cli.engine.batch import separate_batch  # noqa: E402


def timed_pass(model: object, segments: torch.Tensor, condition: torch.Tensor, batch: int, device: torch.device
               ) -> float:

    start = time.perf_counter()
    for i in range(0, len(segments), batch):
        separate_batch(model, list(segments[i:i + batch]), condition)  # staged for the device inside
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--segments", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    make_store(args.out / "store")
    os.environ["CLAPSEP_HOME"] = str(args.out / "store")
    from clapsep_cli.models import store
    from clapsep_cli.models.loaded import ClapSep, resolve_device
    from clapsep_cli.network.architecture import SEGMENT_SAMPLES

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.manual_seed(0)
    segments = 0.1 * torch.randn(args.segments, 2, SEGMENT_SAMPLES)
    condition = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1).reshape(1, 1024)
    print(f"\n{name}, {args.segments} stereo 10 s segments\n\n| precision | batch | segments/s | audio s/s | "
          "peak GPU memory |\n|---|---|---|---|---|")
    for precision in args.precisions:
        model = ClapSep(store.get_model(store.DEFAULT_MODEL), device, precision)
        for batch in args.batch_sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timed_pass(model, segments[:batch], condition, batch, device)
            best = min(timed_pass(model, segments, condition, batch, device) for _ in range(args.repeat))
            memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "-"
            rate = args.segments / best
            print(f"| {precision} | {batch} | {rate:.1f} | {rate * 10:.0f} | {memory} |", flush=True)
        del model


if __name__ == "__main__":
    main()
