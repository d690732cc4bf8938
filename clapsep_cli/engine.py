"""The separation engine: any length, any rate, any channel count, block by block.

Signal path for a source at rate ``sr`` with ``C`` channels:

1. each channel is resampled to 32 kHz as it streams in;
2. the 32 kHz stream is cut into 10 s segments every ``hop`` samples (``hop = (1 - overlap)
   * 10 s``); the last segment is zero-padded, as in the official model;
3. batches of segments go through the network: the mask comes from the mono downmix, and that
   one mask multiplies every channel's STFT, so each time-frequency cell keeps its inter-channel
   level and phase differences (the spatial image). On a CUDA device several sources' segments
   share batches of a fixed ``batch_size`` rows, the last one filled with silent rows; on the
   CPU a batch holds one source's segments (see :func:`shared_rows`);
4. consecutive segment estimates are joined by an equal-gain raised-cosine crossfade over their
   overlap (no crossfade, hard cuts, at overlap 0); a source of one segment is one segment;
5. the 32 kHz estimate is resampled back to ``sr`` and trimmed to the source's exact length.

Memory holds a few segments at a time, whatever the file's length.

Several sources (a folder of short clips) go through one :class:`Batcher`, read ahead across
files; on CUDA their segments share batches. Each estimate goes back to its own source's
overlap-add and resampler, and each source's output is bit for bit what it gives alone
(:func:`separate_stream` is the one-source case).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def default_prefetch(device: torch.device) -> int:
    """Read-ahead where none is asked for: :data:`DEFAULT_PREFETCH` batches when the network runs
    on an accelerator (decoding then overlaps it), none on the CPU, where the network's own
    threads already use every core and a reader thread only competes with them (on 2 cores a
    60 s file separated about 12 % slower with it, the free-model pipeline of
    ``benchmarks/throughput.py`` 8 to 20 % slower)."""
    return 0 if device.type == "cpu" else DEFAULT_PREFETCH


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


def shared_rows(device: torch.device, batch_size: int) -> int | None:
    """Rows of every network call when sources share batches, or None where they must not.

    A segment's estimate must not depend on what shares its batch. On CUDA every element of an
    element-wise kernel is computed alike and matrix kernels are chosen by shape, so calls of a
    fixed ``batch_size`` rows (the last one filled with silent rows) are enough. On the CPU (and
    elsewhere, unmeasured) they are not: element-wise kernels compute the few elements where
    they split work between threads by a scalar path that rounds differently from the vector
    one, so a segment's row changes its last bits; there a batch holds one source's segments
    only, as it would alone.
    """
    return batch_size if device.type == "cuda" else None


def separate_batch(model: SeparationModel, segments: Sequence[torch.Tensor], condition: torch.Tensor,
                   rows: int | None = None) -> list[torch.Tensor]:
    """Estimates (C, L) on the CPU for 32 kHz segments (C, L), whose channel counts may differ:
    each segment's downmix mask applied to each of its channels.

    The network runs in calls of ``rows`` rows (default: all segments in one call), the last
    call's rows past the segments silent; STFT and iSTFT run per segment, so that a segment's
    numbers depend on nothing else (see :func:`shared_rows`). ``condition`` is (1, D) or one
    row per segment. STFT, masking and iSTFT run on the model's device.
    """
    rows = rows or len(segments)
    staged = _staged(segments, model.device)
    length = staged[0].shape[-1]
    specs = [dsp.stft(x[None]) for x in staged]  # (1, C, bins, frames) each
    mono = torch.cat([_downmix(x[None]) for x in staged])
    mono_spec = torch.cat([_downmix(spec) for spec in specs])
    cond = condition.to(model.device)
    masks = []
    for i in range(0, len(segments), rows):
        n = min(rows, len(segments) - i)
        part = cond if cond.shape[0] == 1 else cond[i : i + n]
        masks.append(model.masks(_filled(mono[i : i + n], rows), _filled(part, rows, repeat=True),
                                 _filled(mono_spec[i : i + n], rows))[:n])
    mask = torch.cat(masks)
    return _to_host([dsp.istft(spec * mask[i : i + 1].unsqueeze(1), length)[0] for i, spec in enumerate(specs)])


def _filled(x: torch.Tensor, rows: int, repeat: bool = False) -> torch.Tensor:
    """``x`` (n, ...) made ``rows`` rows long: silent rows appended, or with ``repeat`` its first row."""
    if len(x) == rows:
        return x
    if repeat:
        return x[:1].expand(rows, *x.shape[1:]) if len(x) == 1 else torch.cat([x, x[:1].expand(rows - len(x), -1)])
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def _downmix(x: torch.Tensor) -> torch.Tensor:
    """Mean over the channel axis (1). Two channels are added directly: the same numbers as
    ``mean`` (a sum of two is a sum of two), without its slow strided reduction."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 2:
        return (x[:, 0] + x[:, 1]) / 2
    return x.mean(dim=1)


