"""Events from score curves: hysteresis, merging, minimum length, the stream's ends, streaming;
and frame scores from the engine's 32 kHz output, seamless across segment boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapsep_cli.audio.dsp import SincResampler
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.stream import Batcher, Source
from clapsep_cli.errors import SettingError
from clapsep_cli.events.detect import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    DetectOptions,
    Detector,
    EventFinder,
    FrameScorer,
)
from clapsep_cli.network.architecture import SAMPLE_RATE, SEGMENT_SAMPLES
from tests.helpers import StandIn, tone

RAW = DetectOptions(threshold=0.5, min_duration=0.0, merge=0.0, smooth=0.0)  # no smoothing, merging or minimum


def find_events(scores: np.ndarray, options: DetectOptions, label: str = "", seconds: float | None = None) -> list:
    """All of a score curve's events: pushed whole into an :class:`EventFinder`, then finished."""
    finder = EventFinder(options, label, FRAME_SECONDS)
    return finder.push(scores) + finder.finish(len(scores) * FRAME_SECONDS if seconds is None else seconds)


def curve(frames: int, *spans: tuple[int, int, float]) -> np.ndarray:
    """A score curve of ``frames`` frames, zero but for ``(first, end, value)`` spans."""
    s = np.zeros(frames)
    for first, end, value in spans:
        s[first:end] = value
    return s


def spans(events: list, frame: float = FRAME_SECONDS) -> list[tuple[int, int]]:
    return [(round(e.start / frame), round(e.end / frame)) for e in events]


def test_an_event_begins_at_the_threshold_and_lasts_down_to_the_release_level() -> None:
    s = curve(100, (10, 20, 0.3), (20, 30, 0.6), (30, 40, 0.3), (40, 50, 0.1), (60, 70, 0.45))
    opts = DetectOptions(threshold=0.5, release=0.25, min_duration=0.0, merge=0.0, smooth=0.0)
    # 10-20 rises only to 0.3 (< threshold): the event starts at 20; it holds through 0.3 (>= 0.25)
    # and ends at 40 where the score falls to 0.1; 60-70 never reaches the threshold.
    events = find_events(s, opts, "x")
    assert spans(events) == [(20, 40)]
    assert events[0].confidence == pytest.approx((10 * 0.6 + 10 * 0.3) / 20)
    assert events[0].label == "x"
    # Without hysteresis (release = threshold) the event is only the part above 0.5.
    same = DetectOptions(threshold=0.5, release=0.5, min_duration=0.0, merge=0.0, smooth=0.0)
    assert spans(find_events(s, same)) == [(20, 30)]
    # By default the release level is the threshold: no hysteresis.
    assert DetectOptions(threshold=0.5).low == 0.5


def test_events_closer_than_merge_become_one_and_their_gap_counts_in_the_confidence() -> None:
    s = curve(200, (10, 20, 0.8), (30, 40, 0.8), (60, 70, 0.8))
    gap10 = 10 * FRAME_SECONDS
    assert spans(find_events(s, RAW)) == [(10, 20), (30, 40), (60, 70)]
    merged = find_events(s, DetectOptions(threshold=0.5, min_duration=0.0, merge=gap10 + 1e-9, smooth=0.0))
    assert spans(merged) == [(10, 40), (60, 70)]
    assert merged[0].confidence == pytest.approx(0.8 * 20 / 30)  # the gap's zeros count
    # A gap exactly as long as merge is not joined (events "closer than" merge are).
    assert len(find_events(s, DetectOptions(threshold=0.5, min_duration=0.0, merge=gap10 - 1e-9, smooth=0.0))) == 3


def test_events_shorter_than_the_minimum_are_dropped_after_merging() -> None:
    s = curve(200, (10, 13, 0.9), (15, 18, 0.9), (100, 103, 0.9))
    opts = DetectOptions(threshold=0.5, min_duration=0.1, merge=0.05, smooth=0.0)
    # 10-13 and 15-18 are 60 ms each, 40 ms apart: merged they last 160 ms and stay; 100-103 goes.
    assert spans(find_events(s, opts)) == [(10, 18)]
    assert find_events(s, DetectOptions(threshold=0.5, min_duration=0.1, merge=0.0, smooth=0.0)) == []


