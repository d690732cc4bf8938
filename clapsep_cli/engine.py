"""The separation engine: any length, any rate, any channel count, block by block.

Signal path for a source at rate ``sr`` with ``C`` channels:

1. each channel is resampled to 32 kHz as it streams in;
2. the 32 kHz stream is cut into 10 s segments every ``hop`` samples (``hop = (1 - overlap)
   * 10 s``); the last segment is zero-padded, as in the official model;
3. batches of segments go through the network: the mask comes from the mono downmix, and that
   one mask multiplies every channel's STFT, so each time-frequency cell keeps its inter-channel
   level and phase differences (the spatial image);
4. consecutive segment estimates are joined by an equal-gain raised-cosine crossfade over their
   overlap (no crossfade, hard cuts, at overlap 0); a source of one segment is one segment;
5. the 32 kHz estimate is resampled back to ``sr`` and trimmed to the source's exact length.

Memory holds a few segments at a time, whatever the file's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from clapsep_cli import dsp
from clapsep_cli.config import SAMPLE_RATE, SEGMENT_SAMPLES
from clapsep_cli.errors import ClapsepError

DEFAULT_OVERLAP = 0.1
DEFAULT_BATCH_SIZE = 2
MAX_OVERLAP = 0.5


@dataclass(frozen=True)
class EngineOptions:
    """How segments are laid out and batched."""

    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= MAX_OVERLAP:
            raise ClapsepError(f"--overlap must be between 0 and {MAX_OVERLAP} (fraction of a 10 s segment)")
        if self.batch_size < 1:
            raise ClapsepError("--batch-size must be at least 1")

    @property
    def hop(self) -> int:
        return SEGMENT_SAMPLES - round(self.overlap * SEGMENT_SAMPLES)


def segment_count(samples32: int, options: EngineOptions) -> int:
    """Segments needed for ``samples32`` samples at 32 kHz."""
    if samples32 <= SEGMENT_SAMPLES:
        return 1
    return 1 + math.ceil((samples32 - SEGMENT_SAMPLES) / options.hop)


def crossfade(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raised-cosine fade-in and fade-out over ``length`` samples; they sum to one."""
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / max(length, 1)
    fade_in = torch.sin(0.5 * math.pi * t) ** 2
    return fade_in.float(), (1.0 - fade_in).float()


