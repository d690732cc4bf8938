"""The evaluation protocol and the `evaluate` command (benchmark manifests and own pairs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from clapsep_cli.cli import main
from clapsep_cli.engine.batch import separate_batch
from clapsep_cli.training import evaluate
from clapsep_cli.training.data import load_mono32, mix_at_0db
from tests.helpers import tone, write_audio


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_mixing_at_0db_and_peak_rule() -> None:
    target = torch.sin(torch.arange(32000) / 10.0) * 0.8
    noise = torch.randn(32000) * 0.05
    mixture, scaled_target = mix_at_0db(target, noise)
    added = mixture - scaled_target
    ratio = scaled_target.square().sum() / added.square().sum()
    assert torch.isclose(ratio, torch.tensor(1.0, dtype=ratio.dtype), atol=1e-4)
    assert mixture.abs().max() <= 0.9 + 1e-6  # peak rule applied (the sum exceeded 1)
    gain = scaled_target.norm() / target.norm()
    assert gain < 1 and torch.allclose(scaled_target, target * gain, atol=1e-6)  # same scale on both


def test_clips_are_cut_or_padded_to_ten_seconds(tmp_path: Path) -> None:
    short = write_audio(tmp_path / "s.wav", tone(3.0, 44100, channels=2), 44100)
    long = write_audio(tmp_path / "l.wav", tone(12.0, 16000), 16000)
    a, b = load_mono32(short, 320000), load_mono32(long, 320000)
    assert a.shape == b.shape == (320000,)
    assert torch.all(a[96001:] == 0) and torch.any(b[-1000:] != 0)


@pytest.fixture
def benchmark(tmp_path: Path) -> tuple[Path, Path]:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(5):
        write_audio(audio / f"c{i}.wav", tone(4.0 + i, 32000, freq=200 * (i + 1), seed=i), 32000)
    manifest = tmp_path / "eval.csv"
    rows = [("c0.wav", "a dog barks", "c1.wav", "rain"), ("c1.wav", "rain", "c2.wav", "speech"),
            ("c2.wav", "speech", "c3.wav", "wind"), ("c3.wav", "wind", "c4.wav", "a bird"),
            ("missing.wav", "x", "c0.wav", "y")]
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_file", "positive_caption", "noise_file", "negative_caption"])
        w.writerows(rows)
    return manifest, audio


def test_evaluate_benchmark_resumes_and_summarises(home: Path, benchmark: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, audio = benchmark
    conditions: list[torch.Tensor] = []  # what each network call was conditioned on, in order

    def recording(model: object, mixtures: list[torch.Tensor], conds: torch.Tensor) -> list[torch.Tensor]:
        conditions.append(conds.clone())
        return separate_batch(model, mixtures, conds)

    monkeypatch.setattr(evaluate, "separate_batch", recording)
    out = tmp_path / "rows.csv"
    first = run("evaluate", manifest, "--audio-dir", audio, "--out", out, "--limit", "2", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["rows"] == 2
    second = json.loads(run("evaluate", manifest, "--audio-dir", audio, "--out", out, "--json",
                            "--batch-size", "3").stdout)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == [0, 1, 2, 3, 4]  # resumed, nothing done twice
    assert second["rows"] == 4 and second["failed_rows"] == 1
    assert "no such file" in rows[-1]["error"]
    for mode in ("with_negative", "positive_only"):
        values = [float(r[f"{mode}_si_sdri"]) for r in rows if not r["error"]]
        assert np.isclose(second["scores"][mode]["si_sdri_mean"], np.mean(values))
        assert np.isclose(second["scores"][mode]["si_sdri_std"], np.std(values, ddof=1))
    # The negative caption reaches the network: each batch is separated twice, with_negative then
    # positive_only, on conditions that differ in the negative half only. (How much the tiny
    # random model's estimate then moves is not a property of evaluate: 1e-4 dB has been seen.)
    assert [len(c) for c in conditions] == [2, 2, 2, 2]  # rows 0-1 (--limit 2), then 2-4 less the missing file
    half = conditions[0].shape[1] // 2
    for with_negative, positive_only in zip(conditions[::2], conditions[1::2]):
        assert torch.equal(with_negative[:, :half], positive_only[:, :half])
        assert all(not torch.equal(a, b) for a, b in zip(with_negative[:, half:], positive_only[:, half:]))


def test_evaluate_own_pairs_of_any_length(home: Path, tmp_path: Path) -> None:
    target = tone(13.0, 44100, seed=1)
    noise = tone(13.0, 44100, freq=3000, seed=2)
    write_audio(tmp_path / "t.wav", target, 44100)
    write_audio(tmp_path / "m.wav", target + noise, 44100)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("mixture_file,target_file,positive_caption\nm.wav,t.wav,a dog barks\n")
    result = run("evaluate", manifest, "--audio-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 1 and np.isfinite(summary["scores"]["positive_only"]["sdri_mean"])


def test_bad_manifest_is_one_line(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = run("evaluate", bad, "--audio-dir", tmp_path)
    assert result.exit_code == 1 and "needs columns" in result.output