def test_events_at_the_start_and_the_end_of_the_stream() -> None:
    s = curve(100, (0, 10, 0.9), (95, 100, 0.9))
    seconds = 99.5 * FRAME_SECONDS  # the last frame is half a frame long
    events = find_events(s, RAW, seconds=seconds)
    assert events[0].start == 0.0 and events[0].end == pytest.approx(10 * FRAME_SECONDS)
    assert events[1].start == pytest.approx(95 * FRAME_SECONDS) and events[1].end == pytest.approx(seconds)
    # A curve above the threshold throughout is one event over all of it.
    whole = find_events(np.full(50, 0.7), RAW)
    assert [(e.start, e.end) for e in whole] == [(0.0, pytest.approx(50 * FRAME_SECONDS))]


def test_smoothing_is_a_centred_moving_average_that_bridges_a_dip() -> None:
    s = curve(100, (20, 40, 1.0), (41, 60, 1.0))  # a one-frame dip to 0 at 40
    assert spans(find_events(s, RAW)) == [(20, 40), (41, 60)]
    smooth = DetectOptions(threshold=0.5, release=0.5, min_duration=0.0, merge=0.0, smooth=5 * FRAME_SECONDS)
    # A 5-frame average: a step crosses 0.5 where it steps (0.4 one frame before, 0.6 at it),
    # and the dip averages to 0.8.
    assert spans(find_events(s, smooth)) == [(20, 60)]
    # A single spike is averaged down below the threshold.
    assert find_events(curve(50, (25, 26, 1.0)), smooth) == []


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_streamed_scores_give_the_events_of_the_whole_curve(chunk: int) -> None:
    rng = np.random.default_rng(3)
    s = np.clip(np.repeat(rng.random(300), rng.integers(1, 12, 300)) * 1.2 - 0.1, 0, 1)
    opts = DetectOptions(threshold=0.6, release=0.35, min_duration=0.08, merge=0.1, smooth=0.1)
    whole = find_events(s, opts, "q")
    finder = EventFinder(opts, "q")
    streamed = [e for i in range(0, len(s), chunk) for e in finder.push(s[i:i + chunk])]
    streamed += finder.finish(len(s) * FRAME_SECONDS)
    assert len(whole) > 5
    assert [(e.start, e.end) for e in streamed] == [(e.start, e.end) for e in whole]
    assert [e.confidence for e in streamed] == pytest.approx([e.confidence for e in whole])


def test_the_offset_moves_events_to_the_files_time() -> None:
    finder = EventFinder(RAW, "x", offset=12.5)
    events = finder.push(curve(20, (5, 10, 1.0))) + finder.finish(20 * FRAME_SECONDS)
    assert [(e.start, e.end) for e in events] == [(pytest.approx(12.6), pytest.approx(12.7))]


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"threshold": 0.4, "release": 0.5},
                                    {"min_duration": -1.0}, {"merge": float("nan")}, {"smooth": -0.1}])
def test_unusable_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(SettingError):
        DetectOptions(**kwargs)


def test_frame_scores_are_the_estimates_share_of_the_energy() -> None:
    rng = np.random.default_rng(0)
    mixture = rng.standard_normal((FRAME_SAMPLES * 3 + 100, 2)).astype(np.float32) * 0.1
    target = mixture.copy()
    target[:FRAME_SAMPLES] *= 0.5  # a quarter of the energy
    target[FRAME_SAMPLES:2 * FRAME_SAMPLES] = 0
    scorer = FrameScorer()
    scores = np.concatenate([scorer.push(target[i:i + 333], mixture[i:i + 333]) for i in range(0, len(target), 333)]
                            + [scorer.finish()])
    assert scores == pytest.approx([0.25, 0.0, 1.0, 1.0])
    # Near-silence scores low: the energy floor stands in for the mixture's.
    quiet = np.full((FRAME_SAMPLES, 1), 1e-4, np.float32)
    assert FrameScorer().push(quiet, quiet)[0] == pytest.approx(1e-8 / 1e-6)


