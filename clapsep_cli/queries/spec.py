"""What a query asks for: texts and reference clips to keep or reject, and the audio/text weight.

Only the description lives here (parsing, validation, file-name tags), so that listing and showing
presets never imports torch; :mod:`clapsep_cli.queries.embedding` turns a :class:`Query` into embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from clapsep_cli.audio.region import check_window
from clapsep_cli.errors import ClapsepError, SettingError


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
        try:
            check_window(start or 0.0, end)
        except ClapsepError as err:
            raise ClapsepError(f"{spec}: {err}") from None
        return cls(Path(path), start, end)

    def __str__(self) -> str:
        if self.start is None and self.end is None:
            return str(self.path)
        return f"{self.path}@{self.start or 0:g}-{'' if self.end is None else f'{self.end:g}'}"

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
    given_tag: str | None = field(default=None, compare=False)  # a preset's or removal's tag

    def __post_init__(self) -> None:
        if not (self.positive or self.negative or self.positive_audio or self.negative_audio):
            raise ClapsepError("empty query: give a description, a reference clip, a negative description or a "
                               "negative reference clip")
        if any(not t.strip() for t in self.positive + self.negative):
            raise ClapsepError("a query text is empty")
        if self.audio_weight is not None and not 0.0 <= self.audio_weight <= 1.0:
            raise SettingError("audio_weight", "must be between 0 and 1")

    @property
    def tag(self) -> str:
        """The query's tag, in stem names and on events: ``dog_barking``, ``without_wind``,
        ``like_ref`` ... (the given tag, else one made from the texts or clips)."""
        if self.given_tag:
            return slugify(self.given_tag)
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
            "audio_weight": self.audio_weight, "label": self.given_tag,  # the JSON key users read
        }


def slugify(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^\w+]+", "_", text.lower(), flags=re.UNICODE).strip("_")
    return (slug[:limit].rstrip("_") or "query")
