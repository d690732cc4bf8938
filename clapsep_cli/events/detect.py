"""Where a described sound occurs: per-frame scores from a separation, turned into events.

The score of a short frame is the share of the mixture's energy that the separated estimate
holds there (0: none of it is the sound, 1: all of it). Scores are smoothed by a centred moving
average, and events found with two thresholds (hysteresis): an event begins where the score
reaches ``threshold`` and lasts while it stays at or above ``release``; events less than
``merge`` apart become one, and events shorter than ``min_duration`` are dropped. Everything
streams: memory does not grow with the file's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clapsep_cli.errors import SettingError
from clapsep_cli.network.architecture import SAMPLE_RATE

FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms frames at the model's rate
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
# A frame's mixture energy counts as at least this much per sample (-60 dBFS): near-silent
# frames score low instead of dividing noise by noise.
ENERGY_FLOOR = 1e-6


@dataclass(frozen=True)
class Event:
    """One occurrence of the sound: ``start`` and ``end`` in seconds from the file's start,
    ``confidence`` in [0, 1] (the event's mean score), ``label`` the query's tag."""

    start: float
    end: float
    confidence: float
    label: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict[str, float | str]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "duration": round(self.duration, 3),
                "confidence": round(self.confidence, 3), "label": self.label}


@dataclass(frozen=True)
class DetectOptions:
    """How scores become events: ``threshold`` (an event begins at this score), ``release``
    (it ends below this one; default ``threshold``: no hysteresis), ``min_duration`` (seconds;
    shorter events are dropped), ``merge`` (seconds; events closer than this are joined) and
    ``smooth`` (seconds of the centred moving average; 0 for none).

    The defaults are what ``benchmarks/find_accuracy.py`` chose (best event-based F1 on its
    tuning half): threshold 0.35 with no separate release level, a 1 s merge gap; the minimum
    length mattered little there (its events last 0.5 s or more), so it stays short enough for
    a cough or a click (docs/measurements.md#find)."""

    threshold: float = 0.35
    release: float | None = None
    min_duration: float = 0.1
    merge: float = 1.0
    smooth: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise SettingError("threshold", f"must be in (0, 1] (got {self.threshold:g})")
        if self.release is not None and not 0.0 < self.release <= self.threshold:
            raise SettingError("threshold", f"the release level must be in (0, threshold] (got {self.release:g})")
        for name in ("min_duration", "merge", "smooth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingError(name, f"must be a number of seconds, 0 or more (got {value:g})")

    @property
    def low(self) -> float:
        return self.threshold if self.release is None else self.release


def frame_samples(rate: int) -> int:
    """Samples in a frame at ``rate``: 20 ms, to the sample below."""
    return max(rate // 50, 1)


class FrameScorer:
    """Scores of 20 ms frames from aligned blocks of the estimate and the mixture ((n,
    channels) each, at ``rate``): the estimate's share of the mixture's energy, in [0, 1]. A
    frame's energy sums every channel; the last, partial frame is scored by :meth:`finish`."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.frame = frame_samples(rate)
        self._target = np.zeros(0, np.float64)  # per-sample energy not yet a whole frame
        self._mixture = np.zeros(0, np.float64)

    def push(self, target: np.ndarray, mixture: np.ndarray) -> np.ndarray:
        """Scores of the frames these blocks complete."""
        self._target = np.concatenate([self._target, _energy(target)])
        self._mixture = np.concatenate([self._mixture, _energy(mixture)])
        whole = len(self._target) // self.frame * self.frame
        frames = (-1, self.frame)
        scores = _scores(self._target[:whole].reshape(frames), self._mixture[:whole].reshape(frames))
        self._target, self._mixture = self._target[whole:], self._mixture[whole:]
        return scores

    def finish(self) -> np.ndarray:
        """The score of the last, partial frame (none if the blocks filled whole frames)."""
        if not len(self._target):
            return np.zeros(0)
        scores = _scores(self._target[None], self._mixture[None])
        self._target, self._mixture = self._target[:0], self._mixture[:0]
        return scores


def _energy(block: np.ndarray) -> np.ndarray:
    x = block.astype(np.float64).reshape(len(block), -1)
    return np.einsum("ij,ij->i", x, x) / x.shape[1]


def _scores(target: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """(frames,) scores of frames (frames, samples) of per-sample energies."""
    floor = ENERGY_FLOOR * target.shape[1]
    return np.clip(target.sum(axis=1) / np.maximum(mixture.sum(axis=1), floor), 0.0, 1.0)


class EventFinder:
    """Turns a stream of frame scores into events (see the module's docstring).

    ``frame_seconds``: the length of a frame; ``offset``: the time of frame 0 in the file, in
    seconds; ``label``: the events' label. :meth:`push` returns the events that can no longer
    change; :meth:`finish` (given the stream's length in seconds) returns the rest.
    """

    def __init__(self, options: DetectOptions, label: str, frame_seconds: float = FRAME_SECONDS,
                 offset: float = 0.0):
        self.options, self.label, self.frame, self.offset = options, label, frame_seconds, offset
        self._half = round(options.smooth / frame_seconds / 2)  # frames each side of the average
        self._raw = np.zeros(0)  # raw scores from frame _raw_start on
        self._raw_start = 0
        self._smoothed = 0  # frames smoothed so far
        self._open: list[float] | None = None  # [first frame, score sum] of the event in progress
        self._pending: list[float] | None = None  # [first, end frame, score sum] closed, may still merge
        self._gap_sum = 0.0  # scores since the pending event closed

    def push(self, scores: np.ndarray) -> list[Event]:
        """Add the next frames' raw scores."""
        self._raw = np.concatenate([self._raw, np.asarray(scores, np.float64)])
        total = self._raw_start + len(self._raw)
        return self._advance(self._smooth(total - self._half))

    def finish(self, seconds: float) -> list[Event]:
        """End the stream, ``seconds`` long (the last frame may be partial)."""
        events = self._advance(self._smooth(self._raw_start + len(self._raw)))
        end = self._raw_start + len(self._raw)
        if self._open is not None:
            events += self._close(end)
        if self._pending is not None:
            events += self._emit(*self._pending, seconds=seconds)
            self._pending = None
        return events

    def _smooth(self, upto: int) -> np.ndarray:
        """Smoothed scores of frames ``_smoothed`` to ``upto`` (the centred average over the
        frames that exist: shorter at the stream's ends)."""
        lo, h = self._smoothed, self._half
        if upto <= lo:
            return np.zeros(0)
        sums = np.concatenate([[0.0], np.cumsum(self._raw)])
        index = np.arange(lo, upto)
        first = np.maximum(index - h, 0) - self._raw_start
        last = np.minimum(index + h + 1, self._raw_start + len(self._raw)) - self._raw_start
        out = (sums[last] - sums[first]) / (last - first)
        self._smoothed = upto
        keep = max(upto - h - self._raw_start, 0)  # raw frames later averages still need
        self._raw, self._raw_start = self._raw[keep:], self._raw_start + keep
        return out

    def _advance(self, smoothed: np.ndarray) -> list[Event]:
        events: list[Event] = []
        first = self._smoothed - len(smoothed)
        high, low = self.options.threshold, self.options.low
        for i, value in enumerate(smoothed.tolist(), start=first):
            if self._open is None:
                if value >= high:
                    self._open = [i, value]
                    continue
                self._gap_sum += value
                if self._pending is not None and (i + 1 - self._pending[1]) * self.frame >= self.options.merge:
                    events += self._emit(*self._pending)  # no event can begin close enough to merge
                    self._pending = None
            elif value >= low:
                self._open[1] += value
            else:
                events += self._close(i)
                self._gap_sum += value
        return events

    def _close(self, end: int) -> list[Event]:
        """Close the open event at frame ``end``; it merges with the pending one if close."""
        assert self._open is not None
        start, total = self._open
        self._open, out = None, []
        if self._pending is not None:
            p_start, p_end, p_total = self._pending
            if (start - p_end) * self.frame < self.options.merge:
                self._pending, self._gap_sum = [p_start, end, p_total + self._gap_sum + total], 0.0
                return out
            out = self._emit(p_start, p_end, p_total)
        self._pending, self._gap_sum = [start, end, total], 0.0
        return out

    def _emit(self, start: float, end: float, total: float, seconds: float | None = None) -> list[Event]:
        t0 = start * self.frame
        t1 = end * self.frame if seconds is None else min(end * self.frame, seconds)
        if t1 - t0 < self.options.min_duration:
            return []
        confidence = min(max(total / (end - start), 0.0), 1.0)
        return [Event(self.offset + t0, self.offset + t1, confidence, self.label)]


class Detector:
    """Events from aligned blocks of a separated estimate and its mixture ((n, channels) each,
    at ``rate``): a :class:`FrameScorer` feeding an :class:`EventFinder`."""

    def __init__(self, options: DetectOptions, label: str, offset: float = 0.0, rate: int = SAMPLE_RATE):
        self.rate = rate
        self.scorer = FrameScorer(rate)
        self.finder = EventFinder(options, label, self.scorer.frame / rate, offset)
        self.samples = 0

    def push(self, target: np.ndarray, mixture: np.ndarray) -> list[Event]:
        """The events these blocks settle."""
        self.samples += len(target)
        return self.finder.push(self.scorer.push(target, mixture))

    def finish(self) -> list[Event]:
        """The remaining events, at the end of the stream."""
        return self.finder.push(self.scorer.finish()) + self.finder.finish(self.samples / self.rate)