def _staged(segments: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``segments`` on ``device``. Bound for a CUDA device, they travel as one page-locked host
    block copied asynchronously (a fresh block from PyTorch's caching host allocator, which does
    not hand it out again before that copy has finished)."""
    if device.type == "cpu":
        return list(segments)
    sizes = [s.shape[0] for s in segments]
    out = None
    if device.type == "cuda":
        out = torch.empty((sum(sizes), segments[0].shape[1]), dtype=segments[0].dtype, pin_memory=True)
    host = torch.cat(list(segments), out=out)
    return list(host.to(device, non_blocking=True).split(sizes))


def _to_host(estimates: list[torch.Tensor]) -> list[torch.Tensor]:
    """``estimates`` on the CPU; from CUDA as one block through page-locked memory, waiting for
    the copy to finish."""
    device = estimates[0].device
    if device.type == "cpu":
        return estimates
    sizes = [e.shape[0] for e in estimates]
    x = torch.cat(estimates)
    if device.type != "cuda":
        return list(x.cpu().split(sizes))
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    torch.cuda.current_stream(device).synchronize()
    return list(out.split(sizes))


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


@dataclass(frozen=True)
class Source:
    """A stream to separate: float32 blocks (n, channels) at ``rate``. ``blocks`` is first
    iterated (and closed) in the reader thread, so a generator opens its file there."""

    blocks: Iterable[np.ndarray]
    rate: int


@dataclass
class Output:
    """What :class:`Batcher` gives a source in one step: aligned ``(target, source)`` blocks at the
    source's rate (``source - target`` is the residual), the segments whose estimates they
    complete, and whether the source is ``done`` or failed with ``error`` (its last Output)."""

    index: int
    pairs: list[tuple[np.ndarray, np.ndarray]]
    segments: int = 0
    done: bool = False
    error: Exception | None = None


@dataclass
class _Piece:
    """Reader output: a source block and the 32 kHz segments it completes; at the source's end
    (``block`` None) its last segments and its 32 kHz length; or the error that ended it."""

    index: int
    rate: int
    block: np.ndarray | None
    segments: list[torch.Tensor]
    total: int = 0
    error: Exception | None = None

    @property
    def held(self) -> int:
        """32 kHz samples the piece holds (its segments and its source block)."""
        block = 0 if self.block is None else len(self.block) * SAMPLE_RATE // self.rate
        return len(self.segments) * SEGMENT_SAMPLES + block


def _segmented(blocks: Iterable[np.ndarray], rate: int, segmenter: Segmenter
               ) -> Iterator[tuple[np.ndarray | None, list[torch.Tensor]]]:
    """(source block, the 32 kHz segments it completes) for each non-empty block, then (None,
    the last segments: those the resampler's remaining output completes and the zero-padded last
    one; none if there was no input)."""
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
    last = [s for _, s in segmenter.push(to32.flush(channels))] + [s for _, s in segmenter.finish()] if channels else []
    yield None, last


def _pieces(sources: Iterable[Source], hop: int, dropped: set[int]) -> Iterator[_Piece]:
    """Every source's pieces in order; a source's failure (an :class:`Exception` from its blocks)
    becomes its last piece and the next source follows. Sources in ``dropped`` are skipped or,
    when dropped while read, closed at their next block."""
    for index, source in enumerate(sources):
        if index in dropped:
            continue
        segmenter = Segmenter(hop)
        try:
            with contextlib.closing(_segmented(source.blocks, source.rate, segmenter)) as items:
                for block, segments in items:
                    if index in dropped:
                        break
                    yield _Piece(index, source.rate, block, segments, segmenter.total)
        except Exception as err:  # noqa: BLE001 - the source's own failure, handed to its consumer
            yield _Piece(index, source.rate, None, [], error=err)


@contextlib.contextmanager
def _read(pieces: Iterator[_Piece], options: EngineOptions) -> Iterator[Iterable[_Piece]]:
    """``pieces`` read ahead in a background thread, at most ``options.prefetch`` batches of
    32 kHz input ahead, or in the caller's thread when ``prefetch`` is 0."""
    if not options.prefetch:
        with contextlib.closing(pieces):
            yield pieces
        return
    capacity = options.prefetch * options.batch_size * SEGMENT_SAMPLES
    with ReadAhead(pieces, lambda piece: piece.held, capacity) as ahead:
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


class _Joiner:
    """One source's way back: overlap-add of its estimates one segment at a time, resampling
    to its rate, alignment with its source blocks. Fed one estimate at a time, it gives the
    same bits whatever the estimates shared their batches with."""

    def __init__(self, rate: int, hop: int):
        self.back = dsp.SincResampler(SAMPLE_RATE, rate).stream()
        self.ola, self.queue = OverlapAdd(hop), _SourceQueue()
        self.channels = self.received = self.emitted32 = self.emitted = 0
        self.total: int | None = None  # 32 kHz length, known at the source's end
        self.waiting = 0  # segments read but not yet estimated
        self.error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.waiting == 0

    def take(self, piece: _Piece) -> None:
        if piece.block is None:
            self.total = piece.total
        else:
            self.channels = piece.block.shape[1]
            self.queue.push(piece.block)
            self.received += len(piece.block)
        self.waiting += len(piece.segments)

    def add(self, estimate: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        self.waiting -= 1
        return self._pairs(self.ola.add(estimate), final=False)

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.received == 0:
            return []
        return self._pairs(self.ola.finish().reshape(self.channels, -1), final=True)

    def _pairs(self, target32: torch.Tensor, final: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.total is not None:  # the zero-padded last segment reaches past the source
            target32 = target32[:, : max(self.total - self.emitted32, 0)]
        self.emitted32 += target32.shape[1]
        target = self.back.push(target32) if target32.shape[1] else target32
        if final:
            target = torch.cat([target, self.back.flush(self.channels)], dim=1)[:, : self.received - self.emitted]
        if not target.shape[1]:
            return []
        self.emitted += target.shape[1]
        return [(target.T.numpy().astype(np.float32, copy=False), self.queue.pop(target.shape[1]))]


class Batcher:
    """Separates a sequence of sources whose segments share the network's batches.

    Segments go to the network in source order, ``batch_size`` at a time. On a CUDA device the
    last ones of one source share a batch with the first ones of the next, so a folder of short
    clips fills whole batches; every call there has ``batch_size`` rows (see
    :func:`shared_rows`). Each estimate goes back to its own source's overlap-add and resampler,
    so a source's output is bit for bit what it gives alone.

    Iterating gives :class:`Output` s source by source, in order: all of a source's output, then
    its last Output (``done``, or its ``error``), then the next source's. A source is done as
    soon as its last segment is back. Memory: the reader (see :func:`_read`) runs at most
    ``prefetch`` batches of input ahead and sources are opened one at a time, so at most
    ``(prefetch + 1) * batch_size + 2`` sources are open at once, whatever their number.
    """

    def __init__(self, model: SeparationModel, condition: torch.Tensor, sources: Iterable[Source],
                 options: EngineOptions):
        self.model, self.condition, self.sources, self.options = model, condition, sources, options
        self._dropped: set[int] = set()  # read by the reader thread; adding is atomic
        self._joiners: dict[int, _Joiner] = {}  # sources begun and not yet reported finished, in order
        self._pending: deque[tuple[int, torch.Tensor]] = deque()
        self._rows = shared_rows(model.device, options.batch_size)

    def drop(self, index: int) -> None:
        """Give up source ``index`` (its consumer failed): nothing more is read, separated or
        reported for it."""
        self._dropped.add(index)
        self._joiners.pop(index, None)
        if any(i == index for i, _ in self._pending):
            self._pending = deque(p for p in self._pending if p[0] != index)

    def __iter__(self) -> Iterator[Output]:
        with _read(_pieces(self.sources, self.options.hop, self._dropped), self.options) as pieces:
            for piece in pieces:
                if piece.index in self._dropped:
                    continue
                joiner = self._joiners.get(piece.index)
                if joiner is None:
                    joiner = self._joiners[piece.index] = _Joiner(piece.rate, self.options.hop)
                if piece.error is not None:
                    joiner.error = piece.error
                    self._pending = deque(p for p in self._pending if p[0] != piece.index)
                else:
                    joiner.take(piece)
                    self._pending.extend((piece.index, s) for s in piece.segments)
                while batch := self._next_batch(end=False):
                    yield from self._run(batch)
                yield from self._release()
            while batch := self._next_batch(end=True):
                yield from self._run(batch)
            yield from self._release()

    def _next_batch(self, end: bool) -> list[tuple[int, torch.Tensor]]:
        """The next batch, if one is ready: ``batch_size`` segments, or fewer at the end (of the
        sources, or of the source when sources do not share batches)."""
        size, pending = self.options.batch_size, self._pending
        if self._rows is None and pending:  # the head source's segments, which lead the queue
            head = pending[0][0]
            count = next((i for i, (index, _) in enumerate(pending) if index != head), len(pending))
            if count < size and not end and self._joiners[head].total is None:
                return []
            return [pending.popleft() for _ in range(min(size, count))]
        if len(pending) < size and not end:
            return []
        return [pending.popleft() for _ in range(min(size, len(pending)))]

    def _run(self, batch: list[tuple[int, torch.Tensor]]) -> Iterator[Output]:
        """One batch through the network; each source's estimates to its joiner."""
        estimates = separate_batch(self.model, [s for _, s in batch], self.condition, self._rows)
        by_source: dict[int, list[torch.Tensor]] = {}
        for (index, _), estimate in zip(batch, estimates):
            by_source.setdefault(index, []).append(estimate)
        for index, mine in by_source.items():
            joiner = self._joiners.get(index)
            if joiner is None:  # dropped meanwhile
                continue
            yield Output(index, [pair for e in mine for pair in joiner.add(e)], len(mine))
            yield from self._release()

    def _release(self) -> Iterator[Output]:
        """The last Output of each finished or failed source at the head of the order."""
        while self._joiners:
            index, joiner = next(iter(self._joiners.items()))
            if joiner.error is None and not joiner.finished:
                return
            del self._joiners[index]
            if joiner.error is not None:
                yield Output(index, [], error=joiner.error)
            else:
                yield Output(index, joiner.finish(), done=True)


def separate_stream(model: SeparationModel, condition: torch.Tensor, blocks: Iterable[np.ndarray], rate: int,
                    options: EngineOptions, on_segments: Callable[[int], None] | None = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Separate a stream of float32 source blocks (n, channels) at ``rate``: a :class:`Batcher`
    of one source.

    Yields aligned ``(target, source)`` blocks at ``rate`` that together cover the source
    exactly; ``source - target`` is the residual. ``on_segments(k)`` reports progress; an error
    of ``blocks`` is raised after the output that came before it.
    """
    with contextlib.closing(iter(Batcher(model, condition, [Source(blocks, rate)], options))) as outputs:
        for out in outputs:
            if out.error is not None:
                raise out.error
            if on_segments and out.segments:
                on_segments(out.segments)
            yield from out.pairs
