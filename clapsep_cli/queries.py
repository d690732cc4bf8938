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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from clapsep_cli import atomic, audio_io
from clapsep_cli.config import ENCODER_RATE
from clapsep_cli.errors import ClapsepError, SettingError

DEFAULT_AUDIO_WEIGHT = 0.5


def parse_time(text: str) -> float:
    """Seconds from ``12.5``, ``1:02.5`` or ``01:02:03.250``."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
        raise ClapsepError(f"bad time {text!r}: use seconds or hh:mm:ss.fff")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ClapsepError(f"bad time {text!r}: use seconds or hh:mm:ss.fff") from None
    if any(v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        raise ClapsepError(f"bad time {text!r}: use seconds or hh:mm:ss.fff")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


@dataclass(frozen=True)
class AudioRef:
    """A reference clip: a file and an optional region, written ``FILE[@START-END]``."""

    path: Path
    start: float | None = None
    end: float | None = None

    @classmethod
    def parse(cls, spec: str) -> AudioRef:
        path, region = spec, None
        match = re.fullmatch(r"(.+)@([0-9:.]*)-([0-9:.]*)", spec)
        if match and not Path(spec).exists():
            path, region = match.group(1), (match.group(2), match.group(3))
        start = parse_time(region[0]) if region and region[0] else None
        end = parse_time(region[1]) if region and region[1] else None
        if start is not None and end is not None and end <= start:
            raise ClapsepError(f"{spec}: the region's end must come after its start")
        return cls(Path(path), start, end)

    def __str__(self) -> str:
        if self.start is None and self.end is None:
            return str(self.path)
        return f"{self.path}@{self.start or 0:g}-{'' if self.end is None else f'{self.end:g}'}"

    def load48(self) -> torch.Tensor:
        """The clip as mono 48 kHz samples."""
        mono = audio_io.read_mono(self.path, ENCODER_RATE, self.start or 0.0, self.end)
        if not torch.any(mono != 0):
            raise ClapsepError(f"{self}: the reference clip is silent")
        return mono

    def cache_key(self) -> str:
        stat = self.path.stat()
        return f"audio\0{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.start}\0{self.end}"


@dataclass(frozen=True)
class Query:
    """Positive and negative texts and reference clips, plus the audio/text weight."""

    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    positive_audio: tuple[AudioRef, ...] = ()
    negative_audio: tuple[AudioRef, ...] = ()
    audio_weight: float | None = None
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (self.positive or self.negative or self.positive_audio or self.negative_audio):
            raise ClapsepError("empty query: give a description, a reference clip, a negative description or a "
                               "negative reference clip")
        if any(not t.strip() for t in self.positive + self.negative):
            raise ClapsepError("a query text is empty")
        if self.audio_weight is not None and not 0.0 <= self.audio_weight <= 1.0:
            raise SettingError("audio_weight", "must be between 0 and 1")

    @property
    def negative_only(self) -> bool:
        return not (self.positive or self.positive_audio)

    def slug(self) -> str:
        """File-name tag: ``dog_barking``, ``without_wind``, ``like_ref`` ..."""
        if self.label:
            return slugify(self.label)
        if self.positive:
            return slugify("+".join(self.positive))
        if self.positive_audio:
            return "like_" + slugify(self.positive_audio[0].path.stem)
        names = list(self.negative) or [self.negative_audio[0].path.stem]
        return "without_" + slugify("+".join(names))

    def describe(self) -> dict:
        return {
            "positive": list(self.positive), "negative": list(self.negative),
            "positive_audio": [str(a) for a in self.positive_audio],
            "negative_audio": [str(a) for a in self.negative_audio],
            "audio_weight": self.audio_weight, "label": self.label,
        }


def slugify(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^\w+]+", "_", text.lower(), flags=re.UNICODE).strip("_")
    return (slug[:limit].rstrip("_") or "query")


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


def audio_embedding(model: Embedder, ref: AudioRef, cache: EmbeddingCache) -> torch.Tensor:
    if not ref.path.is_file():
        raise ClapsepError(f"{ref.path}: no such file (reference clip)")
    key = ref.cache_key()
    emb = cache.get(key)
    if emb is None:
        emb = model.embed_audio(ref.load48())
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
    """The conditioning vector (1, 2 * dim) for ``query``."""
    sides = []
    for texts, refs in ((query.positive, query.positive_audio), (query.negative, query.negative_audio)):
        t = text_embeddings(model, list(texts), cache) if texts else None
        a = torch.stack([audio_embedding(model, r, cache) for r in refs]) if refs else None
        sides.append(combine(t, a, query.audio_weight, dim))
    return torch.cat(sides)[None]
