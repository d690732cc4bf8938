"""The library's local executor: a :class:`Separator`, one model on one device that separates
files, folders and in-memory audio (re-exported by :mod:`clapsep_cli.api`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from clapsep_cli.audio.reader import BLOCK, first_non_finite
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.errors import AudioError, SettingError
from clapsep_cli.events.detect import DetectOptions, Detector, Event
from clapsep_cli.jobs.executor import Executor
from clapsep_cli.jobs.plan import check_references
from clapsep_cli.jobs.session import Session
from clapsep_cli.queries.request import Request
from clapsep_cli.queries.spec import Query


class Separator(Session, Executor):
    """One model on one device with fixed engine settings; separates any number of requests.

    ``model``: an installed model's name; ``device``: ``auto`` (CUDA, then MPS, then the CPU),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``precision``: ``auto`` (bf16 where the device
    computes it natively, else fp32), ``fp32`` (the published model's output to float
    precision), ``bf16`` or ``fp16``; ``overlap``: the fraction of each 10 s segment shared with
    the next (0 to 0.5); ``batch_size``: segments per network call (default: 16 on CUDA, else 2);
    ``log`` receives what loading says (a download, say). Raises :class:`ClapsepError` for a
    device or precision this machine does not have.

    The model is loaded on first use, so inputs and outputs are checked before anything
    expensive happens (see :class:`~clapsep_cli.jobs.session.Session`).
    """

    def condition(self, req: Request | Query) -> torch.Tensor:
        """The conditioning vector (1, 1024) of a request: positive and negative CLAP
        embeddings, concatenated. Raises :class:`ClapsepError` for a missing or unreadable
        reference clip, before any model is loaded."""
        query = req.query if isinstance(req, Request) else req
        check_references(query)
        return self.conditioning(query)

    def separate(self, audio: np.ndarray, rate: int, req: Request) -> tuple[np.ndarray, np.ndarray]:
        """Separate in-memory audio: ``audio`` is (frames,) or (frames, channels) at ``rate``.

        Returns ``(stem, residual)`` of the same shape and rate, ``stem + residual == audio`` to
        float precision. The same engine as for files: 10 s segments, overlap, any length.
        Raises :class:`AudioError` for an empty array or a NaN or infinite sample.
        """
        wave = _checked(audio, rate)
        cond = self.condition(req)
        stream = separate_stream(self.model, cond, _blocks(wave.reshape(len(wave), -1)), rate, self.options)
        target = np.concatenate([t for t, _ in stream]).reshape(wave.shape)
        stem = wave - target if req.invert else target
        return stem, wave - stem

    def detect(self, audio: np.ndarray, rate: int, req: Request, options: DetectOptions | None = None
               ) -> list[Event]:
        """Where the sound ``req`` describes occurs in in-memory audio, (frames,) or (frames,
        channels) at ``rate``: the :class:`Event` s, in seconds from its start, that
        :meth:`find` gives for a file. Raises as :meth:`separate` does."""
        wave = _checked(audio, rate)
        detector = Detector(options or DetectOptions(), req.query.slug())
        stream = separate_stream(self.model, self.condition(req), _blocks(wave.reshape(len(wave), -1)), rate,
                                 self.options, model_rate=True)
        events = [e for target, mixture in stream for e in detector.push(target, mixture)]
        return events + detector.finish()


def _checked(audio: np.ndarray, rate: int) -> np.ndarray:
    """``audio`` as float32, refused (:class:`AudioError`) if empty, misshapen or not finite."""
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0 or (wave.ndim == 2 and wave.shape[1] == 0):
        raise AudioError(f"audio must be (frames,) or (frames, channels) with frames > 0 (got {wave.shape})")
    if not isinstance(rate, int) or rate <= 0:
        raise SettingError("rate", f"must be a positive whole number of samples per second (got {rate!r})")
    bad = first_non_finite(wave.reshape(len(wave), -1))
    if bad is not None:
        raise AudioError(f"audio has a non-finite sample at frame {bad[0]} ({bad[0] / rate:.3f} s)")
    return wave


def _blocks(frames: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(frames), BLOCK):
        yield frames[start:start + BLOCK]
