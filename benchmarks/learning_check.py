"""Does the training recipe learn? A small model, trained from scratch on synthetic sounds, on CPU.

Five kinds of captioned sounds made here (speech from espeak-ng, beeps, noise bursts, click
trains, hum), mixed in pairs at 0 dB on the fly; the tiny architecture trains from scratch
(random frozen CLAP, text queries, trainable encoder copy and decoder) for a few minutes;
validation SI-SDRi on fixed held-out mixtures is printed before training and after every epoch.
The best weights are installed as the model ``learning-check`` in the store under ``--out``
(``benchmarks/find_accuracy.py`` uses it).

    python benchmarks/learning_check.py --minutes 10 --out bench-out/learning
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from clapsep_cli.training.trainer import Trainer, TrainSettings, from_scratch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 32000
CAPTIONS = {
    "speech": ["a person speaks", "someone talking"],
    "beep": ["a high pitched beeping", "electronic beeps"],
    "burst": ["bursts of white noise", "hissing noise bursts"],
    "click": ["rapid clicking", "a clicking sound"],
    "hum": ["a low electrical hum", "a humming drone"],
}
SENTENCES = ["The quick brown fox jumps over the lazy dog", "Please call me when you arrive at the station",
             "We will meet again tomorrow morning", "The weather is lovely by the sea today",
             "Turn left at the second traffic light", "I would like a cup of tea please"]


def synth(kind: str, rng: np.random.Generator, seconds: float = 6.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    if kind == "beep":
        f = rng.uniform(700, 2500)
        gate = (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0.3).astype(float)
        return 0.3 * np.sin(2 * np.pi * f * t) * gate
    if kind == "burst":
        gate = (rng.random(len(t) // 3200 + 1) < 0.4).repeat(3200)[: len(t)]
        return 0.25 * rng.standard_normal(len(t)) * gate
    if kind == "click":
        x = np.zeros(len(t))
        period = int(RATE / rng.uniform(5, 20))
        x[::period] = 0.8
        return np.convolve(x, np.exp(-np.arange(64) / 8), mode="same")
    if kind == "hum":
        f0 = rng.choice([50.0, 60.0, 100.0])
        return sum(0.15 / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) for k in range(1, 6))
    raise ValueError(kind)


def speech(rng: np.random.Generator, folder: Path) -> np.ndarray:
    import torch

    from clapsep_cli.audio.dsp import SincResampler

    wav = folder / "speech.wav"
    voice = rng.choice(["en+m1", "en+m3", "en+f2", "en+f4"])
    text = " ".join(rng.choice(SENTENCES, size=2, replace=False))
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.uniform(140, 190))), "-w", str(wav), text], check=True)
    data, rate = sf.read(str(wav), dtype="float32")
    return SincResampler(rate, RATE)(torch.from_numpy(data)).numpy() * 0.8


def make_dataset(folder: Path, per_kind: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file_name,caption"]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, captions in CAPTIONS.items():
            for i in range(per_kind):
                x = speech(rng, Path(tmp)) if kind == "speech" else synth(kind, rng)
                name = f"{kind}_{i:03d}.wav"
                sf.write(str(folder / name), x.astype(np.float32), RATE)
                rows.append(f"{name},{captions[i % len(captions)]}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder / "captions.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "learning")
    parser.add_argument("--minutes", type=float, default=10.0, help="Training time budget.")
    parser.add_argument("--per-kind", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="Train on from the last checkpoint under --out.")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed (apt-get install espeak-ng)")
    import torch

    from clapsep_cli.network.architecture import TINY
    from testbed.official import write_tokenizer

    os.environ["CLAPSEP_HOME"] = str(args.out / "store")
    torch.set_num_threads(os.cpu_count() or 1)
    captions = args.out / "data" / "captions.csv" if args.resume else make_dataset(args.out / "data", args.per_kind)
    settings = TrainSettings(data_dir=args.out / "data", captions=captions, out_name="learning-check",
                                   checkpoint_dir=args.out / "checkpoints", epochs=10_000,
                                   steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
                                   val_fraction=0.15, audio_queries=False, full_encoder=True)
    if not args.resume:
        shutil.rmtree(settings.checkpoint_dir, ignore_errors=True)
    trainer = Trainer(settings, TINY, *from_scratch(TINY, 0), write_tokenizer(args.out / "tok"),
                            torch.device("cpu"), {"from": "scratch"}, log=print)
    if args.resume:
        trainer.resume()
    print(f"{len(trainer.train_clips)} training clips, {len(trainer.val_set)} validation mixtures")
    print(f"{'resumed at step ' + str(trainer.step) if args.resume else 'before training'}: "
          f"validation SI-SDRi {trainer.validate():.2f} dB", flush=True)
    started = time.monotonic()
    trainer.fit(time_limit=args.minutes * 60)
    print(f"after {trainer.step} steps of {args.batch_size} mixtures ({(time.monotonic() - started) / 60:.1f} min): "
          f"best validation SI-SDRi {trainer.best:.2f} dB")
    print(f"installed as model {trainer.export(overwrite=True).name!r} in {args.out / 'store'}")


if __name__ == "__main__":
    main()
