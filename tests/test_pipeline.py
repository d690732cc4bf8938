"""The read-ahead pipeline: same bits as one thread, errors and Ctrl-C handled, memory bounded."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.readahead import ReadAhead
from clapsep_cli.engine.segments import crossfade
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.errors import AudioError
from clapsep_cli.network.architecture import SEGMENT_SAMPLES
from tests.helpers import StandIn

HANN = torch.hann_window(1024)


def signal_of(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((int(round(seconds * rate)), channels))).astype(np.float32)


def blocks_of(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), size):
        yield x[i : i + size]


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clapsep-reader"]


def run(model: StandIn, x: np.ndarray, rate: int, options: EngineOptions, block: int = 30011
        ) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(separate_stream(model, torch.zeros(1, 4), blocks_of(x, block), rate, options))
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


@pytest.mark.parametrize("rate,channels", [(32000, 1), (32000, 2), (44100, 2), (22050, 3)])
@pytest.mark.parametrize("overlap,batch", [(0.0, 2), (0.1, 2), (0.25, 3)])
def test_read_ahead_gives_the_same_bits_as_one_thread(rate: int, channels: int, overlap: float, batch: int) -> None:
    x = signal_of(31.3, rate, channels)
    serial = run(StandIn(), x, rate, EngineOptions(overlap=overlap, batch_size=batch, prefetch=0))
    for prefetch in (1, 2):
        threaded = run(StandIn(), x, rate, EngineOptions(overlap=overlap, batch_size=batch, prefetch=prefetch))
        assert np.array_equal(serial[0], threaded[0]) and np.array_equal(serial[1], threaded[1])
    assert serial[0].shape == x.shape and np.array_equal(serial[1], x)
    assert readers() == []


def _reference_32k(x: np.ndarray, options: EngineOptions) -> np.ndarray:
    """The engine's definition at 32 kHz written out whole, with torch's own STFT pair:
    zero-padded 10 s segments every hop, downmix mask, crossfaded joins."""
    wave = torch.from_numpy(x.T.copy())
    n, hop = wave.shape[1], options.hop
    starts = [0] if n <= SEGMENT_SAMPLES else list(range(0, n - SEGMENT_SAMPLES, hop)) + [None]
    starts[-1] = starts[-2] + hop if starts[-1] is None else starts[-1]
    segments = [torch.nn.functional.pad(wave[:, s : s + SEGMENT_SAMPLES], (0, max(0, s + SEGMENT_SAMPLES - n)))
                for s in starts]
    estimates = []
    for i in range(0, len(segments), options.batch_size):
        batch = torch.stack(segments[i : i + options.batch_size])
        spec = torch.stft(batch.reshape(-1, SEGMENT_SAMPLES), 1024, 320, 1024, HANN, center=True,
                          pad_mode="reflect", return_complex=True).reshape(*batch.shape[:2], 513, -1)
        mask = StandIn().masks(batch.mean(dim=1), torch.zeros(len(batch), 4), spec.mean(dim=1))
        out = torch.istft((spec * mask.unsqueeze(1)).reshape(-1, 513, spec.shape[-1]), 1024, 320, 1024, HANN,
                          center=True, length=SEGMENT_SAMPLES)
        estimates.extend(out.reshape(batch.shape))
    overlap = SEGMENT_SAMPLES - hop
    fade_in, fade_out = crossfade(overlap)
    parts, previous = [], None
    for e in estimates:
        head = e[:, :overlap] if previous is None or not overlap else previous * fade_out + e[:, :overlap] * fade_in
        parts += [head, e[:, overlap:hop]]
        previous = e[:, hop:]
    parts.append(previous)
    return torch.cat(parts, dim=1)[:, :n].T.numpy()


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("seconds,overlap", [(7.5, 0.1), (10.0, 0.0), (26.2, 0.1), (33.0, 0.0)])
def test_32k_sources_are_bit_exact_to_the_whole_signal_definition(channels: int, seconds: float,
                                                                   overlap: float) -> None:
    x = signal_of(seconds, 32000, channels, seed=channels)
    options = EngineOptions(overlap=overlap, batch_size=2)
    target, _ = run(StandIn(), x, 32000, options)
    assert np.array_equal(target, _reference_32k(x, options))


def test_an_error_in_the_reader_reaches_the_caller_and_stops_the_thread() -> None:
    closed_in: list[str] = []

    def failing() -> Iterator[np.ndarray]:
        try:
            yield from blocks_of(signal_of(25.0, 44100, 2), 44100)
            raise AudioError("in.wav: decoder died at 25 s")
        finally:
            closed_in.append(threading.current_thread().name)

    out = []
    with pytest.raises(AudioError, match="decoder died"):
        for target, _ in separate_stream(StandIn(), torch.zeros(1, 4), failing(), 44100, EngineOptions()):
            out.append(target)
    assert sum(map(len, out)) > 0  # what came before the error was delivered first
    assert readers() == [] and closed_in == ["clapsep-reader"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failing_network_leaves_no_reader_running(exc: type[BaseException]) -> None:
    closed: list[bool] = []

    def endless() -> Iterator[np.ndarray]:
        try:
            while True:
                yield signal_of(1.0, 48000, 2)
        finally:
            closed.append(True)

    with pytest.raises(exc):
        list(separate_stream(StandIn(fail_at=2, exc=exc), torch.zeros(1, 4), endless(), 48000, EngineOptions()))
    assert readers() == [] and closed == [True]


def test_a_caller_that_stops_early_leaves_no_reader_running() -> None:
    stream = separate_stream(StandIn(), torch.zeros(1, 4), blocks_of(signal_of(80.0, 32000, 1), 16000), 32000,
                             EngineOptions(batch_size=1))
    next(stream)
    assert len(readers()) == 1
    stream.close()
    assert readers() == []


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="needs Python's own Ctrl-C handler")
def test_ctrl_c_while_waiting_for_the_reader_stops_it() -> None:
    def slow() -> Iterator[np.ndarray]:
        for _ in range(100):  # bounded: at most 10 s if nothing interrupts
            time.sleep(0.1)
            yield signal_of(0.5, 32000, 1)

    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(separate_stream(StandIn(), torch.zeros(1, 4), slow(), 32000, EngineOptions()))
    timer.join()
    assert time.monotonic() - start < 5
    assert readers() == []


def _backlog(options: EngineOptions, block: int) -> list[int]:
    """Samples read but not yet written, at each network call, on a slow network."""
    x = signal_of(150.0, 32000, 1)
    consumed = written = 0
    backlog: list[int] = []

    def source() -> Iterator[np.ndarray]:
        nonlocal consumed
        for b in blocks_of(x, block):
            consumed += len(b)
            yield b

    # each call waits: the reader gets time to fill its queue
    spy = StandIn(delay=0.05, check=lambda: backlog.append(consumed - written))
    for target, _ in separate_stream(spy, torch.zeros(1, 4), source(), 32000, options):
        written += len(target)
    assert written == len(x)
    return backlog


@pytest.mark.parametrize("batch,prefetch", [(1, 2), (2, 1), (2, 2)])
def test_read_ahead_is_bounded_and_really_reads_ahead(batch: int, prefetch: int) -> None:
    """With a slow network the reader runs ahead of the one-thread pipeline, but never by more
    than ``prefetch`` batches of input (plus one block): memory stays flat however long the
    stream."""
    block = 16000
    serial = max(_backlog(EngineOptions(overlap=0.25, batch_size=batch, prefetch=0), block))
    ahead = max(_backlog(EngineOptions(overlap=0.25, batch_size=batch, prefetch=prefetch), block))
    assert serial <= (batch + 1) * SEGMENT_SAMPLES
    assert serial < ahead <= serial + prefetch * batch * SEGMENT_SAMPLES + block


def test_read_ahead_queue_holds_at_most_its_capacity() -> None:
    produced: list[int] = []
    held: list[int] = []

    def items() -> Iterator[int]:
        for i in range(40):
            produced.append(i)
            yield i

    with ReadAhead(items(), size=lambda i: 3, capacity=10) as ahead:
        for i in ahead:
            time.sleep(0.01)
            held.append(len(produced) - i - 1)  # produced but not yet consumed
    assert held and max(held) <= 10 // 3 + 1  # queued items plus the one in the reader's hands
    with ReadAhead(iter([100, 1]), size=lambda i: i, capacity=10) as ahead:  # oversize items still pass
        assert list(ahead) == [100, 1]

