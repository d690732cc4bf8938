"""The files events are written to: one :class:`EventFormat` per kind of file, in :data:`EVENT_FORMATS`.

Each format renders a list of :class:`~clapsep_cli.events.detect.Event` (with the source file's
path and the query's description) to the file's whole text, to be written as UTF-8 without a
byte-order mark. An empty list renders a valid, empty file (its header only, where it has one).
Torch-free, and standard library only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli.events.detect import Event


@dataclass(frozen=True)
class EventFormat:
    """A kind of event file: ``name`` (what ``--format`` takes), ``extension`` (without the leading
    dot, as in ``walk.dog_barking.labels.txt``), ``description`` (one line, for ``--help``) and
    ``render(events, source, query)``: the file's full text."""

    name: str
    extension: str
    description: str
    render: Callable[[Sequence[Event], Path, str], str]


_LINE_BREAKS = re.compile(r"\r\n|[\r\n]")
_BREAKS_AND_TABS = re.compile(r"\r\n|[\r\n\t]")


def _ms(seconds: float) -> int:
    """A time in whole milliseconds: the 3-decimal formats derive every column from these, so a
    row's duration is exactly its end minus its start as written."""
    return round(seconds * 1000)


def _seconds(ms: int) -> str:
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    return f"{sign}{ms // 1000}.{ms % 1000:03d}"


# --- json -------------------------------------------------------------------------------------


def render_json(events: Sequence[Event], source: Path, query: str) -> str:
    """JSON for programs (``json.load``): ``{"input", "query", "events": [Event.to_json()...]}``."""
    document = {"input": str(source), "query": query, "events": [e.to_json() for e in events]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- csv --------------------------------------------------------------------------------------


def render_csv(events: Sequence[Event], source: Path, query: str) -> str:
    """A table for spreadsheets and ``csv`` readers: ``start,end,duration,confidence,label``
    (seconds and confidence to 3 decimals; labels quoted as RFC 4180 wants where needed)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["start", "end", "duration", "confidence", "label"])
    for e in events:
        start, end = _ms(e.start), _ms(e.end)
        writer.writerow([_seconds(start), _seconds(end), _seconds(end - start), f"{e.confidence:.3f}", e.label])
    return out.getvalue()


# --- Audacity ---------------------------------------------------------------------------------
#
# Audacity's label text file, as File > Import > Labels reads it and File > Export > Export
# Labels writes it (Audacity 3.2.4, src/LabelTrack.cpp: LabelStruct::Export, LabelStruct::Import,
# LabelTrack::Import; src/menus/FileMenus.cpp: OnImportLabels, OnExportLabels; Internat.cpp in
# libraries/lib-strings):
# - one label per line (wxTextFile: lines end at \n, \r\n or \r): "start<TAB>end<TAB>text";
#   export writes both times with Internat::ToString(t, FLT_DIG), six decimals, always a '.'
#   whatever the locale;
# - import splits the line with wxStringTokenizer on "\t" alone; a delimiter set of white space
#   only makes wx tokenize like strtok (runs of tabs are one separator, no empty tokens). The
#   first token must be a number (else the line is skipped and a "could not be read" box shown);
#   if the second is not one, the label is a point at the first time and that token is the text;
#   the text is the next token only, so a tab inside it would cut it short;
# - numbers go through Internat::CompatibleToDouble: ',' and the locale's separator become '.',
#   then wxString::ToCDouble (C locale; the whole token must be the number);
# - a following line that starts with '\' continues the label (its frequencies); a label's own
#   line can never start so, as it starts with a number;
# - the file is read as UTF-8 (wxConvAuto) and the track is named after it, less ".txt".
# Tabs and line breaks in a label are therefore written as spaces.


def render_audacity(events: Sequence[Event], source: Path, query: str) -> str:
    """Audacity's label track text: File > Import > Labels (any Audacity; ``start<TAB>end<TAB>text``
    lines, seconds to 6 decimals as Audacity exports them, text ``"<label> <confidence>"``)."""
    lines = []
    for e in events:
        text = _BREAKS_AND_TABS.sub(" ", f"{e.label} {e.confidence:.2f}")
        lines.append(f"{e.start:.6f}\t{e.end:.6f}\t{text}\n")
    return "".join(lines)


# --- REAPER -----------------------------------------------------------------------------------
#
# REAPER's Region/Marker Manager (View > Region/Marker Manager; right-click or Options >
# "Export regions/markers..." and "Import regions/markers...") writes and reads a comma-separated
# file. REAPER's own manual and forum were not among the sources reachable here (no REAPER either),
# so this rests on what REAPER's exports look like in public files and on tools that write files
# for that import:
# - header "#,Name,Start,End,Length" (REAPER 5 and 6 exports, e.g. oatsu-gh/utaupy reaper.py,
#   tested with REAPER v5 and v6) and, in later REAPER, with a sixth column:
#   "#,Name,Start,End,Length,Color" (e.g. the NAM trainer's README in the code index:
#   "R1,train,50000,7760000,7657222,FF0000"; este.audio/docs/live/regions.html;
#   importers such as a jamsplit reaper.rs tolerate both);
# - "#" is "R<n>" for a region and "M<n>" for a marker, regions and markers each numbered from 1
#   (Audiokinetic Strata docs: "Regions are indicated with an R in the # column, and markers are
#   indicated with an M", audiokinetic.com/en/library/strata/?id=strata_regions_markers);
# - a marker's End and Length are empty ("M1,...,0:00.000,,"; "M1,\"Test Note\",00:01:00,,,");
# - Color is RRGGBB hex without '#', or empty for REAPER's default colour;
# - times are written in the ruler's current time unit: measures.beats ("5.1.00"), minutes:seconds
#   ("5:23.500", "1:02:11.000"), seconds, samples ("50000") or timecode; on import REAPER reads
#   them in the unit the ruler shows (noted by tools writing for the import, e.g. a "Kosmos"
#   marker exporter: "Set the ruler to seconds first; Reaper reads these times as whatever unit
#   the timeline is currently showing"; BirdNET-for-REAPER writes plain seconds);
# - UTF-8 without a byte-order mark (utaupy: REAPER does not read the file otherwise).
# These files give plain seconds to 3 decimals, for the ruler in Seconds (View > Time unit for
# ruler > Seconds; REAPER's seconds display has 3 decimals, but no export made in that mode was
# found to compare with, and a ruler in measures.beats would misread them). Names are quoted by
# the csv module where needed; tabs and line breaks in them become spaces.

REAPER_COLUMNS = ("#", "Name", "Start", "End", "Length", "Color")


def _reaper_name(e: Event) -> str:
    return _BREAKS_AND_TABS.sub(" ", f"{e.label} {e.confidence:.2f}")


def render_reaper_regions(events: Sequence[Event], source: Path, query: str) -> str:
    """REAPER regions, one per event: Region/Marker Manager > Options > Import regions/markers
    (with the ruler in Seconds)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REAPER_COLUMNS)
    for n, e in enumerate(events, start=1):
        start, end = _ms(e.start), _ms(e.end)
        writer.writerow([f"R{n}", _reaper_name(e), _seconds(start), _seconds(end), _seconds(end - start), ""])
    return out.getvalue()