class Segmenter:
    """Cuts a 32 kHz stream (channels, n) into (start, segment) pairs."""

    def __init__(self, hop: int, length: int = SEGMENT_SAMPLES):
        self.hop, self.length = hop, length
        self._buffer: torch.Tensor | None = None
        self._buffer_start = 0
        self._next = 0
        self._covered = 0  # end of the last segment emitted
        self.total = 0

    def push(self, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        self._buffer = x if self._buffer is None else torch.cat([self._buffer, x], dim=1)
        self.total += x.shape[1]
        out = []
        while self._next + self.length <= self.total:
            lo = self._next - self._buffer_start
            out.append((self._next, self._buffer[:, lo : lo + self.length]))
            self._covered = self._next + self.length
            self._next += self.hop
        drop = min(self._next - self._buffer_start, self._buffer.shape[1])
        self._buffer = self._buffer[:, drop:].clone() if drop else self._buffer
        self._buffer_start += drop
        return out

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """The zero-padded last segment, if the stream's end is not yet covered."""
        if self._buffer is None or self._covered >= self.total:
            return []
        tail = self._buffer[:, self._next - self._buffer_start :]
        segment = torch.nn.functional.pad(tail, (0, self.length - tail.shape[1]))
        self._covered = self._next + self.length
        return [(self._next, segment)]


class OverlapAdd:
    """Joins consecutive segment estimates with a crossfade over their overlap."""

    def __init__(self, hop: int, length: int = SEGMENT_SAMPLES):
        self.hop, self.overlap = hop, length - hop
        self.fade_in, self.fade_out = crossfade(self.overlap)
        self._pending: torch.Tensor | None = None  # previous estimate's unfinished tail

    def add(self, estimate: torch.Tensor) -> torch.Tensor:
        """Add the next segment's estimate (channels, length); returns the finished samples."""
        head = estimate[:, : self.overlap]
        if self._pending is not None and self.overlap:
            head = self._pending * self.fade_out + head * self.fade_in
        done = torch.cat([head, estimate[:, self.overlap : self.hop]], dim=1)
        self._pending = estimate[:, self.hop :]
        return done

    def finish(self) -> torch.Tensor:
        pending, self._pending = self._pending, None
        return pending if pending is not None else torch.zeros(1, 0)


class SeparationModel(Protocol):
    """What the engine needs from a model: masks for 32 kHz segments, on some device."""

    device: torch.device

    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor: ...


def separate_batch(model: SeparationModel, segments: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Estimates (B, C, L) for 32 kHz segments (B, C, L): one downmix mask applied to every channel."""
    segments = segments.to(model.device)
    spec = dsp.stft(segments)  # (B, C, bins, frames)
    mono_spec = spec[:, 0] if spec.shape[1] == 1 else spec.mean(dim=1)
    mono = segments[:, 0] if segments.shape[1] == 1 else segments.mean(dim=1)
    cond = condition.to(model.device).expand(segments.shape[0], -1)
    mask = model.masks(mono, cond, mono_spec)
    return dsp.istft(spec * mask.unsqueeze(1), segments.shape[-1]).cpu()


class _SourceQueue:
    """Source frames waiting for their target estimate (residual alignment)."""

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._offset = 0

    def push(self, block: np.ndarray) -> None:
        self._blocks.append(block)

    def pop(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need > 0 and self._blocks:
            head = self._blocks[0][self._offset :]
            take = head[:need]
            parts.append(take)
            need -= len(take)
            if len(take) == len(head):
                self._blocks.pop(0)
                self._offset = 0
            else:
                self._offset += len(take)
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def separate_stream(model: SeparationModel, condition: torch.Tensor, blocks: Iterable[np.ndarray], rate: int,
                    options: EngineOptions, on_segments: Callable[[int], None] | None = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Separate a stream of float32 source blocks (n, channels) at ``rate``.

    Yields aligned ``(target, source)`` blocks at ``rate`` that together cover the source
    exactly; ``source - target`` is the residual. ``on_segments(k)`` reports progress.
    """
    to32 = dsp.SincResampler(rate, SAMPLE_RATE).stream()
    back = dsp.SincResampler(SAMPLE_RATE, rate).stream()
    segmenter, ola, queue = Segmenter(options.hop), OverlapAdd(options.hop), _SourceQueue()
    pending: list[torch.Tensor] = []
    received = emitted32 = emitted = 0
    channels = 0

    def run(batch: list[torch.Tensor]) -> torch.Tensor:
        estimates = separate_batch(model, torch.stack(batch), condition)
        if on_segments:
            on_segments(len(batch))
        return torch.cat([ola.add(e) for e in estimates], dim=1)

    def pair(target32: torch.Tensor, final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal emitted32, emitted
        if final:
            target32 = target32[:, : max(segmenter.total - emitted32, 0)]
        emitted32 += target32.shape[1]
        target = back.push(target32) if target32.shape[1] else target32
        if final:
            target = torch.cat([target, back.flush(channels)], dim=1)
            target = target[:, : received - emitted]
        if target.shape[1]:
            emitted += target.shape[1]
            yield target.T.numpy().astype(np.float32, copy=False), queue.pop(target.shape[1])

    for block in blocks:
        if block.ndim != 2 or len(block) == 0:
            continue
        channels = block.shape[1]
        queue.push(block)
        received += len(block)
        for _, segment in segmenter.push(to32.push(torch.from_numpy(np.ascontiguousarray(block.T)))):
            pending.append(segment)
            if len(pending) == options.batch_size:
                yield from pair(run(pending), final=False)
                pending = []
    if received == 0:
        return
    tail32 = to32.flush(channels)
    pending.extend(s for _, s in segmenter.push(tail32))
    pending.extend(s for _, s in segmenter.finish())
    out = []
    for i in range(0, len(pending), options.batch_size):
        out.append(run(pending[i : i + options.batch_size]))
    out.append(ola.finish())
    yield from pair(torch.cat([o.reshape(channels, -1) for o in out], dim=1), final=True)
