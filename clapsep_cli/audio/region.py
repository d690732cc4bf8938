"""Regions: a part of a source in seconds, checked once by one rule wherever it comes from
(``--start/--end``, a reference clip's ``@START-END``, an editor's time range)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clapsep_cli.errors import AudioError, ClapsepError

if TYPE_CHECKING:
    from clapsep_cli.audio.reader import AudioInfo

# How far past a source's length a region may end (seconds); such ends are clamped to the length.
# Editors measure compressed sources with their own decoders, whose lengths can differ from the
# one clapsep decodes by an encoder delay or padding (an MP3 or AAC frame or two).
END_TOLERANCE = 0.1


def check_window(start: float, end: float | None) -> None:
    """Refuse a window that does not satisfy ``0 <= start < end`` (``end`` None: open)."""
    if start < 0:
        raise ClapsepError(f"a region cannot start before 0 s (got {start:g} s)")
    if end is not None and end <= start:
        raise ClapsepError(f"region end ({end:g} s) must come after its start ({start:g} s): "
                           "a region needs 0 <= start < end")


@dataclass(frozen=True)
class Region:
    """A part of a source, in seconds; ``end`` None means to the end."""

    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        check_window(self.start, self.end)

    def frames(self, info: AudioInfo) -> tuple[int, int]:
        """``(first, last)`` frame of the region in ``info``'s file; raises :class:`AudioError`
        if it starts after the file's end or ends after it (beyond :data:`END_TOLERANCE`)."""
        first = int(round(self.start * info.rate))
        last = info.frames if self.end is None else int(round(self.end * info.rate))
        if first >= info.frames:
            raise AudioError(f"{info.path}: region starts at {self.start:g} s, after the end of the file "
                             f"({info.duration:.3f} s)")
        if self.end is not None and last > info.frames and self.end - info.duration <= END_TOLERANCE:
            last = info.frames
        if self.end is not None and last > info.frames:
            raise AudioError(f"{info.path}: region ends at {self.end:g} s, after the end of the file "
                             f"({info.duration:.3f} s)")
        return first, last
