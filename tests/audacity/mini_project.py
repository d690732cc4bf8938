"""Just enough of an Audacity project, behind the fake pipe, to check the bridge's logic.

It keeps tracks (audio as arrays), labels, the time selection, preferences and the stored
selection, and answers the commands the bridge sends the way Audacity 3.2 does (six-digit
numbers in GetInfo included). The real Audacity is exercised by test_audacity_e2e.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.audacity.fake_pipe import failed, ok

PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|(\S+))')


@dataclass
class Lane:
    """A track: audio (frames, channels) starting at ``start``, or labels (start, end, text)."""

    name: str
    kind: str
    selected: bool = False
    audio: np.ndarray | None = None
    start: float = 0.0
    labels: list[tuple[float, float, str]] = field(default_factory=list)
    mute: bool = False


class MiniProject:
    """Answers commands for one project at ``rate``."""

    def __init__(self, rate: int = 8000):
        self.rate = rate
        self.lanes: list[Lane] = []
        self.selection = (0.0, 0.0)
        self.stored = (0.0, 0.0)
        self.prefs: dict[str, str] = {}
        self.failing: set[str] = set()

    def wave(self, name: str, audio: np.ndarray, selected: bool = True, start: float = 0.0) -> Lane:
        lane = Lane(name, "wave", selected, audio.reshape(len(audio), -1), start)
        self.lanes.append(lane)
        return lane

    def label_track(self, name: str, labels: list[tuple[float, float, str]], selected: bool = False) -> Lane:
        lane = Lane(name, "label", selected, labels=sorted(labels))
        self.lanes.append(lane)
        return lane

    def labels(self) -> list[tuple[float, float, str]]:
        return [label for lane in self.lanes for label in lane.labels]

    def __call__(self, command: str) -> str:
        name, _, rest = command.partition(":")
        if name in self.failing:
            return failed(f"{name} failed on purpose")
        params = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in PARAM.finditer(rest)}
        params["_line"] = rest
        handler = getattr(self, "do_" + name, None)
        if handler is None:
            return failed(f"Your batch command of {name} was not recognized.")
        return handler(params)

    def do_GetInfo(self, p: dict[str, str]) -> str:
        if p["Type"] == "Tracks":
            return ok("\n" + json.dumps([self._describe(lane) for lane in self.lanes]))
        listing = [[i, [[_six(a), _six(b), t] for a, b, t in lane.labels]]
                   for i, lane in enumerate(self.lanes) if lane.kind == "label"]
        return ok("\n" + json.dumps(listing))

    def do_GetPreference(self, p: dict[str, str]) -> str:
        return ok(self.prefs[p["Name"]]) if p["Name"] in self.prefs else failed()

    def do_SetPreference(self, p: dict[str, str]) -> str:
        self.prefs[p["Name"]] = p["Value"]
        return ok()

    def do_SelectTime(self, p: dict[str, str]) -> str:
        self.selection = (float(p["Start"]), float(p["End"]))
        return ok()

    def do_SelectTracks(self, p: dict[str, str]) -> str:
        first, count, mode = int(p["Track"]), int(p["TrackCount"]), p["Mode"]
        for i, lane in enumerate(self.lanes):
            inside = first <= i < first + count
            if mode == "Set":
                lane.selected = inside
            elif inside:
                lane.selected = mode == "Add"
        return ok()

    def do_Export2(self, p: dict[str, str]) -> str:
        t0, t1 = self.selection
        chosen = [lane for lane in self.lanes if lane.kind == "wave" and lane.selected and not lane.mute]
        end = min(t1, max((lane.start + len(lane.audio) / self.rate for lane in chosen), default=t0))
        frames = max(0, round(end * self.rate) - round(t0 * self.rate))
        mix = np.zeros((frames, int(p["NumChannels"])), dtype=np.float32)
        for lane in chosen:
            first = round(t0 * self.rate) - round(lane.start * self.rate)
            part = lane.audio[max(first, 0):first + frames]
            mix[:len(part)] += part if part.shape[1] == mix.shape[1] else part.mean(axis=1, keepdims=True)
        if self.prefs.get("/AudioFiles/SkipSilenceAtBeginning") == "1":
            heard = np.flatnonzero(np.abs(mix).max(axis=1, initial=0) > 0)
            mix = mix[heard[0]:] if len(heard) else mix[:0]
        float_wav = self.prefs.get("/FileFormats/ExportFormat_SF1_Type/WAV_10000") == "6"
        sf.write(p["Filename"], mix, self.rate, subtype="FLOAT" if float_wav else "PCM_16")  # 16-bit: the default
        return ok(f"Exported to WAV format: {p['Filename']}")

    def do_Import2(self, p: dict[str, str]) -> str:
        audio, _ = sf.read(p["Filename"], dtype="float32", always_2d=True)
        for lane in self.lanes:
            lane.selected = False
        self.wave(Path(p["Filename"]).stem, audio, selected=True)
        return ok()

    def do_Align_StartToSelStart(self, p: dict[str, str]) -> str:
        for lane in self.lanes:
            if lane.selected and lane.kind == "wave":
                lane.start = self.selection[0]
        return ok()

    def do_SetTrack(self, p: dict[str, str]) -> str:
        for lane in self.lanes:
            if lane.selected:
                lane.name = p["Name"]
        return ok()

    def do_SetLabel(self, p: dict[str, str]) -> str:
        index = int(p["Label"])
        for lane in (lane for lane in self.lanes if lane.kind == "label"):
            if index < len(lane.labels):
                start, end, text = lane.labels[index]
                if p.get("Selected") == "1":
                    self.selection = (start, end)
                lane.labels[index] = (float(p.get("Start", start)), float(p.get("End", end)), p.get("Text", text))
                lane.labels.sort(key=lambda label: label[0])  # stable, by start only, as Audacity sorts
                return ok()
            index -= len(lane.labels)
        return failed("LabelIndex was invalid.")

    def do_SetClip(self, p: dict[str, str]) -> str:
        for lane in self.lanes:
            if lane.selected and lane.kind == "wave":
                lane.start = float(p["Start"])
        return ok()

    def do_ToggleSpectralSelection(self, p: dict[str, str]) -> str:
        return ok()

    def do_NyquistPrompt(self, p: dict[str, str]) -> str:
        """A Nyquist Prompt returning labels with times from the selection's start: a list
        ``(list (list START END \\"text\\") ...)`` (END may be ``(get-duration 1)``: the
        selection's length to six decimals, as Audacity 3.2 gives it), or one read from a file,
        ``(START END "text")`` each. Like Audacity, it runs once per selected audio track, each
        run adding the labels to the first selected label track (else a new one)."""
        opened = re.search(r'\(open \\"(.*?)\\"\)', p["_line"])
        if opened:
            items = re.findall(r'\(([^\s()]+) ([^\s()]+) "(.*?)"\)', Path(opened.group(1)).read_text())
        else:
            items = re.findall(r'\(list ([^\s()]+) (\(get-duration 1\)|[^\s()]+) \\"(.*?)\\"\)', p["_line"])
        assert items, p["_line"]
        runs = sum(lane.kind == "wave" and lane.selected for lane in self.lanes)
        if not runs:
            return failed("Nyquist Prompt requires one or more tracks to be selected.")
        t0, t1 = self.selection
        length = float(f"{t1 - t0:.6f}")
        added = [(t0 + float(a), t0 + (length if b.startswith("(") else float(b)), text) for a, b, text in items]
        target = next((lane for lane in self.lanes if lane.kind == "label" and lane.selected), None)
        if target is None:
            target = self.label_track(f"Labels {sum(lane.kind == 'label' for lane in self.lanes) + 1}", [])
        target.labels = sorted(target.labels + added * runs)
        return ok()

    def do_SelSave(self, p: dict[str, str]) -> str:
        self.stored = self.selection
        return ok()

    def do_SelRestore(self, p: dict[str, str]) -> str:
        self.selection = self.stored
        return ok()

    def do_SplitDelete(self, p: dict[str, str]) -> str:
        t0, t1 = self.selection
        for lane in self.lanes:
            if lane.selected and lane.kind == "label":
                lane.labels = [lb for lb in lane.labels if not (t0 <= lb[0] and lb[1] <= t1)]
        return ok()

    def do_RemoveTracks(self, p: dict[str, str]) -> str:
        self.lanes = [lane for lane in self.lanes if not lane.selected]
        return ok()

    def _describe(self, lane: Lane) -> dict[str, object]:
        out: dict[str, object] = {"name": lane.name, "selected": int(lane.selected), "kind": lane.kind}
        if lane.audio is not None:
            out.update(start=_six(lane.start), end=_six(lane.start + len(lane.audio) / self.rate),
                       channels=lane.audio.shape[1], mute=int(lane.mute), solo=0)
        return out


def _six(value: float) -> float:
    """A number as Audacity's GetInfo prints it: six significant digits."""
    return float(f"{value:.6g}")
