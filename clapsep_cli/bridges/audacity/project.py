"""The Audacity project seen through mod-script-pipe: tracks, labels, selections, export."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from clapsep_cli.bridges.audacity.pipe import AudacityPipe
from clapsep_cli.errors import ClapsepError

WAV_ENCODING = "/FileFormats/ExportFormat_SF1_Type/WAV_10000"  # libsndfile subtype of Audacity's WAV export
SKIP_LEADING_SILENCE = "/AudioFiles/SkipSilenceAtBeginning"
DEFAULTS = {WAV_ENCODING: "0", SKIP_LEADING_SILENCE: "0"}  # what Audacity does with the setting unset
SF_FORMAT_FLOAT = 6


@dataclass(frozen=True)
class Track:
    """A track as ``GetInfo: Type=Tracks`` lists it (stereo tracks count once)."""

    index: int
    name: str
    kind: str
    selected: bool
    channels: int = 0
    start: float = 0.0
    end: float = 0.0
    mute: bool = False
    solo: bool = False


@dataclass(frozen=True)
class Label:
    """A label; ``index`` counts over all label tracks, as ``SetLabel: Label=`` does."""

    index: int
    track: int
    start: float
    end: float
    text: str


def tracks(pipe: AudacityPipe) -> list[Track]:
    """The project's tracks, in order."""
    out = []
    for i, item in enumerate(_json(pipe, "GetInfo: Type=Tracks Format=JSON")):
        out.append(Track(i, str(item.get("name", "")), str(item.get("kind", "")), bool(item.get("selected")),
                         int(item.get("channels", 0)), float(item.get("start", 0.0)), float(item.get("end", 0.0)),
                         bool(item.get("mute")), bool(item.get("solo"))))
    return out


def labels(pipe: AudacityPipe) -> list[Label]:
    """Every label, numbered as ``SetLabel`` numbers them."""
    out: list[Label] = []
    for track, items in _json(pipe, "GetInfo: Type=Labels Format=JSON"):
        for start, end, text in items:
            out.append(Label(len(out), int(track), float(start), float(end), str(text)))
    return out


def chosen_sources(now: list[Track]) -> list[Track]:
    """The tracks Audacity would export: the selected audio tracks that are heard."""
    chosen = [t for t in now if t.kind == "wave" and t.selected]
    if not chosen:
        raise ClapsepError("no audio track is selected in Audacity: drag over the part of a track to extract")
    soloing = any(t.solo for t in now if t.kind == "wave")
    chosen = [t for t in chosen if (t.solo if soloing else not t.mute)]
    if not chosen:
        raise ClapsepError("the selected tracks are muted (or others are soloed), so Audacity would export nothing")
    return chosen


def export_settings(pipe: AudacityPipe) -> dict[str, str]:
    """The user's values of the settings :func:`export_selection` sets for a while (Audacity's
    default for one never set)."""
    return {name: DEFAULTS[name] if value is None else value
            for name, value in ((name, pipe.preference(name)) for name in DEFAULTS)}


def export_selection(pipe: AudacityPipe, path: Path, channels: int, settings: dict[str, str] | None = None) -> Path:
    """Export the selected span of the selected tracks as 32-bit float WAV, from the very start
    of the selection (Audacity can be set to skip leading silence); the user's settings are
    put back afterwards (``settings``: as :func:`export_settings` read them, to spare asking
    again; read now if None)."""
    settings = export_settings(pipe) if settings is None else settings
    with _preferences(pipe, {WAV_ENCODING: str(SF_FORMAT_FLOAT), SKIP_LEADING_SILENCE: "0"}, settings):
        pipe.command(f'Export2: Filename="{path}" NumChannels={channels}')
    if _frames(path) == 0:
        raise ClapsepError(EMPTY_RANGE)
    return path


def check_selection(pipe: AudacityPipe, folder: Path) -> None:
    """Refuse a selection without a time range with audio in it, before anything runs on it
    (Audacity 3.2 cannot report the selection, and its Nyquist Prompt answers a point selection
    with a modal dialog). One export with the user's settings says so in the usual case; only
    an export without a frame, which skipped leading silence could cause, is made again as
    :func:`export_selection` makes it."""
    path = folder / "check.wav"
    try:
        pipe.command(f'Export2: Filename="{path}" NumChannels=1')
        if _frames(path) > 0:
            return
    except ClapsepError:
        pass  # a setting of the user's that this export cannot use: the exact one tells
    export_selection(pipe, path, 1)


