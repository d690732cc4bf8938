"""`clapsep remove`: negative-only query versus source minus the extracted sound.

Uses the model trained by learning_check.py (run that first) on its held-out mixtures: for a
mixture of sounds A and B, "remove B" should leave A. Reported: SI-SDRi of what is left,
against A, for each method.

    python benchmarks/remove_methods.py --out bench-out/learning
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from clapsep_cli.training.trainer import Trainer, TrainSettings, from_scratch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "learning")
    args = parser.parse_args()
    from clapsep_cli.audio import dsp
    from clapsep_cli.network.architecture import TINY
    from clapsep_cli.training import metrics

    best = args.out / "checkpoints" / "best.pt"
    if not best.is_file():
        raise SystemExit(f"{best} missing: run benchmarks/learning_check.py first")
    settings = TrainSettings(data_dir=args.out / "data", captions=args.out / "data" / "captions.csv",
                                   out_name="-", checkpoint_dir=args.out / "checkpoints", val_fraction=0.15,
                                   audio_queries=False, full_encoder=True)
    trainer = Trainer(settings, TINY, *from_scratch(TINY, 0), args.out / "tok", torch.device("cpu"), {},
                            log=lambda _m: None)
    trainer.separator.load_state_dict(torch.load(best, weights_only=True)["separator"])
    trainer.separator.eval()
    zeros = torch.zeros(1, TINY.joint_embed_dim)
    scores: dict[str, list[float]] = {"negative": [], "subtract": []}
    with torch.no_grad():
        for item in (trainer.val_set[i] for i in range(len(trainer.val_set))):
            mixture, keep = item["mixture"][None], item["target"][None]
            unwanted = trainer.text_embedding([item["neg_caption"]])
            spec = dsp.stft(mixture)
            mask = trainer.separator.mask(mixture, torch.cat([zeros, unwanted], -1), spec)
            left = dsp.istft(spec * mask, mixture.shape[-1])
            removed = dsp.istft(spec * trainer.separator.mask(mixture, torch.cat([unwanted, zeros], -1), spec),
                                mixture.shape[-1])
            scores["negative"].append(float(metrics.improvement("si_sdr", left, mixture, keep)))
            scores["subtract"].append(float(metrics.improvement("si_sdr", mixture - removed, mixture, keep)))
    print(f"| method | SI-SDRi of what is left ({len(scores['negative'])} held-out mixtures) |\n|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {sum(values) / len(values):.2f} dB |")


if __name__ == "__main__":
    main()
