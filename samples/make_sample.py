"""Make samples/street.wav: a man's voice (espeak-ng) over synthetic rain, with a siren passing.

    python samples/make_sample.py [OUT]          # default: street.wav beside this script

8 s, 22050 Hz (espeak-ng's own rate, so nothing is resampled), mono, 16-bit WAV. Three sounds a
query can pick out:

- a man speaking: espeak-ng's en-us voice says SPEECH, from 0.8 s;
- rain: steady hiss plus drops, the whole 8 s;
- a siren: a wailing tone, rising and falling, that swells and fades between 3 and 7.5 s.

Everything but the voice comes from the arithmetic below, with noise from a fixed integer hash
rather than a random generator, so the same numpy and espeak-ng give the same file; the voice
depends on the espeak-ng version (samples/README.md names the one that made the shipped file).
Needs numpy and soundfile (clapsep's own dependencies) and the espeak-ng program.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 22050
SECONDS = 8.0
SPEECH = "Hello. This is a short test recording. Behind my voice, rain falls and a siren goes past."
VOICE_START = 0.8  # seconds
SIREN_START, SIREN_END = 3.0, 7.5  # seconds
OUT = Path(__file__).with_name("street.wav")


def hash_noise(n: int, seed: int) -> np.ndarray:
    """``n`` values uniform in [-1, 1): an integer hash of the sample index (splitmix64's finaliser),
    the same on every machine and numpy version."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 52) - 1.0


def one_pole_lowpass(x: np.ndarray, coefficient: float) -> np.ndarray:
    """y[n] = (1 - c) x[n] + c y[n - 1]."""
    y = np.empty_like(x)
    state = 0.0
    for i, v in enumerate(x):
        state = (1.0 - coefficient) * v + coefficient * state
        y[i] = state
    return y


def rain(n: int) -> np.ndarray:
    """A steady hiss (high-passed noise, gently swelling) and about 40 drops a second."""
    t = np.arange(n) / RATE
    noise = hash_noise(n, seed=1)
    hiss = noise - one_pole_lowpass(noise, 0.7)  # the low end taken out
    hiss *= 0.8 + 0.2 * np.sin(2 * np.pi * 0.3 * t)
    drops = np.zeros(n)
    length = int(0.012 * RATE)
    decay = np.exp(-np.arange(length) / (0.002 * RATE))
    burst = hash_noise(length, seed=2) * decay
    starts = hash_noise(int(40 * SECONDS), seed=3)
    levels = hash_noise(len(starts), seed=4)
    for where, level in zip(starts, levels):
        i = int((where + 1.0) / 2.0 * (n - length))
        drops[i : i + length] += (0.4 + 0.3 * level) * burst
    out = hiss + drops
    return out / np.sqrt(np.mean(out * out))


def siren(n: int) -> np.ndarray:
    """A wail: 700 to 1500 Hz and back every 2 s, with two overtones, swelling in and fading out."""
    t = np.arange(n) / RATE
    frequency = 1100.0 - 400.0 * np.cos(2 * np.pi * 0.5 * (t - SIREN_START))
    phase = 2 * np.pi * np.cumsum(frequency) / RATE
    tone = np.sin(phase) + 0.35 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
    inside = (t >= SIREN_START) & (t < SIREN_END)
    position = np.clip((t - SIREN_START) / (SIREN_END - SIREN_START), 0.0, 1.0)
    envelope = np.where(inside, np.sin(np.pi * position) ** 1.5, 0.0)  # approaches, then passes
    out = tone * envelope
    return out / np.sqrt(np.mean(out[inside] ** 2))


def voice(n: int) -> np.ndarray:
    """espeak-ng saying SPEECH, placed at VOICE_START."""
    if shutil.which("espeak-ng") is None:
        sys.exit("make_sample.py: espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "voice.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), SPEECH], check=True)
        spoken, rate = sf.read(str(wav), dtype="float64")
    if rate != RATE:
        sys.exit(f"make_sample.py: espeak-ng wrote {rate} Hz, expected {RATE} Hz")
    spoken = np.trim_zeros(spoken)
    start = int(VOICE_START * RATE)
    if start + len(spoken) > n:
        sys.exit(f"make_sample.py: the speech lasts {len(spoken) / RATE:.2f} s, longer than the sample leaves")
    out = np.zeros(n)
    out[start : start + len(spoken)] = spoken
    return out / np.sqrt(np.mean(spoken * spoken))


def make(path: Path) -> Path:
    n = int(SECONDS * RATE)
    mix = 1.0 * voice(n) + 0.2 * rain(n) + 0.35 * siren(n)  # RMS against the speech: rain -14 dB, siren -9 dB
    mix *= 0.89 / np.max(np.abs(mix))  # peak at -1 dBFS
    sf.write(str(path), mix, RATE, subtype="PCM_16", format="WAV")
    return path


if __name__ == "__main__":
    print(make(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