def render_reaper_markers(events: Sequence[Event], source: Path, query: str) -> str:
    """REAPER markers, one at each event's start: Region/Marker Manager > Options > Import
    regions/markers (with the ruler in Seconds)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REAPER_COLUMNS)
    for n, e in enumerate(events, start=1):
        writer.writerow([f"M{n}", _reaper_name(e), _seconds(_ms(e.start)), "", "", ""])
    return out.getvalue()


# --- WebVTT -----------------------------------------------------------------------------------


def _vtt_time(seconds: float) -> str:
    """``HH:MM:SS.mmm``; the hours take more digits past 99, as WebVTT allows."""
    ms = _ms(seconds)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _vtt_text(text: str) -> str:
    """Cue text on one line, with the characters WebVTT gives meaning escaped (so no "-->")."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _LINE_BREAKS.sub(" ", text)


def render_vtt(events: Sequence[Event], source: Path, query: str) -> str:
    """WebVTT cues, one per event (``"<label> (<confidence>)"``): video players and editors, the
    HTML ``<track>`` element, subtitle tools."""
    cues = [f"{_vtt_time(e.start)} --> {_vtt_time(e.end)}\n{_vtt_text(f'{e.label} ({e.confidence:.2f})')}\n"
            for e in events]
    return "\n".join(["WEBVTT\n", *cues])


EVENT_FORMATS: dict[str, EventFormat] = {f.name: f for f in (
    EventFormat("json", "events.json", "JSON: the input, the query and each event", render_json),
    EventFormat("csv", "events.csv", "CSV table: start, end, duration, confidence, label", render_csv),
    EventFormat("audacity", "labels.txt", "Audacity labels (File > Import > Labels)", render_audacity),
    EventFormat("reaper", "regions.csv", "REAPER regions (Region/Marker Manager > Import, ruler in seconds)",
                render_reaper_regions),
    EventFormat("reaper-markers", "markers.csv",
                "REAPER markers at each start (Region/Marker Manager > Import, ruler in seconds)",
                render_reaper_markers),
    EventFormat("vtt", "vtt", "WebVTT cues (video players, subtitle editors)", render_vtt),
)}
