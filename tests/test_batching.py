"""Short files share the network's batches: each stem is byte for byte what a run on its file
alone writes, a bad file fails alone, read-ahead stays bounded, progress adds up."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from clapsep_cli import api
from clapsep_cli.cli import main
from clapsep_cli.cli.progress import RichProgress
from clapsep_cli.engine import stream
from clapsep_cli.engine.options import EngineOptions
from clapsep_cli.engine.segments import segment_count
from clapsep_cli.engine.stream import Batcher, Source, separate_stream
from clapsep_cli.models.loaded import ClapSep
from tests.helpers import CLIPS, StandIn, make_clip, stems, tone, write_audio


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for seed, spec in enumerate(CLIPS):
        make_clip(folder, *spec, seed=seed)
    return folder


class Network:
    """Counts the network's calls and rows (the real tiny model's ``masks`` underneath).

    ``shared`` lays batches out as on a CUDA device (sources share calls of ``batch_size``
    rows) and computes each row by a call of its own, as CUDA's kernels compute every row
    alike: the CPU's kernels round a few elements by their place in a batch (see
    :func:`shared_rows`), which would hide what these tests check.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, shared: bool):
        self.calls = 0
        self.rows: list[int] = []
        real = ClapSep.masks

        def masks(model: ClapSep, mixture: torch.Tensor, cond: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.rows.append(len(mixture))
            if not shared:
                return real(model, mixture, cond, spec)
            return torch.cat([real(model, mixture[i:i + 1], cond[i:i + 1], spec[i:i + 1]) for i in range(len(mixture))])

        monkeypatch.setattr(ClapSep, "masks", masks)
        if shared:
            monkeypatch.setattr(stream, "shared_rows", lambda device, batch_size: batch_size)


def extract(*args: object) -> dict:
    result = CliRunner().invoke(main, ["extract", "dog barking", *map(str, args), "--json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


LAYOUTS = ["cpu", "shared"]  # batches as on the CPU (one file's segments), as on CUDA (shared)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_folder_in_one_job_writes_the_stems_of_solo_runs_byte_for_byte(home: Path, tmp_path: Path, clips: Path,
                                                                          precision: str, layout: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 on this CPU rounds some products differently in a batch of 1 than of 2 or 3: in the
    shared layout a stem only comes out the same because every call has the same number of rows."""
    network = Network(monkeypatch, shared=layout == "shared")
    settings = ["--precision", precision, "--batch-size", "3", "--residual"]
    job = extract(clips, "--out-dir", tmp_path / "job", *settings)
    job_rows, network.rows = network.rows, []
    assert [r["status"] for r in job["results"]] == ["ok"] * len(CLIPS) and job["precision"] == precision
    for clip in sorted(clips.iterdir()):
        solo = extract(clip, "--out-dir", tmp_path / "solo", *settings)
        assert solo["results"][0]["status"] == "ok"
    segments = [segment_count(int(s * 32000), EngineOptions()) for _, s, *_ in CLIPS]
    assert segments == [1, 1, 2, 1, 1, 3, 1]
    if layout == "shared":
        assert network.rows == [3] * 7  # alone: a call per file, silent rows filling each
        assert job_rows == [3] * 4  # in one job: the files' 10 segments share 4 calls
    else:
        assert job_rows == network.rows == segments  # a batch holds one file's segments
    solo, batched = stems(tmp_path / "solo"), stems(tmp_path / "job")
    assert len(batched) == 2 * len(CLIPS) and batched.keys() == solo.keys()
    for name in solo:
        assert batched[name] == solo[name], name
    for (name, seconds, rate, channels, _), result in zip(CLIPS, job["results"]):
        stem, stem_rate = sf.read(str(result["target"]), always_2d=True)
        assert stem_rate == rate and stem.shape[1] == channels
        assert abs(len(stem) - seconds * rate) < rate * 0.1  # mp3: the decoder's own length
        assert np.max(np.abs(stem)) > 1e-4, name  # not silence


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_bad_file_between_good_ones_fails_alone(home: Path, tmp_path: Path, layout: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder error while the file's segments are in (shared) batches, and a silent file whose
    segment shares a batch: each fails with its own message; the others are their solo stems."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder, "a.wav", 4.0, 44100, 2, "FLOAT", seed=1)
    nan = tone(25.0, 32000, channels=2, seed=2)
    nan[21 * 32000, 0] = np.nan  # read after its first two segments are complete
    write_audio(folder / "b_nan.wav", nan, 32000)
    make_clip(folder, "c.flac", 7.0, 48000, 1, "PCM_16", seed=3)
    write_audio(folder / "d_silent.wav", np.zeros((3 * 22050, 1), np.float32), 22050)
    make_clip(folder, "e.wav", 13.0, 16000, 2, "PCM_16", seed=4)
    network = Network(monkeypatch, shared=layout == "shared")
    job = extract(folder, "--out-dir", tmp_path / "job", "--precision", "fp32", "--batch-size", "2")
    assert [r["status"] for r in job["results"]] == ["ok", "failed", "ok", "failed", "ok"] and job["failed"] == 2
    assert "b_nan.wav: sample 672000 (21.000 s), channel 1" in job["results"][1]["error"]
    assert "d_silent.wav: is digital silence" in job["results"][3]["error"]
    if layout == "shared":  # a + b's first, c + d, e's two; b's second, read but waiting, goes with b
        assert network.rows == [2] * 3
    for name in ("a.wav", "c.flac", "e.wav"):
        extract(folder / name, "--out-dir", tmp_path / "solo", "--precision", "fp32", "--batch-size", "2")
    assert stems(tmp_path / "job") == stems(tmp_path / "solo")  # and nothing else: no stem, no temporary file


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_full_disk_fails_one_file_while_its_segments_are_in_flight(home: Path, tmp_path: Path, layout: str,
                                                                      full_disk: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder, "a_small.wav", 0.5, 16000, 1, "FLOAT", seed=1)
    make_clip(folder, "b_big.wav", 25.0, 48000, 2, "FLOAT", seed=2)  # 3 segments; its first write fails
    make_clip(folder, "c_small.wav", 0.5, 16000, 1, "FLOAT", seed=3)
    network = Network(monkeypatch, shared=layout == "shared")
    job = extract(folder, "--out-dir", full_disk, "--precision", "fp32", "--batch-size", "2")
    assert [r["status"] for r in job["results"]] == ["ok", "failed", "ok"]
    assert "No space left on device" in job["results"][1]["error"]
    if layout == "shared":  # b's third segment is dropped with b: a+b, b+c, never b's last
        assert network.rows == [2, 2]
    for name in ("a_small.wav", "c_small.wav"):
        extract(folder / name, "--out-dir", tmp_path / "solo", "--precision", "fp32", "--batch-size", "2")
    assert stems(full_disk) == stems(tmp_path / "solo")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_regions_and_subtraction_keep_their_solo_stems(home: Path, tmp_path: Path, clips: Path, layout: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    Network(monkeypatch, shared=layout == "shared")
    settings = ["--start", "0.2", "--end", "3", "--precision", "fp32", "--batch-size", "2"]
    folder = tmp_path / "short"
    folder.mkdir()
    for name in ("a.wav", "b.flac", "d.mp3"):
        (folder / name).write_bytes((clips / name).read_bytes())
    job = CliRunner().invoke(main, ["remove", "dog", str(folder), "--method", "subtract", "--residual",
                                    "--out-dir", str(tmp_path / "job"), "--json", *settings])
    assert job.exit_code == 0, job.output
    for name in ("a.wav", "b.flac", "d.mp3"):
        solo = CliRunner().invoke(main, ["remove", "dog", str(folder / name), "--method", "subtract", "--residual",
                                         "--out-dir", str(tmp_path / "solo"), "--json", *settings])
        assert solo.exit_code == 0, solo.output
    assert stems(tmp_path / "job") == stems(tmp_path / "solo") and len(stems(tmp_path / "solo")) == 6
    for r in json.loads(job.output)["results"]:
        assert r["duration"] == pytest.approx(2.8, abs=1e-3) and r["processing_seconds"] > 0


class Recording:
    """A progress that checks the protocol: files one at a time, in order, advances inside."""

    def __init__(self) -> None:
        self.files: list[tuple[str, int, int]] = []  # name, announced segments, advanced segments
        self.open = False
        self.jobs: list[int] = []  # files announced by each start_job

    def start_job(self, files: int, where: str) -> None:
        assert not self.open and not self.files and where == ""
        self.jobs.append(files)

    def start_file(self, path: Path, segments: int, seconds: float) -> None:
        assert not self.open and self.jobs
        self.open = True
        self.files.append((path.name, segments, 0))

    def advance(self, segments: int) -> None:
        assert self.open and segments > 0
        name, total, done = self.files[-1]
        self.files[-1] = (name, total, done + segments)

    def end_file(self, result: api.FileResult) -> None:
        assert self.open and result.input.name == self.files[-1][0] and result.status in ("ok", "failed")
        self.open = False


@pytest.mark.parametrize("layout", LAYOUTS)
def test_progress_reports_file_after_file_and_adds_up(home: Path, tmp_path: Path, layout: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    Network(monkeypatch, shared=layout == "shared")
    folder = tmp_path / "in"
    folder.mkdir()
    lengths = {"a.wav": 3.0, "b.wav": 25.0, "c.wav": 0.4, "d.wav": 12.0, "e.wav": 8.0}
    for seed, (name, seconds) in enumerate(lengths.items()):
        make_clip(folder, name, seconds, 44100, 2, "FLOAT", seed=seed)
    write_audio(folder / "c2_silent.wav", np.zeros((44100, 2), np.float32), 44100)
    sep = api.Separator(device="cpu", precision="fp32", batch_size=3)
    progress = Recording()
    job = sep.extract([folder], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "out"), progress=progress)
    assert not progress.open and progress.jobs == [6]
    names = sorted([*lengths, "c2_silent.wav"])
    assert [name for name, _, _ in progress.files] == names
    for (name, announced, advanced), result in zip(progress.files, job.results):
        assert announced == advanced, name  # the silent file's segment was separated before it was refused
        assert result.status == ("failed" if "silent" in name else "ok")
    ok = [r for r in job.results if r.status == "ok"]
    assert all(r.seconds > 0 for r in ok) and sum(r.seconds for r in ok) <= job.total_seconds
    with RichProgress() as bar:  # the CLI's bars take the same calls
        sep.extract([folder], api.request("dog"), api.OutputPlan(out_dir=tmp_path / "out2"), progress=bar)


def shared(monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    if layout == "shared":
        monkeypatch.setattr(stream, "shared_rows", lambda device, batch_size: batch_size)


def batches(segments: list[int], batch: int, layout: str) -> list[int]:
    """Rows of each network call for sources of ``segments`` segments."""
    if layout == "shared":
        return [batch] * -(-sum(segments) // batch)
    return [min(batch, n - i) for n in segments for i in range(0, n, batch)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch,prefetch", [(1, 2), (2, 1), (3, 2), (2, 0)])
def test_read_ahead_opens_a_bounded_number_of_files(batch: int, prefetch: int, layout: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """However many files a job has, at most (prefetch + 1) * batch + 2 are open (begun and not
    yet finished) at any network call; the reader is given time to run as far ahead as it may."""
    shared(monkeypatch, layout)
    options = EngineOptions(batch_size=batch, prefetch=prefetch)
    count = 60
    seconds = [1.0 + (i % 3) * 6.0 for i in range(count)]  # 1 or 2 segments
    begun: list[int] = []
    finished: list[int] = []
    most = [0]

    def blocks(i: int) -> Iterator[np.ndarray]:
        begun.append(i)
        yield tone(seconds[i], 16000 if i % 2 else 44100, 1 + i % 2, seed=i)

    def check() -> None:
        time.sleep(0.02)  # an unbounded reader would get far ahead
        most[0] = max(most[0], len(begun) - len(finished))
        assert len(begun) - len(finished) <= (prefetch + 1) * batch + 2

    model = StandIn(check=check)
    sources = (Source(blocks(i), 16000 if i % 2 else 44100) for i in range(count))
    for out in Batcher(model, torch.zeros(1, 4), sources, options):
        assert out.error is None
        if out.done:
            finished.append(out.index)
    assert finished == list(range(count))
    assert model.rows == batches([segment_count(int(s * 32000), options) for s in seconds], batch, layout)
    if prefetch:
        assert most[0] > batch  # the reader did read ahead, across files
    assert [t for t in threading.enumerate() if t.name == "clapsep-reader"] == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_source_of_a_batcher_gives_what_it_gives_alone(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine level: the overlap-add, resampling back and alignment of each source see the same
    estimates in the same order whatever shared their batches."""
    shared(monkeypatch, layout)
    options = EngineOptions(batch_size=3, overlap=0.25)
    signals = [(tone(s, r, c, seed=i), r) for i, (s, r, c) in
               enumerate([(2.0, 44100, 2), (17.0, 48000, 1), (0.3, 8000, 3), (31.0, 32000, 2), (9.9, 22050, 1)])]
    alone = []
    for x, rate in signals:
        pairs = list(separate_stream(StandIn(), torch.zeros(1, 4), [x[i:i + 7000] for i in range(0, len(x), 7000)],
                                     rate, options))
        alone.append((np.concatenate([t for t, _ in pairs]), np.concatenate([s for _, s in pairs])))
    together: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in signals]
    model = StandIn()
    sources = [Source([x[i:i + 7000] for i in range(0, len(x), 7000)], rate) for x, rate in signals]
    for out in Batcher(model, torch.zeros(1, 4), sources, options):
        together[out.index].extend(out.pairs)
    for (target, source), pairs, (x, _) in zip(alone, together, signals):
        assert np.array_equal(np.concatenate([t for t, _ in pairs]), target)
        assert np.array_equal(np.concatenate([s for _, s in pairs]), source) and np.array_equal(source, x)
    segments = [segment_count(-(-len(x) * 32000 // rate), options) for x, rate in signals]
    assert segments == [1, 2, 1, 4, 1]
    assert model.rows == batches(segments, 3, layout)  # shared: 9 segments in 3 calls, not 6