def _model_rate_pairs(model: StandIn, wave: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = [wave[i:i + 6000] for i in range(0, len(wave), 6000)]
    batcher = Batcher(model, torch.zeros(1, 8), [Source(blocks, rate)], EngineOptions(), model_rate=True)
    pairs = [pair for out in batcher for pair in out.pairs]
    return np.concatenate([t for t, _ in pairs]), np.concatenate([m for _, m in pairs])


def test_at_the_model_rate_the_engine_gives_the_source_resampled_and_its_estimate() -> None:
    wave = tone(23.0, 44100, 2)
    target, mixture = _model_rate_pairs(StandIn(), wave, 44100)
    reference = SincResampler(44100, SAMPLE_RATE)(torch.from_numpy(wave).T).T.numpy()
    assert mixture.shape == target.shape == reference.shape
    np.testing.assert_allclose(mixture, reference, atol=1e-6)
    # At 32 kHz the pairs are exactly what the file-rate path gives.
    wave32 = tone(23.0, SAMPLE_RATE, 1)
    t32, m32 = _model_rate_pairs(StandIn(), wave32, SAMPLE_RATE)
    batcher = Batcher(StandIn(), torch.zeros(1, 8), [Source([wave32], SAMPLE_RATE)], EngineOptions())
    plain = [pair for out in batcher for pair in out.pairs]
    assert np.array_equal(t32, np.concatenate([t for t, _ in plain])) and np.array_equal(m32, wave32)


def test_scores_have_no_seam_where_segments_overlap() -> None:
    # A mask of 0.5 everywhere keeps a quarter of the energy in every frame: crossfaded overlaps
    # that double-counted (or dropped) an estimate would score 1 (or 0) around each boundary.
    wave = tone(35.0, SAMPLE_RATE, 1)
    target, mixture = _model_rate_pairs(StandIn(0.5), wave, SAMPLE_RATE)
    scorer = FrameScorer()
    scores = np.concatenate([scorer.push(target, mixture), scorer.finish()])
    assert len(scores) == -(-len(wave) // FRAME_SAMPLES)
    np.testing.assert_allclose(scores, 0.25, atol=1e-4)


def test_an_event_across_a_segment_boundary_is_found_whole() -> None:
    # Noise throughout, a loud tone from 8.5 s to 12.5 s: segments are 10 s with 1 s of overlap
    # (hop 9 s), so the tone spans the first boundary. The stand-in's mask keeps loud cells.
    rng = np.random.default_rng(1)
    t = np.arange(25 * SAMPLE_RATE) / SAMPLE_RATE
    wave = (0.003 * rng.standard_normal(len(t)) + 0.5 * np.sin(2 * np.pi * 440 * t) * ((t >= 8.5) & (t < 12.5)))
    target, mixture = _model_rate_pairs(StandIn(), wave.astype(np.float32)[:, None], SAMPLE_RATE)
    assert SEGMENT_SAMPLES * 0.9 / SAMPLE_RATE < 12.5  # the second segment starts inside the tone
    detector = Detector(DetectOptions(), "tone")
    events = detector.push(target, mixture) + detector.finish()
    assert len(events) == 1
    # Within the smoothing's half window and the STFT's 32 ms window of the true edges.
    assert events[0].start == pytest.approx(8.5, abs=0.08) and events[0].end == pytest.approx(12.5, abs=0.08)
    assert events[0].confidence > 0.9


def test_an_event_is_given_as_soon_as_nothing_can_merge_with_it() -> None:
    opts = DetectOptions(threshold=0.5, min_duration=0.0, merge=0.2, smooth=0.0)  # merge: 10 frames
    finder = EventFinder(opts, "x")
    assert finder.push(curve(20, (5, 15, 1.0))) == []  # 5 frames after its end: one could still merge
    assert finder.push(np.zeros(4)) == []  # 9 frames
    assert spans(finder.push(np.zeros(1))) == [(5, 15)]  # 10: an event starting next would be 10 frames off
    assert finder.finish(25 * FRAME_SECONDS) == []
