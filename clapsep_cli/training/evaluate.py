"""Evaluation: the paper's protocol on benchmark manifests, and a user's own mixture/target pairs.

Benchmark protocol (``source_file,positive_caption,noise_file,negative_caption``): each clip is
loaded at 32 kHz mono and cut or zero-padded to 10 s; the noise is scaled to the target's power
and added (0 dB); if the mixture peaks above 1, mixture and target are both scaled by
0.9 / peak. The query is the captions' CLAP text embeddings, concatenated raw as in the official
evaluation, once with the negative caption and once without it. Reported: SDRi and SI-SDRi
(metric of the estimate minus metric of the mixture, both against the target), mean and std.

Pairs (``mixture_file,target_file,positive_caption[,negative_caption]``): real mixtures of any
length go through the same streaming engine as ``clapsep extract``. A target whose length, rate
or channel count differs from its mixture's is still scored (mono at 32 kHz, on the common
length) but the row carries a warning.

The model is loaded only when the first row is ready to be scored, so a manifest whose files
are all missing fails without needing one.

Rows are appended to a CSV as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapsep_cli.audio.reader import BLOCK, AudioInfo, probe
from clapsep_cli.engine.batch import separate_batch
from clapsep_cli.engine.stream import separate_stream
from clapsep_cli.errors import ClapsepError
from clapsep_cli.network.architecture import SAMPLE_RATE, SEGMENT_SAMPLES
from clapsep_cli.queries.spec import Query
from clapsep_cli.training import metrics
from clapsep_cli.training.data import load_mono32, mix_at_0db

BENCHMARK_COLUMNS = ("source_file", "positive_caption", "noise_file", "negative_caption")
PAIR_COLUMNS = ("mixture_file", "target_file", "positive_caption")
MODES = ("with_negative", "positive_only")


def read_manifest(path: Path) -> tuple[str, list[dict[str, str]]]:
    """("benchmark" | "pairs", rows)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            columns = tuple(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ClapsepError(f"{path}: cannot read the manifest ({err})") from None
    if all(c in columns for c in BENCHMARK_COLUMNS):
        return "benchmark", rows
    if all(c in columns for c in PAIR_COLUMNS):
        return "pairs", rows
    raise ClapsepError(f"{path}: needs columns {','.join(BENCHMARK_COLUMNS)} (benchmark) or "
                       f"{','.join(PAIR_COLUMNS)}[,negative_caption] (your own pairs)")


@dataclass(frozen=True)
class Summary:
    rows: int
    failed: int
    scores: dict[str, dict[str, float]]  # mode -> {"sdri_mean", "sdri_std", "si_sdri_mean", "si_sdri_std"}
    warnings: list[str]  # "row N: ..." for scored rows whose files did not match
    first_error: str | None = None


class Evaluator:
    """Scores a model on a manifest, appending one CSV row per manifest row.

    ``separator`` (a :class:`clapsep_cli.api.Separator`) loads its model when the first row is
    scored, so a manifest whose rows are all bad never loads one."""

    def __init__(self, separator: Any, batch_size: int = 4):
        self.separator, self.batch_size = separator, batch_size

    @property
    def model(self) -> Any:
        return self.separator.model

    def run(self, manifest: Path, audio_dir: Path, out_csv: Path, limit: int | None = None,
            on_row: Callable[[], None] | None = None) -> Summary:
        kind, rows = read_manifest(manifest)
        rows = rows[:limit] if limit else rows
        done = _done_rows(out_csv)
        todo = [(i, r) for i, r in enumerate(rows) if i not in done]
        columns = ["index", *(BENCHMARK_COLUMNS if kind == "benchmark" else (*PAIR_COLUMNS, "negative_caption")),
                   "error", "warning", *[f"{m}_{k}" for m in MODES for k in ("sdr", "si_sdr", "sdri", "si_sdri")]]
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        new_file = not out_csv.exists() or out_csv.stat().st_size == 0
        with open(out_csv, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            batches = self._benchmark(todo, audio_dir) if kind == "benchmark" else self._pairs(todo, audio_dir)
            for results in batches:
                for result in results:
                    writer.writerow(result)
                    if on_row:
                        on_row()
                f.flush()
        return summarise(out_csv)

    def _benchmark(self, todo: list[tuple[int, dict[str, str]]], audio_dir: Path) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(todo), self.batch_size):
            batch, items, out = todo[start : start + self.batch_size], [], []
            for index, row in batch:
                try:
                    target = load_mono32(audio_dir / row["source_file"], SEGMENT_SAMPLES)
                    noise = load_mono32(audio_dir / row["noise_file"], SEGMENT_SAMPLES)
                    items.append((index, row, *mix_at_0db(target, noise)))
                except ClapsepError as err:
                    out.append({"index": index, **row, "error": str(err)})
            if items:
                mixtures = torch.stack([m for _, _, m, _ in items])
                targets = torch.stack([t for _, _, _, t in items])
                scores = self._score(mixtures, targets, [r for _, r, _, _ in items])
                out += [{"index": i, **r, "error": "", **s} for (i, r, _, _), s in zip(items, scores)]
            yield sorted(out, key=lambda r: r["index"])

    def _pairs(self, todo: list[tuple[int, dict[str, str]]], audio_dir: Path) -> Iterator[list[dict[str, Any]]]:
        for index, row in todo:
            try:
                infos = [probe(audio_dir / row[k]) for k in ("mixture_file", "target_file")]
                mixture = load_mono32(infos[0].path)
                target = load_mono32(infos[1].path)
                n = min(len(mixture), len(target))
                scores = self._score(mixture[None, :n], target[None, :n], [row])[0]
                yield [{"index": index, **row, "error": "", "warning": mismatch(*infos), **scores}]
            except ClapsepError as err:
                yield [{"index": index, **row, "error": str(err)}]

    def _score(self, mixtures: torch.Tensor, targets: torch.Tensor,
               rows: list[dict[str, str]]) -> list[dict[str, float]]:
        scores: list[dict[str, float]] = [{} for _ in rows]
        for mode in MODES:
            conds = torch.cat([self.separator.condition(Query(
                positive=(r["positive_caption"],),
                negative=(r["negative_caption"],) if mode == "with_negative" and r.get("negative_caption") else ()))
                for r in rows])
            estimates = self._separate(mixtures, conds)
            values = {"sdr": metrics.sdr(estimates, targets), "si_sdr": metrics.si_sdr(estimates, targets),
                      "sdri": metrics.improvement("sdr", estimates, mixtures, targets),
                      "si_sdri": metrics.improvement("si_sdr", estimates, mixtures, targets)}
            for i, s in enumerate(scores):
                s.update({f"{mode}_{k}": round(float(v[i]), 4) for k, v in values.items()})
        return scores

    def _separate(self, mixtures: torch.Tensor, conds: torch.Tensor) -> torch.Tensor:
        """Estimates for 10 s clips (one segment each, batched) or one long pair (streamed)."""
        if mixtures.shape[-1] == SEGMENT_SAMPLES:
            return torch.cat(separate_batch(self.model, list(mixtures[:, None]), conds))
        blocks = [mixtures[0, i : i + BLOCK].numpy()[:, None] for i in range(0, mixtures.shape[-1], BLOCK)]
        out = separate_stream(self.model, conds, blocks, SAMPLE_RATE, self.separator.options)
        return torch.from_numpy(np.concatenate([t for t, _ in out])[:, 0])[None]


def mismatch(mixture: AudioInfo, target: AudioInfo) -> str:
    """What differs between a pair's files ("" if nothing): length, rate, channel count."""
    diffs = []
    if abs(mixture.duration - target.duration) > 0.5 / min(mixture.rate, target.rate):
        diffs.append(f"length {target.duration:.3f} s vs {mixture.duration:.3f} s")
    if mixture.rate != target.rate:
        diffs.append(f"rate {target.rate} vs {mixture.rate} Hz")
    if mixture.channels != target.channels:
        diffs.append(f"{target.channels} vs {mixture.channels} channels")
    if not diffs:
        return ""
    return ("target differs from mixture: " + ", ".join(diffs)
            + " (scored in mono at 32 kHz on the common length)")


def _done_rows(out_csv: Path) -> set[int]:
    if not out_csv.is_file():
        return set()
    with open(out_csv, newline="", encoding="utf-8") as f:
        return {int(r["index"]) for r in csv.DictReader(f) if r.get("index", "").isdigit()}


def summarise(out_csv: Path) -> Summary:
    """Mean and std of SDRi and SI-SDRi per mode over the finished rows of ``out_csv``."""
    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    good = [r for r in rows if not r.get("error")]
    scores = {}
    for mode in MODES:
        summary = {}
        for key in ("sdri", "si_sdri"):
            values = np.array([float(r[f"{mode}_{key}"]) for r in good if r.get(f"{mode}_{key}")])
            summary[f"{key}_mean"] = float(values.mean()) if len(values) else math.nan
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        scores[mode] = summary
    warnings = [f"row {r['index']}: {r['warning']}" for r in good if r.get("warning")]
    first_error = next((r["error"] for r in rows if r.get("error")), None)
    return Summary(len(good), len(rows) - len(good), scores, warnings, first_error)
