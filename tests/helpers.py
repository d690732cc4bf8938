"""What many tests share: test signals and files, the one stand-in network, stem digests."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, (frames, channels) float32, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    cols = [0.3 * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) + 0.05 * rng.standard_normal(len(t))
            for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, rate: int, subtype: str = "FLOAT", **kw: object) -> Path:
    sf.write(str(path), data, rate, subtype=subtype, **kw)
    return path


# (name, seconds, rate, channels, how it is stored): rates, channel counts, lengths (under one
# segment, two, three) and containers (soundfile and ffmpeg decoding) all mixed.
CLIPS = [("a.wav", 5.0, 44100, 2, "FLOAT"), ("b.flac", 3.2, 48000, 1, "PCM_24"), ("c.wav", 12.5, 32000, 1, "PCM_16"),
         ("d.mp3", 4.0, 44100, 2, "mp3"), ("e.wav", 0.7, 22050, 3, "FLOAT"), ("f.aiff", 21.0, 16000, 2, "PCM_16"),
         ("g.wav", 6.0, 8000, 1, "FLOAT")]


def make_clip(folder: Path, name: str, seconds: float, rate: int, channels: int, kind: str, seed: int) -> Path:
    """A :func:`tone` file stored as ``kind``: a soundfile subtype, or ``"mp3"`` (by ffmpeg)."""
    data = tone(seconds, rate, channels, freq=300.0 + 50 * seed, seed=seed)
    if kind != "mp3":
        return write_audio(folder / name, data, rate, subtype=kind)
    wav = write_audio(folder.parent / f"{name}.wav", data, rate)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-b:a", "128k", str(folder / name)], check=True)
    return folder / name


def as_written(path: Path) -> bytes:
    """The file's bytes, but for the time of writing that libsndfile puts in the PEAK chunk of
    float WAV and AIFF files (the one thing two runs on one file write differently; it is in
    the header: version, then the timestamp, then the peaks)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PEAK", 0, 512)
    if at >= 0:
        data[at + 12 : at + 16] = bytes(4)
    return bytes(data)


def stems(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` by name: a digest of its bytes as written (see :func:`as_written`)."""
    return {p.name: hashlib.sha256(as_written(p)).hexdigest() for p in sorted(folder.iterdir())}


@dataclass
class Artefacts:
    """Random-weight checkpoints of one architecture in official layouts, and their weights."""

    clap: Path
    tokenizer: Path
    layouts: dict[int, Path]
    clap_state: dict[str, torch.Tensor]
    training_state: dict[str, torch.Tensor]


class StandIn:
    """The tests' stand-in network (what :class:`clapsep_cli.engine.batch.SeparationModel` asks):
    fast, and exact. Its mask is ``value`` in every bin or, by default, |X|² / (|X|² + 0.01) per
    time-frequency cell: exactly rounded operations only, so a cell's mask has the same bits
    whatever shares its batch and whether the kernels vectorise.

    It records the rows of every call (``rows``) and the first call's mixtures (``first``). In
    each call ``delay`` seconds pass, then ``check`` runs; from call ``fail_at`` on it raises
    ``exc``.
    """

    device = torch.device("cpu")

    def __init__(self, value: float | None = None, *, check: Callable[[], None] | None = None, delay: float = 0.0,
                 fail_at: int | None = None, exc: type[BaseException] = RuntimeError):
        self.value, self.check, self.delay, self.fail_at, self.exc = value, check, delay, fail_at, exc
        self.rows: list[int] = []
        self.first: torch.Tensor | None = None

    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """(B, 513, frames) masks for 32 kHz mixtures (B, L), conditions (B, D), their STFTs (B, 513, frames)."""
        assert len(condition) == len(mixture)
        self.rows.append(len(mixture))
        if self.first is None:
            self.first = mixture.clone()
        if self.delay:
            time.sleep(self.delay)
        if self.check is not None:
            self.check()
        if self.fail_at is not None and len(self.rows) >= self.fail_at:
            raise self.exc("network failed")
        if self.value is not None:
            return torch.full(spec.shape, self.value)
        power = spec.real * spec.real + spec.imag * spec.imag
        return power / (power + 0.01)
