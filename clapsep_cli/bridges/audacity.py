"""The Audacity bridge: separate the selection of a running Audacity and put the stems back.

Audacity 3.2 cannot report its time selection (``GetInfo: Type=Selection`` came in 3.6) and
prints times with six significant digits, so the bridge never needs the times as numbers:
``Export2`` writes the selected span (32-bit float WAV at the project rate, ending where the
selected audio ends), and ``Align_StartToSelStart`` moves each imported stem to exactly the
selection's start, which is where the export began. The time selection is left as it was; the
track selection is put back afterwards.

Requests come as labels ``clapsep:<preset>`` (see :mod:`.audacity_setup`): ``SetLabel ...
Selected=1`` turns such a label's exact span back into the selection, then it is served like a
direct extraction, and the label is removed.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import soundfile as sf

from clapsep_cli import presets, store
from clapsep_cli.bridges.audacity_pipe import AudacityPipe, PipeError
from clapsep_cli.bridges.audacity_setup import REQUEST_PREFIX
from clapsep_cli.engine import EngineOptions
from clapsep_cli.errors import ClapsepError
from clapsep_cli.extract import Extractor, OutputPlan
from clapsep_cli.queries import EmbeddingCache, Query

WAV_ENCODING = "/FileFormats/ExportFormat_SF1_Type/WAV_10000"  # libsndfile subtype of Audacity's WAV export
SKIP_LEADING_SILENCE = "/AudioFiles/SkipSilenceAtBeginning"
DEFAULTS = {WAV_ENCODING: "0", SKIP_LEADING_SILENCE: "0"}  # what Audacity does with the setting unset
SF_FORMAT_FLOAT = 6
REQUEST = re.compile(rf"^{REQUEST_PREFIX}([a-z0-9][a-z0-9_-]{{0,47}})$")


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


@dataclass(frozen=True)
class Job:
    """What to extract: a query, whether the residual comes too, and the tag in track names."""

    query: Query
    residual: bool

    @property
    def tag(self) -> str:
        return self.query.slug()


@dataclass(frozen=True)
class Stem:
    """A separated file and the tag its track name gets."""

    path: Path
    tag: str


class Separate(Protocol):
    """Separates ``source`` for ``job``, writing stems into ``folder``."""

    def __call__(self, source: Path, job: Job, folder: Path) -> list[Stem]: ...


def make_job(text: str | None, preset: str | None, negative: tuple[str, ...], residual: bool | None) -> Job:
    """A job from a query text or a preset (plus negatives); the preset decides the residual
    unless ``residual`` is given."""
    if text and preset:
        raise ClapsepError("give a QUERY or --preset, not both")
    if preset:
        base = presets.load(preset)
        query = Query(base.query.positive, base.query.negative + negative, base.query.positive_audio,
                      base.query.negative_audio, base.query.audio_weight, label=base.suffix)
        return Job(query, base.residual if residual is None else residual)
    return Job(Query(positive=(text,) if text else (), negative=negative), bool(residual))


class StemMaker:
    """Separates with one model, loaded on first use and kept for every later request."""

    def __init__(self, load: Callable[[], Any], options: EngineOptions):
        self._load, self.options = load, options
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def __call__(self, source: Path, job: Job, folder: Path) -> list[Stem]:
        model = self.model
        cache = EmbeddingCache(store.store_root() / "embeddings", model.installed.fingerprint)
        plan = OutputPlan(output=folder / f"{job.tag}.wav", residual=job.residual, fmt="wav", bit_depth="32f",
                          overwrite=True)
        result = Extractor(model, job.query, self.options, plan, cache).run_one(source)
        if result.status != "ok" or result.target is None:
            raise ClapsepError(str(result.error).replace(str(source), "the selected audio"))
        stems = [Stem(result.target, job.tag)]
        if result.residual is not None:
            stems.append(Stem(result.residual, f"{job.tag}.residual"))
        return stems


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


def extract_selection(pipe: AudacityPipe, job: Job, separate: Separate) -> list[Track]:
    """Separate the selected audio and add the stems as tracks aligned with the selection; the
    added tracks (times to six digits, as Audacity reports them)."""
    before = tracks(pipe)
    chosen = [t for t in before if t.kind == "wave" and t.selected]
    if not chosen:
        raise ClapsepError("no audio track is selected in Audacity: drag over the part of a track to extract")
    soloing = any(t.solo for t in before if t.kind == "wave")
    chosen = [t for t in chosen if (t.solo if soloing else not t.mute)]
    if not chosen:
        raise ClapsepError("the selected tracks are muted (or others are soloed), so Audacity would export nothing")
    base = chosen[0].name if len(chosen) == 1 else "mix"
    with tempfile.TemporaryDirectory(prefix="clapsep-audacity-") as tmp:
        folder = Path(tmp)
        source = export_selection(pipe, folder / "selection.wav", 2 if any(t.channels > 1 for t in chosen) else 1)
        stems = separate(source, job, folder)
        return insert_stems(pipe, stems, before, base)


def export_selection(pipe: AudacityPipe, path: Path, channels: int) -> Path:
    """Export the selected span of the selected tracks as 32-bit float WAV, from the very start
    of the selection (Audacity can be set to skip leading silence); the user's settings are
    put back afterwards."""
    with _preferences(pipe, {WAV_ENCODING: str(SF_FORMAT_FLOAT), SKIP_LEADING_SILENCE: "0"}):
        pipe.command(f'Export2: Filename="{path}" NumChannels={channels}')
    try:
        frames = sf.info(str(path)).frames
    except (sf.LibsndfileError, RuntimeError):
        raise ClapsepError(f"Audacity did not export the selection to {path}") from None
    if frames == 0:
        raise ClapsepError("no time range with audio is selected in Audacity: drag over the part of a track to "
                           "extract")
    return path


@contextlib.contextmanager
def _preferences(pipe: AudacityPipe, values: dict[str, str]) -> Iterator[None]:
    """Set Audacity preferences for a while (one never set before is left at its default)."""
    previous = {name: pipe.preference(name) for name in values}
    try:
        for name, value in values.items():
            pipe.command(f'SetPreference: Name="{name}" Value="{value}"')
        yield
    finally:
        for name, value in previous.items():
            pipe.command(f'SetPreference: Name="{name}" Value="{DEFAULTS[name] if value is None else value}"')


def insert_stems(pipe: AudacityPipe, stems: list[Stem], before: list[Track], base: str) -> list[Track]:
    """Import the stems, align them to the selection start, name them, and select again the
    tracks selected in ``before``."""
    for stem in stems:
        pipe.command(f'Import2: Filename="{stem.path}"')
    added = tracks(pipe)[len(before):]
    if len(added) != len(stems):
        raise ClapsepError(f"Audacity imported {len(added)} tracks for {len(stems)} stems")
    select_tracks(pipe, [t.index for t in added], len(before) + len(added))
    pipe.command("Align_StartToSelStart:")
    for track, stem in zip(added, stems):
        select_tracks(pipe, [track.index], len(before) + len(added))
        pipe.command(f'SetTrack: Name="{_quotable(f"{base}.{stem.tag}")}"')
    select_tracks(pipe, [t.index for t in before if t.selected], len(before) + len(added))
    return tracks(pipe)[len(before):]


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


def pending_requests(pipe: AudacityPipe) -> list[Label]:
    """One label per request waiting (copies made by a macro run over several tracks count once)."""
    seen: dict[tuple[int, str, float, float], Label] = {}
    for label in labels(pipe):
        if REQUEST.match(label.text):
            seen.setdefault((label.track, label.text, label.start, label.end), label)
    return list(seen.values())


def serve(pipe: AudacityPipe, request: Label, separate: Separate, residual: bool | None = None) -> list[Track]:
    """Extract what ``request`` asks for over its span, from the selected tracks, then remove
    the request label. On failure the label is renamed to say why, so it is not served again."""
    match = REQUEST.match(request.text)
    assert match is not None
    try:
        job = make_job(None, match.group(1), (), residual)
        pipe.command(f"SetLabel: Label={request.index} Selected=1")
        added = extract_selection(pipe, job, separate)
    except PipeError:
        raise
    except ClapsepError as err:
        _rename_copies(pipe, request, f"{request.text} failed: {err}")
        raise
    remove_request(pipe, request)
    return added


def remove_request(pipe: AudacityPipe, request: Label) -> None:
    """Remove a request label and its copies: with their label track when it holds nothing
    else; otherwise moved past the project's end and split-deleted there (using Audacity's
    stored selection to put the selection back exactly)."""
    now = tracks(pipe)
    selected = [t.index for t in now if t.selected]
    in_track = [lb for lb in labels(pipe) if lb.track == request.track]
    copies = [lb for lb in in_track if _same_request(lb, request)]
    if len(copies) == len(in_track):
        select_tracks(pipe, [request.track], len(now))
        pipe.command("RemoveTracks:")
        select_tracks(pipe, [i - (i > request.track) for i in selected if i != request.track], len(now) - 1)
        return
    away = max([t.end for t in now] + [lb.end for lb in labels(pipe)]) + 10.0
    pipe.command("SelSave:")
    for _ in copies:
        first = next(lb for lb in labels(pipe) if _same_request(lb, request))
        pipe.command(f"SetLabel: Label={first.index} Start={away:.6f} End={away:.6f}")
    select_tracks(pipe, [request.track], len(now))
    pipe.command(f"SelectTime: Start={away - 1:.6f} End={away + 1:.6f}")
    pipe.command("SplitDelete:")
    pipe.command("SelRestore:")
    select_tracks(pipe, selected, len(now))


def watch(connect: Callable[[], AudacityPipe], separate: Separate, residual: bool | None = None,
          poll: float = 0.5, once: bool = False) -> Iterator[str]:
    """Serve requests as they appear, saying what happens in lines of text. Waits for Audacity
    while it is not there, unless ``once``: then serves what waits now and returns."""
    absent: str | None = None
    while True:
        try:
            with connect() as pipe:
                if absent is not None:
                    yield "Audacity is here"
                    absent = None
                yield from _serve_pending(pipe, separate, residual)
        except PipeError as err:
            if once:
                raise
            if absent is None:
                yield f"waiting for Audacity ({err})"
            absent = str(err)
        if once:
            return
        time.sleep(poll)


def _serve_pending(pipe: AudacityPipe, separate: Separate, residual: bool | None) -> Iterator[str]:
    for request in pending_requests(pipe):
        yield f"{request.text}: {request.start:.3f}-{request.end:.3f} s"
        try:
            added = serve(pipe, request, separate, residual)
        except PipeError:
            raise
        except ClapsepError as err:
            yield f"{request.text} failed: {err}"
            continue
        yield from (f"  added track '{t.name}' ({t.start:.3f}-{t.end:.3f} s)" for t in added)


def _rename_copies(pipe: AudacityPipe, request: Label, text: str) -> None:
    for label in labels(pipe):
        if _same_request(label, request):
            pipe.command(f'SetLabel: Label={label.index} Text="{_quotable(text)}"')


def _same_request(label: Label, request: Label) -> bool:
    return (label.track, label.text, label.start, label.end) == (request.track, request.text, request.start,
                                                                  request.end)


def _quotable(text: str) -> str:
    """Text that fits in a double-quoted command parameter (Audacity has no escapes there)."""
    return " ".join(text.replace('"', "'").split())


def _json(pipe: AudacityPipe, command: str) -> Any:
    output = pipe.command(command)
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise ClapsepError(f"cannot read Audacity's answer to '{command}': {output[:200]!r}") from None
