"""The library's local executor: a :class:`Separator`, which holds a
:class:`~clapsep_cli.jobs.session.Session` (one model on one device) and separates files,
folders and in-memory audio with it, in this process (re-exported by :mod:`clapsep_cli.api`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from clapsep_cli.audio.reader import BLOCK, first_non_finite
from clapsep_cli.engine.options import DEFAULT_OVERLAP, EngineOptions
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.errors import AudioError, SettingError
from clapsep_cli.events.detect import DetectOptions, Detector, Event
from clapsep_cli.jobs.data import Job
from clapsep_cli.jobs.executor import Executor
from clapsep_cli.jobs.plan import check_references
from clapsep_cli.jobs.progress import Progress
from clapsep_cli.jobs.run import Runner
from clapsep_cli.jobs.session import Session
from clapsep_cli.models import store
from clapsep_cli.models.loaded import ClapSep
from clapsep_cli.models.precision import DEFAULT_PRECISION
from clapsep_cli.queries.request import Request
from clapsep_cli.queries.spec import Query


class Separator(Executor):
    """One model on one device with fixed engine settings; separates any number of requests.

    ``model``: an installed model's name; ``device``: ``auto`` (CUDA, then MPS, then the CPU),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``precision``: ``auto`` (bf16 where the device
    computes it natively, else fp32), ``fp32`` (the published model's output to float
    precision), ``bf16`` or ``fp16``; ``overlap``: the fraction of each 10 s segment shared with
    the next (0 to 0.5); ``batch_size``: segments per network call (default: 16 on CUDA, else 2);
    ``log`` receives what loading says (a download, say). Raises :class:`ClapsepError` for a
    device or precision this machine does not have.

    The model is loaded on first use, so inputs and outputs are checked before anything
    expensive happens: the separator's :attr:`session`
    (:class:`~clapsep_cli.jobs.session.Session`) holds it.
    """

    holds_model = True

    def __init__(self, model: str = store.DEFAULT_MODEL, *, device: str = "auto",
                 precision: str = DEFAULT_PRECISION, overlap: float = DEFAULT_OVERLAP,
                 batch_size: int | None = None, log: Callable[[str], None] | None = None):
        self.session = Session(model, device=device, precision=precision, overlap=overlap, batch_size=batch_size,
                               log=log)

    @classmethod
    def of(cls, session: Session) -> Separator:
        """A separator running jobs with ``session``."""
        separator = cls.__new__(cls)
        separator.session = session
        return separator

    def with_engine(self, overlap: float, batch_size: int | None) -> Separator:
        """A separator on this one's model (loaded once, shared) with other engine settings."""
        return Separator.of(self.session.with_engine(overlap, batch_size))

    # What the session holds, read through the separator.
    @property
    def model_name(self) -> str:
        return self.session.model_name

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def precision(self) -> str:
        return self.session.precision

    @property
    def options(self) -> EngineOptions:
        return self.session.options

    @property
    def loaded(self) -> bool:
        return self.session.loaded

    @property
    def model(self) -> ClapSep:
        """The loaded model (loading it on first use)."""
        return self.session.model

    def run(self, job: Job, progress: Progress | None = None) -> Job:
        """Separate the planned job's pending files here (loading the model only if there are any)."""
        session = self.session
        started = time.perf_counter()
        job.model, job.precision, job.device = session.model_name, session.precision, str(session.device)
        if job.pending:
            before, counts = session.query_seconds, session.embedding_counts()
            cond = session.conditioning(job.request.query)
            job.query_seconds = session.query_seconds - before
            Runner(session.model, cond, session.options, progress, invert=job.request.invert).run(job.results)
            after = session.embedding_counts()  # this job's, however many the session ran before
            job.embeddings = {**after, **{k: after[k] - counts[k] for k in ("from_cache", "computed")}}
        job.model_loaded, job.load_seconds = session.loaded, session.load_seconds
        job.total_seconds += time.perf_counter() - started
        return job

    def condition(self, req: Request | Query) -> torch.Tensor:
        """The conditioning vector (1, 1024) of a request: positive and negative CLAP
        embeddings, concatenated. Raises :class:`ClapsepError` for a missing or unreadable
        reference clip, before any model is loaded."""
        query = req.query if isinstance(req, Request) else req
        check_references(query)
        return self.session.conditioning(query)

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
        detector = Detector(options or DetectOptions(), req.query.tag)
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
