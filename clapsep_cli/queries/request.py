"""Requests: what somebody asked to separate (a query, whether the residual is wanted, how a
removal is made), built by one rule wherever the request comes from: the command line, Python,
Audacity's macros or REAPER's actions. Torch-free, so bridges and ``--help`` stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from clapsep_cli.errors import SettingError
from clapsep_cli.queries import presets
from clapsep_cli.queries.spec import AudioRef, Query

REMOVE_METHODS = ("negative", "subtract")
DEFAULT_REMOVE_METHOD = "negative"


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

    @property
    def tag(self) -> str:
        """What stems and editor tracks are tagged with (see :meth:`Query.slug`)."""
        return self.query.tag


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
                   q.audio_weight if audio_weight is None else audio_weight, given_tag=base.tag)
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
    tag = "without_" + q.tag
    if method == "negative":
        q = Query(q.negative, q.positive, q.negative_audio, q.positive_audio, q.audio_weight, given_tag=tag)
    else:
        q = replace(q, given_tag=tag)
    return Request(q, residual=False, method=method)
