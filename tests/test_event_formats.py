"""The event files, each read back by a reader that is not ours: json, csv, webvtt-py, REAPER's
columns through ``csv``, Audacity's label import as its C++ does it, and a real Audacity."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import webvtt

from clapsep_cli.bridges.audacity import project
from clapsep_cli.bridges.audacity.pipe import AudacityPipe
from clapsep_cli.events.detect import Event
from clapsep_cli.events.formats import EVENT_FORMATS, REAPER_COLUMNS, EventFormat
from tests.audacity import live

SOURCE = Path("/recordings/walk.wav")
QUERY = "dog barking"
LABEL = 'chien qui aboie, «fort» & <loin>\t! "wouf"'
LONG_END = 3 * 3600 + 2 * 60 + 5.25  # 3 h 2 min 5.25 s
EVENTS = [
    Event(0.0, 1.5, 0.93, "dog barking"),
    Event(61.0004, 62.9996, 0.5, LABEL),  # times that round, to 3 decimals, up and down
    Event(125.125, 130.0, 1.0, "deux\nlignes"),
    Event(LONG_END - 12.75, LONG_END, 0.8765, LABEL),
    Event(LONG_END + 1.0, LONG_END + 1.000001, 0.0, ""),  # the shortest, an empty label
]


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def one_line(text: str) -> str:
    return re.sub(r"\r\n|[\r\n\t]", " ", text)


def render(name: str, events: list[Event] = EVENTS) -> str:
    return EVENT_FORMATS[name].render(events, SOURCE, QUERY)


def test_the_formats_their_names_and_extensions() -> None:
    assert {name: f.extension for name, f in EVENT_FORMATS.items()} == {
        "json": "events.json", "csv": "events.csv", "audacity": "labels.txt", "reaper": "regions.csv",
        "reaper-markers": "markers.csv", "vtt": "vtt"}
    for name, fmt in EVENT_FORMATS.items():
        assert isinstance(fmt, EventFormat) and fmt.name == name
        assert fmt.description and "\n" not in fmt.description
        assert not fmt.extension.startswith(".")
        assert fmt.render.__doc__, f"{name}: say what reads the file"
        text = render(name)
        assert text.endswith("\n") and "\r" not in text


def test_the_module_needs_no_torch() -> None:
    code = "import sys, clapsep_cli.events.formats; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- json, csv ----------------------------------------------------------------------------------


def test_json_reads_back_with_json_loads() -> None:
    text = render("json")
    assert json.loads(text) == {"input": str(SOURCE), "query": QUERY, "events": [e.to_json() for e in EVENTS]}
    assert "«fort»" in text and text.endswith("}\n")  # UTF-8 as is, not \u escapes
    assert json.loads(render("json", [])) == {"input": str(SOURCE), "query": QUERY, "events": []}


def test_csv_reads_back_with_dictreader() -> None:
    reader = csv.DictReader(io.StringIO(render("csv"), newline=""))
    rows = list(reader)
    assert reader.fieldnames == ["start", "end", "duration", "confidence", "label"]
    assert [r["label"] for r in rows] == [e.label for e in EVENTS]  # comma, quotes, tab, newline, empty
    for row, e in zip(rows, EVENTS):
        assert all(re.fullmatch(r"\d+\.\d{3}", row[k]) for k in ("start", "end", "duration", "confidence"))
        assert (ms(float(row["start"])), ms(float(row["end"]))) == (ms(e.start), ms(e.end))
        assert ms(float(row["duration"])) == ms(float(row["end"])) - ms(float(row["start"]))
        assert float(row["confidence"]) == round(e.confidence, 3)
    assert rows[0]["start"] == "0.000" and rows[3]["end"] == "10925.250"
    assert (rows[1]["start"], rows[1]["end"], rows[1]["duration"]) == ("61.000", "63.000", "2.000")
    assert render("csv", []) == "start,end,duration,confidence,label\n"


# --- WebVTT -------------------------------------------------------------------------------------


def vtt_ms(stamp: str) -> int:
    hours, minutes, seconds = stamp.split(":")
    return (int(hours) * 3600 + int(minutes) * 60) * 1000 + round(float(seconds) * 1000)


def test_vtt_reads_back_with_webvtt_py() -> None:
    text = render("vtt")
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(captions) == len(EVENTS)
    for caption, e in zip(captions, EVENTS):
        assert re.fullmatch(r"\d{2,}:\d{2}:\d{2}\.\d{3}", caption.start)
        assert (vtt_ms(caption.start), vtt_ms(caption.end)) == (ms(e.start), ms(e.end))
        assert "<" not in caption.text and "-->" not in caption.text  # the payload as written
        assert html.unescape(caption.text) == f"{e.label.replace(chr(10), ' ')} ({e.confidence:.2f})"
    assert captions[0].start == "00:00:00.000" and captions[3].end == "03:02:05.250"
    assert captions[3].text == "chien qui aboie, «fort» &amp; &lt;loin&gt;\t! \"wouf\" (0.88)"
    assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\ndog barking (0.93)\n\n")


def test_vtt_hours_past_99_and_an_empty_file() -> None:
    late = Event(100 * 3600 + 0.25, 1000 * 3600 + 61.5, 0.5, "late")
    text = render("vtt", [late])
    assert "100:00:00.250 --> 1000:01:01.500\n" in text
    (caption,) = webvtt.from_buffer(io.StringIO(text)).captions
    assert (vtt_ms(caption.start), vtt_ms(caption.end)) == (ms(late.start), ms(late.end))
    assert render("vtt", []) == "WEBVTT\n"
    assert webvtt.from_buffer(io.StringIO(render("vtt", []))).captions == []


# --- REAPER -------------------------------------------------------------------------------------


def reaper_rows(text: str) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["#", "Name", "Start", "End", "Length", "Color"] == list(REAPER_COLUMNS)
    assert all(len(row) == len(REAPER_COLUMNS) for row in rows)
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def test_reaper_regions() -> None:
    rows = reaper_rows(render("reaper"))
    assert [r["#"] for r in rows] == [f"R{n}" for n in range(1, len(EVENTS) + 1)]
    for row, e in zip(rows, EVENTS):
        assert row["Name"] == one_line(f"{e.label} {e.confidence:.2f}") and "\t" not in row["Name"]
        assert all(re.fullmatch(r"\d+\.\d{3}", row[k]) for k in ("Start", "End", "Length"))
        start, end, length = (ms(float(row[k])) for k in ("Start", "End", "Length"))
        assert (start, end) == (ms(e.start), ms(e.end)) and length == end - start
        assert row["Color"] == ""  # REAPER's default colour
    assert rows[3]["Name"] == 'chien qui aboie, «fort» & <loin> ! "wouf" 0.88'
    assert (rows[0]["Start"], rows[3]["End"]) == ("0.000", "10925.250")
    assert rows[4]["Name"] == " 0.00" and rows[4]["Length"] == "0.000"
    assert render("reaper", []) == "#,Name,Start,End,Length,Color\n"


def test_reaper_markers_at_each_start() -> None:
    rows = reaper_rows(render("reaper-markers"))
    assert [r["#"] for r in rows] == [f"M{n}" for n in range(1, len(EVENTS) + 1)]
    for row, e in zip(rows, EVENTS):
        assert row["Name"] == one_line(f"{e.label} {e.confidence:.2f}")
        assert ms(float(row["Start"])) == ms(e.start)
        assert row["End"] == row["Length"] == row["Color"] == ""
    assert rows[3]["Start"] == f"{LONG_END - 12.75:.3f}" == "10912.500"
    assert render("reaper-markers", []) == "#,Name,Start,End,Length,Color\n"


# --- Audacity: its import, as LabelTrack::Import and LabelStruct::Import do it (3.2.4) ------------

NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # what strtod takes, in full


def compatible_to_double(token: str) -> float | None:
    """Internat::CompatibleToDouble: ',' (and the locale's separator) become '.', then the C
    locale's strtod, which must take the whole token (wxString::ToCDouble)."""
    token = token.replace(",", ".")
    return float(token) if NUMBER.fullmatch(token) else None


def audacity_import(text: str) -> tuple[list[tuple[float, float, str]], int]:
    """The labels Audacity imports from ``text``, and how many lines it could not read."""
    lines = re.split(r"\r\n|\r|\n", text)  # wxTextFile's line ends; a last one ends the last line
    if lines and lines[-1] == "":
        lines.pop()
    labels, bad, index = [], 0, 0
    while index < len(lines):
        # wxStringTokenizer(line, "\t"): only white space as delimiters, so strtok-like
        tokens = iter([t for t in lines[index].split("\t") if t])
        index += 1
        first = index
        while index < len(lines) and lines[index].startswith("\\"):  # continuation lines
            index += 1
        t0 = compatible_to_double(next(tokens, ""))
        if t0 is None:
            bad += 1
            continue
        token = next(tokens, "")
        t1 = compatible_to_double(token)
        if t1 is None:
            t1 = t0  # a point label; that token is its text
        else:
            token = next(tokens, "")
        if first < index:
            extra = [t for t in lines[first].split("\t") if t]
            if len(extra) < 3 or extra[0] != "\\" or None in map(compatible_to_double, extra[1:3]):
                bad += 1
                continue
        labels.append((t0, t1, token))
    return labels, bad


def test_the_audacity_parser_follows_audacity() -> None:
    """The stand-in parser itself, on lines Audacity writes and reads."""
    assert audacity_import("1.5\t2,25\tdog\n3\tpoint label\n\\\t100\t200\n4\t5\t\n") == (
        [(1.5, 2.25, "dog"), (3.0, 3.0, "point label"), (4.0, 5.0, "")], 0)
    # a tab cuts the text; no number first, an empty line, garbage after a number: unread
    assert audacity_import("1\t2\ta\tb\r\nx\t1\t2\n\n1 \t2\tc\r 7\t\t8\td") == ([(1.0, 2.0, "a"), (7.0, 8.0, "d")], 3)


def test_audacity_labels_as_audacity_reads_them() -> None:
    text = render("audacity")
    labels, bad = audacity_import(text)
    assert bad == 0 and len(labels) == len(EVENTS)
    for (start, end, title), e in zip(labels, EVENTS):
        assert (start, end) == (round(e.start, 6), round(e.end, 6))
        assert title == one_line(f"{e.label} {e.confidence:.2f}")
    assert labels[3][2] == 'chien qui aboie, «fort» & <loin> ! "wouf" 0.88'  # the tab did not cut it
    assert labels[4][:2] == (10926.25, 10926.250001)
    assert text.splitlines()[0] == "0.000000\t1.500000\tdog barking 0.93"  # as Audacity exports it
    assert all(re.fullmatch(r"\d+\.\d{6}\t\d+\.\d{6}\t[^\t]*", line) for line in text.split("\n")[:-1])
    assert render("audacity", []) == "" and audacity_import("") == ([], 0)


# --- Audacity: a real one -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def audacity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveAudacity]:
    yield from live.session(tmp_path_factory)


def through_file_dialog(audacity: live.LiveAudacity, command: str, title: str, path: Path, saving: bool = False,
                        limit: float = 60.0) -> None:
    """Run a menu command that asks for a file (in Audacity 3.2 no scripting command imports or
    exports labels without a dialog), answering its GTK file chooser with ``path``: the dialog
    opens in ``path``'s folder (Audacity's default folder preference for opening or exporting),
    where xdotool types the file's name, into the location field (Ctrl+L) to open, over the
    proposed name to save (a whole path would race the chooser's completion of each folder). If
    that fails, Audacity is ended, so that the command returns."""
    env = {**os.environ, "DISPLAY": audacity.env["DISPLAY"]}
    failures: list[BaseException] = []
    done = threading.Event()

    def xdotool(*args: str) -> str:
        return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=limit,
                              check=True).stdout

    def answer() -> None:
        try:
            window = xdotool("search", "--sync", "--onlyvisible", "--pid", str(audacity.process.pid), "--name",
                             f"^{re.escape(title)}$").split()[0]
            time.sleep(1.0)  # mapped is not yet ready for keys
            xdotool("windowfocus", "--sync", window)
            xdotool("key", "--clearmodifiers", "ctrl+a" if saving else "ctrl+l")
            time.sleep(0.3)
            xdotool("type", "--delay", "20", path.name)
            xdotool("key", "Return")
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            failures.append(err)
        if not done.wait(limit):
            failures.append(AssertionError(f"'{command}' did not finish once its dialog was answered"))
            audacity.process.kill()

    folder = "Export" if saving else "Open"
    with AudacityPipe() as pipe:
        pipe.command(f'SetPreference: Name="/Directories/{folder}/Default" Value="{path.parent}"')
    helper = threading.Thread(target=answer, daemon=True)
    helper.start()
    try:
        with AudacityPipe() as pipe:
            pipe.command(command)
    except BaseException as err:
        done.set()
        helper.join()
        if failures:
            raise failures[0] from err
        raise
    done.set()
    helper.join()
    if failures:
        raise failures[0]


