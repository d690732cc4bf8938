"""A session: one model on one device with fixed engine settings, loaded on first use, and the
one place a query becomes its conditioning vector (:meth:`Session.conditioning`; runners take
it ready).

A session runs nothing itself: the local executor, :class:`~clapsep_cli.jobs.separator.Separator`,
holds one and runs planned jobs with it (so do the service's separators); each Ray
:class:`~clapsep_cli.jobs.cluster.Worker` holds one and runs the files the driver hands it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from clapsep_cli.engine.options import DEFAULT_OVERLAP, for_device
from clapsep_cli.models import store
from clapsep_cli.models.loaded import ClapSep, load_model, resolve_device, resolve_precision
from clapsep_cli.models.precision import DEFAULT_PRECISION
from clapsep_cli.queries.embedding import EmbeddingCache, condition
from clapsep_cli.queries.spec import Query


class Session:
    """One model on one device with fixed engine settings.

    ``device`` and ``precision`` are resolved at once (``auto`` becomes what this machine runs);
    the model is loaded, and the default model downloaded when missing and online, on first use,
    so inputs and outputs are checked before anything expensive happens. Query embeddings are
    cached per model in the store, so a repeated query needs no CLAP encoder.
    """

    def __init__(self, model: str = store.DEFAULT_MODEL, *, device: str = "auto",
                 precision: str = DEFAULT_PRECISION, overlap: float = DEFAULT_OVERLAP,
                 batch_size: int | None = None, log: Callable[[str], None] | None = None):
        self.model_name = model
        self.device = resolve_device(device)
        self.options = for_device(self.device, overlap, batch_size)
        self.precision = resolve_precision(precision, self.device)
        self.log = log or (lambda _msg: None)
        self._model: ClapSep | None = None
        self._cache: EmbeddingCache | None = None
        self.load_seconds = 0.0
        self.query_seconds = 0.0

    def with_engine(self, overlap: float, batch_size: int | None) -> Session:
        """A session on this one's model (loaded once, shared) with other engine settings."""
        self.cache  # noqa: B018 - model and embedding cache loaded before the copy, so both hold the same
        other = copy.copy(self)
        other.options = for_device(self.device, overlap, batch_size)
        return other

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> ClapSep:
        """The loaded :class:`~clapsep_cli.models.loaded.ClapSep` (loading it on first use)."""
        if self._model is None:
            self._model, self.load_seconds = load_model(self.model_name, self.device, self.precision, self.log)
        return self._model

    @property
    def cache(self) -> EmbeddingCache:
        """Query embeddings of this model, on disk under the store."""
        if self._cache is None:
            self._cache = EmbeddingCache(store.store_root() / "embeddings", self.model.installed.fingerprint)
        return self._cache

    def conditioning(self, query: Query) -> torch.Tensor:
        """The conditioning vector (1, 1024) of ``query``, from the cache where possible. Its
        reference clips must have been checked (:func:`~clapsep_cli.jobs.plan.check_references`)."""
        started = time.perf_counter()
        vector = condition(self.model, query, self.cache, self.model.cfg.joint_embed_dim)
        self.query_seconds += time.perf_counter() - started
        return vector

    def embedding_counts(self) -> dict[str, Any]:
        """Where this session's query embeddings came from, and whether the text encoder loaded."""
        return {"from_cache": self.cache.hits, "computed": self.cache.misses,
                "text_encoder_loaded": self.model.text_encoder_loaded}
