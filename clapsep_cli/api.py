"""The library API: load a model once, then separate files, folders or in-memory audio.

This is the one place where what somebody asked for becomes a query, a model and a job; the
command line, the Audacity and REAPER bridges, ``evaluate`` and ``embed`` all go through it.

    >>> from clapsep_cli.api import Separator, request
    >>> sep = Separator(device="cpu")                       # the default model, loaded on first use
    >>> job = sep.extract(["walk.wav"], request("dog barking", negative=["people talking"]))
    >>> job.results[0].target
    PosixPath('walk.dog_barking.wav')
    >>> stem, residual = sep.separate(wave, 44100, request(preset="dialogue"))  # (frames, channels)

Queries are built by :func:`request` (texts, a preset, reference clips, negatives) and turned
into removals by :func:`removal`; the same rules hold wherever a request comes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapsep_cli.audio.reader import BLOCK
from clapsep_cli.engine.options import DEFAULT_OVERLAP, EngineOptions, default_batch_size, default_prefetch
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.jobs.plan import FileResult, OutputPlan, Region, check_query_audio, collect_inputs, plan_job
from clapsep_cli.jobs.run import Extractor, Progress
from clapsep_cli.models import store
from clapsep_cli.queries import presets
from clapsep_cli.queries.embedding import EmbeddingCache, condition
from clapsep_cli.queries.spec import AudioRef, Query

REMOVE_METHODS = ("negative", "subtract")
DEFAULT_REMOVE_METHOD = "negative"
DEFAULT_PRECISION = "auto"


@dataclass(frozen=True)
class Request:
    """What to separate: the query, whether a residual is wanted by default, and for a removal
    how it is made (``method``; ``invert`` writes source minus the separated sound as the stem)."""

    query: Query
    residual: bool = False
    method: str | None = None

    @property
    def invert(self) -> bool:
        return self.method == "subtract"


def request(*texts: str, preset: str | presets.Preset | None = None, negative: Sequence[str] = (),
            query_audio: Sequence[str | AudioRef] = (), negative_audio: Sequence[str | AudioRef] = (),
            audio_weight: float | None = None) -> Request:
    """A request from descriptions (``texts``), a preset (a name or a loaded one), negatives and
    reference clips (``FILE[@START-END]``).

    A preset and explicit parts combine: each side holds the preset's items plus the given ones,
    an explicit ``audio_weight`` wins, the stem is tagged with the preset's suffix and the preset
    decides whether a residual is wanted. Empty texts are ignored.
    """
    base = presets.load(preset) if isinstance(preset, str) else preset

    def refs(items: Sequence[str | AudioRef]) -> tuple[AudioRef, ...]:
        return tuple(i if isinstance(i, AudioRef) else AudioRef.parse(i) for i in items)

    given = dict(positive=tuple(t for t in texts if t.strip()), negative=tuple(negative),
                 positive_audio=refs(query_audio), negative_audio=refs(negative_audio))
    if base is None:
        return Request(Query(**given, audio_weight=audio_weight))
    q = base.query
    merged = Query(q.positive + given["positive"], q.negative + given["negative"],
                   q.positive_audio + given["positive_audio"], q.negative_audio + given["negative_audio"],
                   q.audio_weight if audio_weight is None else audio_weight, label=base.suffix)
    return Request(merged, residual=base.residual)


def removal(req: Request, method: str = DEFAULT_REMOVE_METHOD) -> Request:
    """The request that keeps everything but ``req``'s sound, tagged ``without_<query>``.

    ``negative`` asks the model directly for the rest (the sides swap: the described sound
    becomes the negative, protected sounds the positive); ``subtract`` separates the sound and
    keeps source minus it. The residual (what was removed) is only written when asked for.
    """
    if method not in REMOVE_METHODS:
        raise SettingError("method", f"must be one of {', '.join(REMOVE_METHODS)} (got {method!r})")
    q = req.query
    label = "without_" + q.slug()
    if method == "negative":
        q = Query(q.negative, q.positive, q.negative_audio, q.positive_audio, q.audio_weight, label=label)
    else:
        q = replace(q, label=label)
    return Request(q, residual=False, method=method)


@dataclass
class Job:
    """The outcome of :meth:`Separator.extract`: one result per input, and what the job cost."""

    request: Request
    results: list[FileResult]
    stems_left_out: list[Path]
    plan: OutputPlan
    region: Region
    model_loaded: bool = False
    load_seconds: float = 0.0
    query_seconds: float = 0.0
    total_seconds: float = 0.0
    embeddings: dict[str, Any] = field(default_factory=dict)
    model: str = store.DEFAULT_MODEL
    device: str | None = None
    precision: str = DEFAULT_PRECISION

    @property
    def pending(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "pending"]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_json(self, name: Callable[[str], str] = str) -> dict[str, Any]:
        """The job as JSON-ready data (what ``--json`` prints and ``--report`` writes); settings
        in messages are spelled by ``name``."""
        data: dict[str, Any] = {"query": self.request.query.describe()}
        if self.request.method:
            data["method"] = self.request.method
        if self.stems_left_out:
            data["stems_left_out"] = [str(p) for p in self.stems_left_out]
        if self.embeddings:
            data["query_embeddings"] = {**self.embeddings, "seconds": round(self.query_seconds, 3)}
        data.update({
            "model": self.model, "model_loaded": self.model_loaded,
            "device": self.device if self.model_loaded else None, "precision": self.precision,
            "results": [r.to_json(name) for r in self.results],
            "failed": len(self.failed),
            "timings": {"model_load_seconds": round(self.load_seconds, 3),
                        "total_seconds": round(self.total_seconds, 3)},
        })
        return data


class Separator:
    """One model on one device with fixed engine settings; separates any number of requests.

    The model is loaded (and the default model downloaded when missing and online) on first
    use, so inputs and outputs are checked before anything expensive happens. Query embeddings
    are cached per model in the store, so a repeated query needs no CLAP encoder.
    """

    def __init__(self, model: str = store.DEFAULT_MODEL, *, device: str = "auto",
                 precision: str = DEFAULT_PRECISION, overlap: float = DEFAULT_OVERLAP,
                 batch_size: int | None = None, log: Callable[[str], None] | None = None):
        from clapsep_cli.models.loaded import resolve_device, resolve_precision

        self.model_name = model
        self.device = resolve_device(device)
        self.options = EngineOptions(overlap=overlap, batch_size=batch_size or default_batch_size(self.device),
                                     prefetch=default_prefetch(self.device))
        self.precision = resolve_precision(precision, self.device)  # "auto" becomes what this device runs
        self.log = log or (lambda _msg: None)
        self._model: Any = None
        self._cache: EmbeddingCache | None = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded :class:`clapsep_cli.model.ClapSep` (loading it on first use)."""
        if self._model is None:
            from clapsep_cli.models.download import ensure_model
            from clapsep_cli.models.loaded import ClapSep

            started = time.perf_counter()
            installed = ensure_model(self.model_name, log=self.log)
            self._model = ClapSep(installed, self.device, self.precision)
            self.load_seconds = time.perf_counter() - started
        return self._model

    @property
    def cache(self) -> EmbeddingCache:
        """Query embeddings of this model, on disk under the store."""
        if self._cache is None:
            self._cache = EmbeddingCache(store.store_root() / "embeddings", self.model.installed.fingerprint)
        return self._cache

    def condition(self, req: Request | Query) -> torch.Tensor:
        """The conditioning vector (1, 1024) of a request, from the cache where possible."""
        query = req.query if isinstance(req, Request) else req
        check_query_audio(query)
        return condition(self.model, query, self.cache, self.model.cfg.joint_embed_dim)

    def plan(self, paths: Iterable[str | Path], req: Request, plan: OutputPlan | None = None,
             region: Region | None = None, pattern: str | None = None, include_stems: bool = False) -> Job:
        """Check every input and decide every output, without loading the model.

        Bad inputs become failed results and inputs whose stems exist skipped ones; raises
        :class:`ClapsepError` only for what stops the whole job (no inputs, output collisions).
        """
        started = time.perf_counter()
        plan = plan or OutputPlan(residual=req.residual)
        region = region or Region()
        inputs, stems = collect_inputs([Path(p) for p in paths], pattern, include_stems)
        if not inputs:
            raise ClapsepError("no audio files found in the given folders"
                               + (f" ({len(stems)} stems of earlier runs left out; {{setting}} takes them)"
                                  if stems else ""), setting="include_stems" if stems else None)
        if plan.output is not None and len(inputs) > 1:
            raise SettingError("output", "names one stem; with several inputs name a folder or a name template")
        check_query_audio(req.query)
        job = Job(req, plan_job(inputs, req.query, plan, region), stems, plan, region, model=self.model_name,
                  device=str(self.device), precision=self.precision)
        job.total_seconds = time.perf_counter() - started
        return job

    def run(self, job: Job, progress: Progress | None = None) -> Job:
        """Separate the planned job's pending files (loading the model if there are any)."""
        started = time.perf_counter()
        if job.pending:
            extractor = Extractor(self.model, job.request.query, self.options, job.plan, self.cache, job.region,
                                  progress, invert=job.request.invert)
            extractor.run(job.results)
            job.query_seconds = extractor.query_seconds
            job.embeddings = {"from_cache": self.cache.hits, "computed": self.cache.misses,
                              "text_encoder_loaded": self.model.text_encoder_loaded}
        job.model_loaded, job.load_seconds = self.loaded, self.load_seconds
        job.total_seconds += time.perf_counter() - started
        return job

    def extract(self, paths: Iterable[str | Path], req: Request, plan: OutputPlan | None = None,
                region: Region | None = None, pattern: str | None = None, include_stems: bool = False,
                progress: Progress | None = None) -> Job:
        """Separate every file (and every audio file under each folder) into stems on disk:
        :meth:`plan`, then :meth:`run`. A job whose stems all exist never loads the model."""
        return self.run(self.plan(paths, req, plan, region, pattern, include_stems), progress)

    def separate(self, audio: np.ndarray, rate: int, req: Request) -> tuple[np.ndarray, np.ndarray]:
        """Separate in-memory audio: ``audio`` is (frames,) or (frames, channels) at ``rate``.

        Returns ``(stem, residual)`` of the same shape and rate, ``stem + residual == audio`` to
        float precision. The same engine as for files: 10 s segments, overlap, any length.
        """
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim not in (1, 2) or wave.shape[0] == 0 or (wave.ndim == 2 and wave.shape[1] == 0):
            raise AudioError(f"audio must be (frames,) or (frames, channels) with frames > 0 (got {wave.shape})")
        if not isinstance(rate, int) or rate <= 0:
            raise SettingError("rate", f"must be a positive whole number of samples per second (got {rate!r})")
        frames = wave.reshape(len(wave), -1)
        bad = np.flatnonzero(~np.isfinite(frames).all(axis=1))
        if len(bad):
            raise AudioError(f"audio has a non-finite sample at frame {bad[0]} ({bad[0] / rate:.3f} s)")
        cond = self.condition(req)
        stream = separate_stream(self.model, cond, _blocks(frames), rate, self.options)
        target = np.concatenate([t for t, _ in stream]).reshape(wave.shape)
        stem = wave - target if req.invert else target
        return stem, wave - stem


def _blocks(frames: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(frames), BLOCK):
        yield frames[start:start + BLOCK]