EMPTY_RANGE = "no time range with audio is selected in Audacity: drag over the part of a track to extract"


def _frames(path: Path) -> int:
    try:
        return sf.info(str(path)).frames
    except (sf.LibsndfileError, RuntimeError):
        raise ClapsepError(f"Audacity did not export the selection to {path}") from None


@contextlib.contextmanager
def _preferences(pipe: AudacityPipe, values: dict[str, str], previous: dict[str, str]) -> Iterator[None]:
    """Set Audacity preferences to ``values`` for a while: only those whose ``previous`` values
    differ are set, and put back."""
    changed = {name: value for name, value in previous.items() if value != values[name]}
    try:
        for name in changed:
            pipe.command(f'SetPreference: Name="{name}" Value="{values[name]}"')
        yield
    finally:
        for name, value in changed.items():
            pipe.command(f'SetPreference: Name="{name}" Value="{value}"')


@contextlib.contextmanager
def kept_selection(pipe: AudacityPipe, now: list[Track] | None) -> Iterator[list[int]]:
    """Give back the time selection (through Audacity's stored selection, exactly; Audacity 3.2
    leaves a selection of 0-0 s unrestored) and, given the tracks ``now``, their track
    selection. Inside, a list to which the caller adds the number of tracks it added (so the
    project need not be asked again); the track selection is left alone without ``now``."""
    pipe.command("SelSave:")
    added: list[int] = []
    try:
        yield added
    finally:
        if now is not None:
            count = len(now) + sum(added) if added else len(tracks(pipe))
            select_tracks(pipe, [t.index for t in now if t.selected], count)
        pipe.command("SelRestore:")


def select_tracks(pipe: AudacityPipe, indices: list[int], count: int) -> None:
    """Select exactly the tracks ``indices`` of ``count`` (the time selection stays)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if not runs:
        pipe.command(f"SelectTracks: Track=0 TrackCount={count} Mode=Remove")
    for n, run in enumerate(runs):
        pipe.command(f"SelectTracks: Track={run[0]} TrackCount={len(run)} Mode={'Set' if n == 0 else 'Add'}")


def locate(now: list[Track], sources: tuple[Track, ...]) -> list[Track]:
    """The source tracks in ``now``: at their old place if still named so, else the one track
    with their name."""
    found = []
    for track in sources:
        if track.index < len(now) and now[track.index].name == track.name and now[track.index].kind == "wave":
            found.append(now[track.index])
            continue
        same = [t for t in now if t.name == track.name and t.kind == "wave"]
        if len(same) != 1:
            why = "was deleted or renamed" if not same else "is now ambiguous (several tracks have that name)"
            raise ClapsepError(f"the source track '{track.name}' {why} while the job ran; nothing inserted")
        found.append(same[0])
    return found


def same_audio(first: Path, second: Path, block: int = 1 << 16) -> bool:
    """Whether two audio files hold the same samples at the same rate, read ``block`` frames at
    a time (memory does not grow with their length)."""
    with sf.SoundFile(str(first)) as a, sf.SoundFile(str(second)) as b:
        if (a.samplerate, a.channels, a.frames) != (b.samplerate, b.channels, b.frames):
            return False
        while True:
            x = a.read(block, dtype="float32", always_2d=True)
            y = b.read(block, dtype="float32", always_2d=True)
            if x.shape != y.shape or not np.array_equal(x, y):
                return False
            if len(x) == 0:
                return True


def export_channels(sources: list[Track]) -> int:
    return 2 if any(t.channels > 1 for t in sources) else 1


def track_names(sources: list[Track]) -> str:
    return ", ".join(f"'{t.name}'" for t in sources)


def decimal_text(value: float) -> str:
    """A time as plain decimal text that reads back as the same number (no exponent)."""
    return format(Decimal(repr(value)), "f")


def quotable(text: str) -> str:
    """Text that fits in a double-quoted command parameter (Audacity has no escapes there)."""
    return " ".join(text.replace('"', "'").split())


def _json(pipe: AudacityPipe, command: str) -> Any:
    output = pipe.command(command)
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise ClapsepError(f"cannot read Audacity's answer to '{command}': {output[:200]!r}") from None
