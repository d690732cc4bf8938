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

Decoding, resampling to 32 kHz and cutting segments run in a background thread
(:class:`ReadAhead`), a bounded amount ahead of the network, so that they overlap it; the
output is bit for bit the same as with everything in one thread (``EngineOptions(prefetch=0)``).
On a CUDA device, batches are staged in page-locked host memory and copied asynchronously;
STFT, masking and iSTFT run on the device.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from clapsep_cli import dsp
from clapsep_cli.architecture import SAMPLE_RATE, SEGMENT_SAMPLES
from clapsep_cli.errors import SettingError

DEFAULT_OVERLAP = 0.1
DEFAULT_BATCH_SIZE = 2
# On a GPU the network costs little per segment and larger batches keep it busy: on an H200,
# 16 segments per call ran about 7x the segments per second of 2, in 1 GiB of GPU memory
# (benchmarks/batch_sizes.py).
CUDA_BATCH_SIZE = 16
MAX_OVERLAP = 0.5
DEFAULT_PREFETCH = 2


@dataclass(frozen=True)
class EngineOptions:
    """How segments are laid out and batched, and how far input is read ahead.

    ``prefetch``: batches' worth of 32 kHz input decoded and resampled ahead of the network in a
    background thread (0: everything in the caller's thread).
    """

    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    prefetch: int = DEFAULT_PREFETCH

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= MAX_OVERLAP:
            raise SettingError("overlap", f"must be between 0 and {MAX_OVERLAP} (fraction of a 10 s segment)")
        if self.batch_size < 1:
            raise SettingError("batch_size", "must be at least 1")
        if self.prefetch < 0:
            raise SettingError("prefetch", "must be at least 0")

    @property
    def hop(self) -> int:
        return SEGMENT_SAMPLES - round(self.overlap * SEGMENT_SAMPLES)


def default_batch_size(device: torch.device) -> int:
    """Segments per network call where none is asked for: 16 on CUDA, 2 elsewhere."""
    return CUDA_BATCH_SIZE if device.type == "cuda" else DEFAULT_BATCH_SIZE


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


class SeparationModel(Protocol):
    """What the engine needs from a model: masks for 32 kHz segments, on some device."""

    device: torch.device

    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor: ...


