"""Time to build each full-size part and load its weights: a plain build (random initialisation,
then load) against the store's build with its weights on the meta device (then load with
``assign=True``), both in this one process, alternating, so load on the machine hits both alike.

    python benchmarks/part_loading.py --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from clapsep_cli.network.architecture import RELEASED  # noqa: E402
from clapsep_cli.network.encoders import AudioEncoder, TextEncoder  # noqa: E402
from clapsep_cli.network.fast_build import check_materialised, weights_on_meta  # noqa: E402
from clapsep_cli.network.separation import SeparationNet  # noqa: E402


def plain(build: type[torch.nn.Module], state: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    module = build(RELEASED)
    module.load_state_dict(state, strict=True)
    return time.perf_counter() - start


def on_meta(build: type[torch.nn.Module], state: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    with weights_on_meta():
        module = build(RELEASED)
    module.load_state_dict(state, strict=True, assign=True)
    check_materialised(module)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    for build in (SeparationNet, TextEncoder, AudioEncoder):
        state = build(RELEASED).state_dict()
        times: dict[str, list[float]] = {"plain": [], "meta": []}
        for _ in range(args.repeat):
            for label, run in (("plain", plain), ("meta", on_meta)):
                gc.collect()
                times[label].append(run(build, {k: v.clone() for k, v in state.items()}))
        print(f"{build.__name__:13s} plain build+load {statistics.median(times['plain']):.3f} s, "
              f"meta build+load {statistics.median(times['meta']):.3f} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
