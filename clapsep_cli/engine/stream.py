"""Streams of sources through the network, sharing batches: :class:`Batcher`."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clapsep_cli.audio import dsp
from clapsep_cli.engine.batch import SeparationModel, separate_batch, shared_rows
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.readahead import ReadAhead
from clapsep_cli.engine.segments import OverlapAdd, Segmenter
from clapsep_cli.network.architecture import SAMPLE_RATE, SEGMENT_SAMPLES


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


def _segmented(blocks: Iterable[np.ndarray], rate: int, segmenter: Segmenter, model_rate: bool = False
               ) -> Iterator[tuple[np.ndarray | None, list[torch.Tensor]]]:
    """(source block, the 32 kHz segments it completes) for each non-empty block, then (None,
    the last segments: those the resampler's remaining output completes and the zero-padded last
    one; none if there was no input). With ``model_rate`` the blocks given are the source
    resampled to 32 kHz, the resampler's last output among them."""
    to32 = dsp.SincResampler(rate, SAMPLE_RATE).stream()
    channels = 0
    try:
        for block in blocks:
            if block.ndim != 2 or len(block) == 0:
                continue
            channels = block.shape[1]
            block32 = to32.push(torch.from_numpy(block).T)  # a view; the resampler's buffer copies it once
            yield (block32.T.numpy() if model_rate else block), [s for _, s in segmenter.push(block32)]
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    if not channels:
        yield None, []
        return
    tail = to32.flush(channels)
    last = [s for _, s in segmenter.push(tail)]
    if model_rate and tail.shape[1]:
        yield tail.T.numpy(), last
        last = []
    yield None, last + [s for _, s in segmenter.finish()]


def _pieces(sources: Iterable[Source], hop: int, dropped: set[int], model_rate: bool) -> Iterator[_Piece]:
    """Every source's pieces in order; a source's failure (an :class:`Exception` from its blocks)
    becomes its last piece and the next source follows. Sources in ``dropped`` are skipped or,
    when dropped while read, closed at their next block. With ``model_rate`` the pieces carry
    32 kHz blocks (see :func:`_segmented`)."""
    for index, source in enumerate(sources):
        if index in dropped:
            continue
        segmenter = Segmenter(hop)
        rate = SAMPLE_RATE if model_rate else source.rate
        try:
            with contextlib.closing(_segmented(source.blocks, source.rate, segmenter, model_rate)) as items:
                for block, segments in items:
                    if index in dropped:
                        break
                    yield _Piece(index, rate, block, segments, segmenter.total)
        except Exception as err:  # noqa: BLE001 - the source's own failure, handed to its consumer
            yield _Piece(index, rate, None, [], error=err)


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
    its last Output (``done``, or its ``error``), then the next source's. With ``model_rate`` the
    pairs are the estimate and the source at the network's 32 kHz, not resampled back (what
    finding events needs). A source is done as
    soon as its last segment is back. Memory: the reader (see :func:`_read`) runs at most
    ``prefetch`` batches of input ahead and sources are opened one at a time, so at most
    ``(prefetch + 1) * batch_size + 2`` sources are open at once, whatever their number.
    """

    def __init__(self, model: SeparationModel, condition: torch.Tensor, sources: Iterable[Source],
                 options: EngineOptions, model_rate: bool = False):
        self.model, self.condition, self.sources, self.options = model, condition, sources, options
        self.model_rate = model_rate
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
        with _read(_pieces(self.sources, self.options.hop, self._dropped, self.model_rate), self.options) as pieces:
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
                    model_rate: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Separate a stream of float32 source blocks (n, channels) at ``rate``: a :class:`Batcher`
    of one source.

    Yields aligned ``(target, source)`` blocks at ``rate`` (with ``model_rate``: both at the
    network's 32 kHz) that together cover the source exactly; ``source - target`` is the
    residual. ``on_segments(k)`` reports progress; an error of ``blocks`` is raised after the
    output that came before it.
    """
    batcher = Batcher(model, condition, [Source(blocks, rate)], options, model_rate)
    with contextlib.closing(iter(batcher)) as outputs:
        for out in outputs:
            if out.error is not None:
                raise out.error
            if on_segments and out.segments:
                on_segments(out.segments)
            yield from out.pairs
