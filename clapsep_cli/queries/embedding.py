"""Queries: what to keep and what to reject, as text and/or reference audio.

A query becomes the model's conditioning vector ``concat(positive, negative)`` of two 512-d
CLAP embeddings (a missing side is zeros), each built by one rule:

* several texts on one side: the normalised mean of their unit embeddings (two identical
  texts give that text's embedding);
* several reference clips: the same, over their audio embeddings;
* texts and clips on one side: ``w * audio + (1 - w) * text``, normalised (``w`` is the audio
  weight, 0.5 unless set): the convex text/audio mix the model was trained on.

Every side ends up unit-norm, as a single query in the official evaluation path is.
Embeddings are cached on disk per model fingerprint, so a repeated query (a preset, say) needs
neither the text encoder nor the audio encoder.

The query itself (:class:`Query`, :class:`AudioRef`) is described in the torch-free
:mod:`clapsep_cli.queries.spec`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from clapsep_cli.audio import atomic
from clapsep_cli.audio.reader import read_mono
from clapsep_cli.errors import ClapsepError
from clapsep_cli.network.architecture import ENCODER_RATE
from clapsep_cli.queries.spec import AudioRef, Query

DEFAULT_AUDIO_WEIGHT = 0.5


class Embedder(Protocol):
    """What query resolution needs from a model."""

    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...

    def embed_audio(self, wave48: torch.Tensor) -> torch.Tensor: ...


class EmbeddingCache:
    """Unit-norm query embeddings on disk, one .npy per (model fingerprint, query item)."""

    def __init__(self, root: Path | None, fingerprint: str):
        self.dir = None if root is None else root / fingerprint[:32]
        self.hits = self.misses = 0

    def _file(self, key: str) -> Path | None:
        if self.dir is None:
            return None
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".npy")

    def get(self, key: str) -> torch.Tensor | None:
        """The cached embedding for ``key``, or None (counted as a hit or a miss)."""
        file = self._file(key)
        value = None
        if file is not None and file.is_file():
            try:
                value = torch.from_numpy(np.load(file))
            except (OSError, ValueError):
                value = None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        file = self._file(key)
        if file is None:
            return
        try:
            with atomic.writing(file) as tmp, open(tmp, "wb") as f:
                np.save(f, value.numpy().astype(np.float32))
        except OSError:
            pass  # the cache is an optimisation; a read-only store still works


def text_embeddings(model: Embedder, texts: list[str], cache: EmbeddingCache) -> torch.Tensor:
    """(N, 512) embeddings; only texts missing from the cache reach the text encoder."""
    found = {t: cache.get("text\0" + t) for t in texts}
    missing = [t for t in dict.fromkeys(texts) if found[t] is None]
    if missing:
        for t, emb in zip(missing, model.embed_texts(missing)):
            cache.put("text\0" + t, emb)
            found[t] = emb
    return torch.stack([found[t] for t in texts])


def load_reference(ref: AudioRef) -> torch.Tensor:
    """The reference clip as mono 48 kHz samples (the audio encoder's input)."""
    mono = read_mono(ref.path, ENCODER_RATE, ref.start or 0.0, ref.end)
    if not torch.any(mono != 0):
        raise ClapsepError(f"{ref}: the reference clip is silent")
    return mono


def audio_embedding(model: Embedder, ref: AudioRef, cache: EmbeddingCache) -> torch.Tensor:
    """The unit-norm audio embedding (512,) of a reference clip, from the cache where possible.
    The clip must have been checked (see :func:`clapsep_cli.jobs.plan.check_references`)."""
    key = ref.cache_key()
    emb = cache.get(key)
    if emb is None:
        emb = model.embed_audio(load_reference(ref))
        cache.put(key, emb)
    return emb


def combine(texts: torch.Tensor | None, audios: torch.Tensor | None, audio_weight: float | None,
            dim: int) -> torch.Tensor:
    """One side of the condition from its text rows and audio rows (the rule in the module doc)."""
    parts = []
    if texts is not None and len(texts):
        parts.append(F.normalize(texts.mean(0), dim=-1))
    if audios is not None and len(audios):
        parts.append(F.normalize(audios.mean(0), dim=-1))
    if not parts:
        return torch.zeros(dim)
    if len(parts) == 1:
        return parts[0]
    w = DEFAULT_AUDIO_WEIGHT if audio_weight is None else audio_weight
    return F.normalize(w * parts[1] + (1 - w) * parts[0], dim=-1)


def condition(model: Embedder, query: Query, cache: EmbeddingCache, dim: int) -> torch.Tensor:
    """The conditioning vector (1, 2 * dim) for ``query``: its positive side, then its negative
    side, each by the rule in the module doc (a missing side is zeros)."""
    sides = []
    for texts, refs in ((query.positive, query.positive_audio), (query.negative, query.negative_audio)):
        t = text_embeddings(model, list(texts), cache) if texts else None
        a = torch.stack([audio_embedding(model, r, cache) for r in refs]) if refs else None
        sides.append(combine(t, a, query.audio_weight, dim))
    return torch.cat(sides)[None]
