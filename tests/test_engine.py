"""The streaming engine with stand-in masks: boundaries, lengths, rates, channels, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.segments import crossfade, segment_count
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.network.architecture import SEGMENT_SAMPLES
from tests.helpers import StandIn


def blocks_of(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def run(model: StandIn, x: np.ndarray, rate: int, options: EngineOptions, block: int = 40000
        ) -> tuple[np.ndarray, np.ndarray]:
    cond = torch.zeros(1, 4)
    pairs = list(separate_stream(model, cond, blocks_of(x, block), rate, options))
    target = np.concatenate([p[0] for p in pairs])
    source = np.concatenate([p[1] for p in pairs])
    return target, source


def signal(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((int(round(seconds * rate)), channels))).astype(np.float32)


def test_crossfade_sums_to_one_and_is_smooth() -> None:
    fade_in, fade_out = crossfade(1000)
    assert torch.allclose(fade_in + fade_out, torch.ones(1000))
    assert fade_in[0] < 1e-5 and fade_in[-1] > 1 - 1e-5
    assert torch.all(fade_in[1:] >= fade_in[:-1])


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("seconds", [3.3, 10.0, 10.00003, 27.77])
def test_identity_mask_reconstructs_input_across_segment_boundaries(overlap: float, seconds: float) -> None:
    x = signal(seconds, 32000, 2)
    target, source = run(StandIn(1.0), x, 32000, EngineOptions(overlap=overlap, batch_size=2))
    assert target.shape == x.shape
    assert np.array_equal(source, x)
    assert np.max(np.abs(target - x)) < 1e-5


def test_half_mask_halves_everything_including_boundaries() -> None:
    x = signal(25.0, 32000, 1)
    target, _ = run(StandIn(0.5), x, 32000, EngineOptions(overlap=0.25))
    assert np.max(np.abs(target - 0.5 * x)) < 1e-5


def test_one_segment_input_is_processed_as_exactly_one_segment() -> None:
    model = StandIn(1.0)
    x = signal(10.0, 32000, 1)
    run(model, x, 32000, EngineOptions(overlap=0.25, batch_size=4))
    assert model.rows == [1]
    assert torch.equal(model.first[0], torch.from_numpy(x[:, 0]))


@pytest.mark.parametrize("overlap,seconds,expected", [(0.0, 30.0, 3), (0.0, 30.1, 4), (0.25, 10.0, 1),
                                                       (0.25, 17.5, 2), (0.25, 17.6, 3), (0.5, 4.0, 1)])
def test_segment_count(overlap: float, seconds: float, expected: int) -> None:
    model = StandIn(1.0)
    run(model, signal(seconds, 32000, 1), 32000, EngineOptions(overlap=overlap))
    assert sum(model.rows) == expected == segment_count(int(seconds * 32000), EngineOptions(overlap=overlap))


def test_batches_respect_batch_size() -> None:
    model = StandIn(1.0)
    run(model, signal(70.0, 32000, 1), 32000, EngineOptions(overlap=0.0, batch_size=3))
    assert model.rows == [3, 3, 1]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_keeps_length_and_alignment(rate: int, channels: int) -> None:
    seconds = 12.345
    t = np.arange(int(round(seconds * rate))) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 997 * (1 + c / 10) * t) for c in range(channels)], 1).astype(np.float32)
    target, source = run(StandIn(1.0), x, rate, EngineOptions(overlap=0.25), block=12345)
    assert target.shape == x.shape
    assert np.array_equal(source, x)
    inner = slice(rate // 10, -rate // 10)  # away from the file's edges
    err = target[inner] - x[inner]
    snr = 10 * np.log10(np.sum(x[inner] ** 2) / np.sum(err**2))
    assert snr > 50, snr  # a one-sample misalignment would give about 17 dB at this frequency


def test_mask_comes_from_the_downmix_and_applies_to_every_channel() -> None:
    model = StandIn(0.25)
    left = signal(5.0, 32000, 1, seed=1)
    right = signal(5.0, 32000, 1, seed=2)
    x = np.concatenate([left, right], axis=1)
    target, _ = run(model, x, 32000, EngineOptions())
    mono = torch.from_numpy((left[:, 0] + right[:, 0]) / 2)
    assert torch.allclose(model.first[0, : len(mono)], mono, atol=1e-7)
    assert np.max(np.abs(target - 0.25 * x)) < 1e-5


@pytest.mark.parametrize("batch", [1, 2])
def test_backlog_is_bounded_by_segments_not_length(batch: int) -> None:
    """Input read ahead of output written stays within a couple of segments, however long the
    stream: memory does not grow with file length."""
    x = signal(150.0, 32000, 1)
    consumed = written = 0
    backlog: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        nonlocal consumed
        for block in blocks_of(x, 16000):
            consumed += len(block)
            yield block

    def check() -> None:  # at each network call: input read so far, less output written
        backlog.append(consumed - written)

    options = EngineOptions(overlap=0.25, batch_size=batch, prefetch=0)  # read-ahead: tests/test_pipeline.py
    for target, _ in separate_stream(StandIn(1.0, check=check), torch.zeros(1, 4), source(), 32000, options):
        written += len(target)
    assert written == len(x) and len(backlog) == 20 // batch
    assert max(backlog) <= (batch + 1) * SEGMENT_SAMPLES