def separate_batch(model: SeparationModel, segments: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Estimates (B, C, L) on the CPU for 32 kHz segments (B, C, L): one downmix mask applied to
    every channel. STFT, masking and iSTFT run on the model's device."""
    segments = segments.to(model.device, non_blocking=True)
    spec = dsp.stft(segments)  # (B, C, bins, frames)
    mono_spec, mono = _downmix(spec), _downmix(segments)
    cond = condition.to(model.device).expand(segments.shape[0], -1)
    mask = model.masks(mono, cond, mono_spec)
    return _to_host(dsp.istft(spec * mask.unsqueeze(1), segments.shape[-1]))


def _downmix(x: torch.Tensor) -> torch.Tensor:
    """Mean over the channel axis (1). Two channels are added directly: the same numbers as
    ``mean`` (a sum of two is a sum of two), without its slow strided reduction."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 2:
        return (x[:, 0] + x[:, 1]) / 2
    return x.mean(dim=1)


def _stacked(segments: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Segments as one (B, C, L) batch; page-locked when bound for a CUDA device, so that the
    copy there is asynchronous (a fresh block from PyTorch's caching host allocator, which does
    not hand it out again before that copy has finished)."""
    if device.type != "cuda":
        return torch.stack(segments)
    out = torch.empty((len(segments), *segments[0].shape), dtype=segments[0].dtype, pin_memory=True)
    return torch.stack(segments, out=out)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU; from CUDA through page-locked memory, waiting for the copy to finish."""
    if x.device.type == "cpu":
        return x
    if x.device.type != "cuda":
        return x.cpu()
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return out


T = TypeVar("T")
_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead(Generic[T]):
    """Iterates ``items`` in a background thread, at most ``capacity`` units ahead of the consumer.

    ``size(item)`` gives an item's units; the reader waits while the items not yet taken add up
    to ``capacity`` (one item is always let through, however large), so memory stays flat
    however long the input. An exception raised by ``items`` is raised to the consumer at the
    same place in the sequence. :meth:`close` (called on leaving the ``with`` block, on any
    exception or KeyboardInterrupt too) stops the reader, closes ``items`` in the reader's own
    thread (a generator's clean-up, such as ending a decoder process, runs where it ran) and
    joins the thread.
    """

    def __init__(self, items: Iterator[T], size: Callable[[T], int], capacity: int, name: str = "clapsep-reader"):
        self._items, self._size, self._capacity = items, size, capacity
        self._queue: deque[tuple[str, Any, int]] = deque()
        self._queued = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                for item in self._items:
                    units = self._size(item)
                    with self._cond:
                        while self._queue and self._queued + units > self._capacity and not self._stop:
                            self._cond.wait()
                        if self._stop:
                            return
                        self._queue.append((_ITEM, item, units))
                        self._queued += units
                        self._cond.notify_all()
            finally:
                close = getattr(self._items, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_ERROR, err)
        else:
            self._put(_END, None)

    def _put(self, kind: str, value: Any) -> None:
        with self._cond:
            self._queue.append((kind, value, 0))
            self._cond.notify_all()

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait(0.5)  # a timeout keeps Ctrl-C responsive everywhere
                kind, value, units = self._queue.popleft()
                self._queued -= units
                self._cond.notify_all()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Segments = tuple[np.ndarray | None, list[torch.Tensor]]


def _segmented(blocks: Iterable[np.ndarray], rate: int, segmenter: Segmenter) -> Iterator[Segments]:
    """(source block, the 32 kHz segments it completes) for each non-empty block, then, if there
    was any input, (None, the last segments: those the resampler's remaining output completes
    and the zero-padded last one)."""
    to32 = dsp.SincResampler(rate, SAMPLE_RATE).stream()
    channels = 0
    try:
        for block in blocks:
            if block.ndim != 2 or len(block) == 0:
                continue
            channels = block.shape[1]
            block32 = to32.push(torch.from_numpy(block).T)  # a view; the resampler's buffer copies it once
            yield block, [s for _, s in segmenter.push(block32)]
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    if channels:
        yield None, [s for _, s in segmenter.push(to32.flush(channels))] + [s for _, s in segmenter.finish()]


def _held(item: Segments, rate: int) -> int:
    """32 kHz samples an item holds (its segments and its source block)."""
    block, segments = item
    return len(segments) * SEGMENT_SAMPLES + (0 if block is None else len(block) * SAMPLE_RATE // rate)


@contextlib.contextmanager
def _read(blocks: Iterable[np.ndarray], rate: int, segmenter: Segmenter, options: EngineOptions
          ) -> Iterator[Iterable[Segments]]:
    """Decoding, resampling and segmenting, read ahead in a background thread unless
    ``options.prefetch`` is 0. ``segmenter.total`` is final once the block is left."""
    items = _segmented(blocks, rate, segmenter)
    if not options.prefetch:
        with contextlib.closing(items):
            yield items
        return
    capacity = options.prefetch * options.batch_size * SEGMENT_SAMPLES
    with ReadAhead(items, lambda item: _held(item, rate), capacity) as ahead:
        yield ahead


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
    back = dsp.SincResampler(SAMPLE_RATE, rate).stream()
    segmenter, ola, queue = Segmenter(options.hop), OverlapAdd(options.hop), _SourceQueue()
    pending: list[torch.Tensor] = []
    received = emitted32 = emitted = 0
    channels = 0

    def run(batch: list[torch.Tensor]) -> torch.Tensor:
        estimates = separate_batch(model, _stacked(batch, model.device), condition)
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

    with _read(blocks, rate, segmenter, options) as items:
        for block, segments in items:
            if block is None:  # the stream's last segments, trimmed to its end below
                pending.extend(segments)
                break
            channels = block.shape[1]
            queue.push(block)
            received += len(block)
            for segment in segments:
                pending.append(segment)
                if len(pending) == options.batch_size:
                    yield from pair(run(pending), final=False)
                    pending = []
    if received == 0:
        return
    out = []
    for i in range(0, len(pending), options.batch_size):
        out.append(run(pending[i : i + options.batch_size]))
    out.append(ola.finish())
    yield from pair(torch.cat([o.reshape(channels, -1) for o in out], dim=1), final=True)
