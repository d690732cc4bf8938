"""How well `clapsep find` locates sounds, with the standard sound event detection metrics.

Mixtures made here with known event times: the five kinds of sound `learning_check.py` trains on
(fresh ones, from another seed), 1 to 30 events a file at random onsets, lengths and levels,
over noise and each other. Every file is searched for every kind, with its caption as the query,
by the small model `learning_check.py` installs (run it first), and by two baselines in the same
run: an energy detector that knows nothing of the query (the mixture's frame level), and the
extracted stem's plain level. All three go through the same smoothing, hysteresis, merging and
minimum length; each method's settings are chosen on the first half of the files (best
event-based F1) and scored on the other half with sed_eval (event-based F1, 200 ms onset collar,
offsets within 200 ms or 20 % of the event; segment-based F1 in 1 s segments) and psds_eval
(PSDS over the method's threshold sweep, DCASE's scenario 1 tolerances). Last, for
`extract --where found`: on the scored half, the SDR of each kind's stem against its clean sound,
kept everywhere and kept only inside the events found with the tuned settings.

    pip install -e '.[bench]'
    python benchmarks/learning_check.py --out bench-out/learning
    python benchmarks/find_accuracy.py --out bench-out/learning
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.learning_check import CAPTIONS, RATE, speech, synth  # noqa: E402
from clapsep_cli import api  # noqa: E402
from clapsep_cli.engine.stream import separate_stream  # noqa: E402
from clapsep_cli.events.detect import FRAME_SAMPLES, FrameScorer, find_events  # noqa: E402

MODEL = "learning-check"
KINDS = list(CAPTIONS)
NOISE = 0.01  # background noise, standard deviation (-40 dBFS)
THRESHOLDS = [0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RELEASES = [0.5, 0.75, 1.0]  # release level as a fraction of the threshold
MIN_DURATIONS = [0.1, 0.25, 0.5]
MERGES = [0.25, 0.5, 1.0]
SMOOTH = api.DetectOptions().smooth


@dataclass
class Mixture:
    name: str
    wave: np.ndarray  # (frames,) at RATE
    events: list[tuple[float, float, str]]  # reference (onset, offset, kind), overlaps of a kind joined
    clean: dict[str, np.ndarray]  # each kind's sound alone, (frames,)


def make_mixture(name: str, rng: np.random.Generator, seconds: float, folder: Path) -> Mixture:
    """Noise, and 1 to 30 events of random kinds, lengths (0.5 to 4 s), levels (-6 to +6 dB) and onsets."""
    n = int(seconds * RATE)
    wave = NOISE * rng.standard_normal(n)
    clean = {k: np.zeros(n, np.float32) for k in KINDS}
    spans: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    for _ in range(int(rng.integers(1, 31))):
        kind = str(rng.choice(KINDS))
        clip = speech(rng, folder) if kind == "speech" else synth(kind, rng)
        length = min(int(rng.uniform(0.5, 4.0) * RATE), len(clip))
        first = int(rng.integers(0, len(clip) - length + 1))
        piece = clip[first:first + length] * 10 ** (rng.uniform(-6, 6) / 20)
        active = np.flatnonzero(np.abs(piece) > 1e-3)  # the sound's own extent (speech has silent ends)
        if not len(active):
            continue
        onset = int(rng.integers(0, n - length))
        wave[onset:onset + length] += piece
        clean[kind][onset:onset + length] += piece
        spans[kind].append(((onset + active[0]) / RATE, (onset + active[-1] + 1) / RATE))
    events = [(on, off, kind) for kind, s in spans.items() for on, off in _union(s)]
    return Mixture(name, wave.astype(np.float32), sorted(events), clean)


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for on, off in sorted(spans):
        if out and on <= out[-1][1]:
            out[-1][1] = max(out[-1][1], off)
        else:
            out.append([on, off])
    return [(a, b) for a, b in out]


def separated(sep: api.Separator, mix: Mixture, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(``kind``'s stem, our frame scores) for ``mix``."""
    cond = sep.condition(api.request(CAPTIONS[kind][0]))
    blocks = [mix.wave[i:i + RATE * 10, None] for i in range(0, len(mix.wave), RATE * 10)]
    scorer, scores, stem = FrameScorer(), [], []
    for target, source in separate_stream(sep.model, cond, blocks, RATE, sep.options, model_rate=True):
        scores.append(scorer.push(target, source))
        stem.append(target[:, 0])
    scores.append(scorer.finish())
    return np.concatenate(stem), np.concatenate(scores)


