"""Cutting a 32 kHz stream into overlapping 10 s segments and joining estimates by crossfade."""

from __future__ import annotations

import math

import torch

from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.network.architecture import SEGMENT_SAMPLES


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
    """Cuts a 32 kHz stream (channels, n) into (start, segment) pairs.

    Pushed blocks are kept as a list and joined only when a segment is complete, so each sample
    is copied about once per segment it belongs to, whatever the block size.
    """

    def __init__(self, hop: int, length: int = SEGMENT_SAMPLES):
        self.hop, self.length = hop, length
        self._chunks: list[torch.Tensor] = []  # input from _buffer_start on
        self._buffer_start = 0
        self._next = 0
        self._covered = 0  # end of the last segment emitted
        self.total = 0

    def _joined(self) -> torch.Tensor:
        buffer = self._chunks[0] if len(self._chunks) == 1 else torch.cat(self._chunks, dim=1)
        self._chunks = [buffer]
        return buffer

    def push(self, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        self._chunks.append(x)
        self.total += x.shape[1]
        out = []
        if self._next + self.length > self.total:
            return out
        buffer = self._joined()
        while self._next + self.length <= self.total:
            lo = self._next - self._buffer_start
            out.append((self._next, buffer[:, lo : lo + self.length]))
            self._covered = self._next + self.length
            self._next += self.hop
        drop = min(self._next - self._buffer_start, buffer.shape[1])
        self._chunks = [buffer[:, drop:]]
        self._buffer_start += drop
        return out

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """The zero-padded last segment, if the stream's end is not yet covered."""
        if not self._chunks or self._covered >= self.total:
            return []
        tail = self._joined()[:, self._next - self._buffer_start :]
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