@pytest.mark.e2e
def test_audacity_imports_the_labels(audacity: live.LiveAudacity, tmp_path: Path) -> None:
    labels = tmp_path / f"walk.dog_barking.{EVENT_FORMATS['audacity'].extension}"
    labels.write_text(render("audacity"), encoding="utf-8")
    with AudacityPipe() as pipe:
        count = len(project.tracks(pipe))
        if count:
            project.select_tracks(pipe, list(range(count)), count)
            pipe.command("RemoveTracks:")

    through_file_dialog(audacity, "ImportLabels:", "Select a text file containing labels", labels)
    with AudacityPipe() as pipe:
        tracks = project.tracks(pipe)
        read = project.labels(pipe)
    assert [(t.name, t.kind) for t in tracks] == [("walk.dog_barking.labels", "label")]
    assert [lb.text for lb in read] == [one_line(f"{e.label} {e.confidence:.2f}") for e in EVENTS]
    for lb, e in zip(read, EVENTS):  # GetInfo gives 6 significant digits only
        assert (lb.start, lb.end) == (pytest.approx(e.start, rel=1e-5), pytest.approx(e.end, rel=1e-5))

    # Audacity's own export of what it imported, to the full six decimals, is the very same file
    again = tmp_path / "exported.txt"
    through_file_dialog(audacity, "ExportLabels:", "Export Labels As:", again, saving=True)
    assert again.read_text(encoding="utf-8") == labels.read_text(encoding="utf-8")