def curves(sep: api.Separator, mix: Mixture, kind: str) -> dict[str, np.ndarray]:
    """Per-frame scores of the three methods for ``kind`` in ``mix``: ours (the separated
    share of the energy), the stem's level and the mixture's level (both in dB, mapped so that
    -80 dBFS is 0 and 0 dBFS is 1)."""
    stem, scores = separated(sep, mix, kind)
    return {"clapsep find": scores, "stem level": _level(stem), "energy (no query)": _level(mix.wave)}


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - estimate) ** 2), 1e-12)))


def where_found(sep: api.Separator, mixtures: list[Mixture], options: api.DetectOptions) -> dict[str, list[float]]:
    """SDR of each present kind's stem, kept everywhere and only inside the events found."""
    from clapsep_cli.jobs.run import gate

    out: dict[str, list[float]] = {"everywhere": [], "found": []}
    for m in mixtures:
        t = np.arange(len(m.wave)) / RATE
        for kind in KINDS:
            if not np.any(m.clean[kind]):
                continue
            stem, scores = separated(sep, m, kind)
            events = find_events(scores, options, kind, seconds=len(m.wave) / RATE)
            out["everywhere"].append(sdr(m.clean[kind], stem))
            out["found"].append(sdr(m.clean[kind], stem * gate(events, t)))
    return out


def _level(x: np.ndarray) -> np.ndarray:
    frames = -(-len(x) // FRAME_SAMPLES)
    padded = np.zeros(frames * FRAME_SAMPLES)
    padded[:len(x)] = x
    rms = np.sqrt(np.mean(padded.reshape(frames, -1) ** 2, axis=1))
    return np.clip((20 * np.log10(np.maximum(rms, 1e-9)) + 80) / 80, 0, 1)


def detections(scores: dict[tuple[str, str], np.ndarray], options: api.DetectOptions, seconds: dict[str, float]
               ) -> list[tuple[str, float, float, str]]:
    return [(name, e.start, e.end, kind) for (name, kind), s in scores.items()
            for e in find_events(s, options, kind, seconds=seconds[name])]


def sed_metrics(reference: list[tuple[str, float, float, str]], estimated: list[tuple[str, float, float, str]],
                names: list[str]) -> dict[str, dict[str, float]]:
    """sed_eval's event-based and segment-based F1, overall and per kind."""
    import dcase_util
    import sed_eval

    def container(rows: list[tuple[str, float, float, str]]) -> dcase_util.containers.MetaDataContainer:
        return dcase_util.containers.MetaDataContainer(
            [{"filename": f, "onset": on, "offset": off, "event_label": k} for f, on, off, k in rows])

    ref, est = container(reference), container(estimated)
    event = sed_eval.sound_event.EventBasedMetrics(event_label_list=KINDS, t_collar=0.2, percentage_of_length=0.2)
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=KINDS, time_resolution=1.0)
    for name in names:
        r, e = ref.filter(filename=name), est.filter(filename=name)
        event.evaluate(reference_event_list=r, estimated_event_list=e)
        segment.evaluate(reference_event_list=r, estimated_event_list=e)
    out = {"overall": {"event_f1": event.results_overall_metrics()["f_measure"]["f_measure"],
                       "segment_f1": segment.results_overall_metrics()["f_measure"]["f_measure"]}}
    ev_class, seg_class = event.results_class_wise_metrics(), segment.results_class_wise_metrics()
    for kind in KINDS:
        out[kind] = {"event_f1": ev_class[kind]["f_measure"]["f_measure"],
                     "segment_f1": seg_class[kind]["f_measure"]["f_measure"]}
    return out


def psds(reference: list[tuple[str, float, float, str]], sweep: list[list[tuple[str, float, float, str]]],
         seconds: dict[str, float], names: list[str]) -> float:
    """PSDS (DCASE scenario 1 tolerances: 0.7 / 0.7, no cross-trigger or instability cost,
    up to 100 false positives per hour) over the operating points of a threshold sweep."""
    import pandas as pd
    from psds_eval import PSDSEval

    columns = ["filename", "onset", "offset", "event_label"]
    gt = pd.DataFrame([r for r in reference if r[0] in names], columns=columns)
    meta = pd.DataFrame([(n, seconds[n]) for n in names], columns=["filename", "duration"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = PSDSEval(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=0.3, ground_truth=gt, metadata=meta)
        for rows in sweep:
            evaluator.add_operating_point(pd.DataFrame([r for r in rows if r[0] in names], columns=columns))
        return float(evaluator.psds(alpha_ct=0.0, alpha_st=0.0, max_efpr=100).value)


def grid() -> list[api.DetectOptions]:
    """The settings tried for each method on the tuning half."""
    out = []
    for threshold, release, min_duration, merge in itertools.product(THRESHOLDS, RELEASES, MIN_DURATIONS, MERGES):
        out.append(api.DetectOptions(threshold=threshold, release=min(threshold * release, threshold),
                                     min_duration=min_duration, merge=merge, smooth=SMOOTH))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "learning")
    parser.add_argument("--files", type=int, default=24, help="Mixtures (half tune, half score).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of each mixture.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    os.environ["CLAPSEP_HOME"] = str(args.out / "store")
    sep = api.Separator(MODEL, device="cpu", precision="fp32")
    try:
        sep.model  # noqa: B018 - loaded now, to fail at once
    except api.ClapsepError as err:
        raise SystemExit(f"{err}: run benchmarks/learning_check.py --out {args.out} first") from None
    rng = np.random.default_rng(1)  # learning_check's training data is seed 0
    with tempfile.TemporaryDirectory() as tmp:
        mixtures = [make_mixture(f"mix{i:02d}", rng, args.seconds, Path(tmp)) for i in range(args.files)]
    reference = [(m.name, on, off, k) for m in mixtures for on, off, k in m.events]
    seconds = {m.name: len(m.wave) / RATE for m in mixtures}
    started = time.perf_counter()
    scores: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    for m in mixtures:
        for kind in KINDS:
            for method, curve in curves(sep, m, kind).items():
                scores.setdefault(method, {})[(m.name, kind)] = curve
    separating = time.perf_counter() - started
    names = [m.name for m in mixtures]
    tune, test = names[: len(names) // 2], names[len(names) // 2:]
    print(f"{len(mixtures)} mixtures of {args.seconds:g} s, {len(reference)} reference events "
          f"({sum(1 for r in reference if r[0] in test)} in the scored half); {len(KINDS)} queries each, "
          f"separated in {separating:.0f} s\n")
    results = {}
    for method, curve in scores.items():
        tried = [(sed_metrics(reference, detections(curve, o, seconds), tune)["overall"]["event_f1"], o)
                 for o in grid()]
        best_f1, best = max(tried, key=lambda t: t[0])
        scored = sed_metrics(reference, detections(curve, best, seconds), test)
        ratio = best.low / best.threshold
        sweep = [detections(curve, replace(best, threshold=t, release=min(t * ratio, t)), seconds) for t in THRESHOLDS]
        results[method] = {"settings": {"threshold": best.threshold, "release": round(best.low, 4),
                                        "min_duration": best.min_duration, "merge": best.merge,
                                        "smooth": best.smooth},
                           "tuning_event_f1": best_f1, "metrics": scored, "psds": psds(reference, sweep, seconds, test)}
    _print(results)
    best = api.DetectOptions(**results["clapsep find"]["settings"])
    print(f"\nclapsep find at threshold {best.threshold:g}, release {best.low:g}: event F1 / segment F1 on the scored "
          "half by minimum duration (rows) and merge gap (columns)\n")
    print("| min \\ merge | " + " | ".join(f"{m:g} s" for m in MERGES) + " |\n|---|" + "---|" * len(MERGES))
    for min_duration in MIN_DURATIONS:
        cells = []
        for merge in MERGES:
            m = sed_metrics(reference, detections(scores["clapsep find"], replace(
                best, min_duration=min_duration, merge=merge), seconds), test)["overall"]
            cells.append(f"{m['event_f1']:.3f} / {m['segment_f1']:.3f}")
        print(f"| {min_duration:g} s | " + " | ".join(cells) + " |")
    kept = where_found(sep, [m for m in mixtures if m.name in test], best)
    results["where_found_sdr"] = {k: float(np.mean(v)) for k, v in kept.items()}
    gain = np.array(kept["found"]) - np.array(kept["everywhere"])
    print(f"\n`extract --where found`, {len(gain)} stems of the scored half: mean SDR against the clean sound "
          f"{results['where_found_sdr']['everywhere']:.2f} dB kept everywhere, "
          f"{results['where_found_sdr']['found']:.2f} dB kept where found; better for {np.mean(gain > 0):.0%} "
          f"of the stems (median change {np.median(gain):+.2f} dB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _print(results: dict) -> None:
    print("| method | settings (tuned on the first half) | event F1 | segment F1 | PSDS |\n|---|---|---|---|---|")
    for method, r in results.items():
        s, m = r["settings"], r["metrics"]["overall"]
        print(f"| {method} | threshold {s['threshold']:g}, release {s['release']:g}, min {s['min_duration']:g} s, "
              f"merge {s['merge']:g} s | {m['event_f1']:.3f} | {m['segment_f1']:.3f} | {r['psds']:.3f} |")
    print("\nPer kind, event F1 / segment F1 on the scored half:\n")
    print("| kind | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for kind in KINDS:
        cells = [f"{r['metrics'][kind]['event_f1']:.3f} / {r['metrics'][kind]['segment_f1']:.3f}"
                 for r in results.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
