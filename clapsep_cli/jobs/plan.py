"""Planning a job: inputs found, probed and checked, every output decided, before any model.

:func:`plan_job` turns inputs (files, folders, :class:`~clapsep_cli.jobs.data.Item` s) and a
request into a :class:`~clapsep_cli.jobs.data.Job` whose results are failed (a bad input),
skipped (its outputs exist) or pending with their :class:`~clapsep_cli.jobs.data.Planned`;
any executor then runs that plan as it is. :func:`unchanged` tells an executor in another
process (the service) whether a planned file is still the one that was probed. Torch-free.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterable
from pathlib import Path

from clapsep_cli.audio import atomic
from clapsep_cli.audio.reader import is_stem, probe
from clapsep_cli.audio.region import Region
from clapsep_cli.audio.writer import choose_format, resolve_clip
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.jobs.data import EventPlan, FileResult, Item, Job, OutputPlan, Planned
from clapsep_cli.queries.request import Request
from clapsep_cli.queries.spec import Query


def collect_inputs(paths: Iterable[Path | Item], pattern: str | None = None,
                   include_stems: bool = False) -> tuple[list[Item], list[Path]]:
    """Files named directly, plus files found under named folders (recursively, hidden entries
    skipped, sorted) that match ``pattern`` or, without one, have an audio file extension.
    Stems clapsep wrote (tagged, see :func:`is_stem`) found in folders are left out
    unless ``include_stems``; a file named directly is always taken.

    Returns (inputs in order, repeats dropped; stems left out).
    """
    out: list[Item] = []
    stems: list[Path] = []
    for given in paths:
        if isinstance(given, Item) or not given.is_dir():
            out.append(given if isinstance(given, Item) else Item(given))
            continue
        for root, dirs, files in os.walk(given):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or (pattern and not fnmatch.fnmatch(name, pattern)):
                    continue
                if pattern is None and Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                found = Path(root) / name
                if not include_stems and is_stem(found):
                    stems.append(found)
                else:
                    out.append(Item(found))
    return list(dict.fromkeys(out)), stems


def check_references(query: Query) -> None:
    """Probe the query's reference clips (one clear line if one is missing or not audio): once
    per request, before anything expensive."""
    for ref in (*query.positive_audio, *query.negative_audio):
        probe(ref.path)


def plan_file(item: Item, query: Query, plan: OutputPlan | EventPlan, region: Region) -> Planned:
    """Probe ``item``'s file and decide its outputs (``region``: where the item has none)."""
    stat = _stat(item.path)  # before the probe: a file changed after it is never taken for the one probed
    info = probe(item.path)
    region = item.region or region
    first, last = region.frames(info)
    if isinstance(plan, EventPlan):
        target = plan.path(item.path, query, item.output)
        _refuse_source_overwrite(item.path, [target])
        return Planned(info, first, last, region.end is not None, plan.format, None, target, None, plan.overwrite,
                       query.tag, plan.detect, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    fmt = choose_format(info, plan.fmt, plan.bit_depth)
    clip = resolve_clip(plan.clip, fmt)
    target, residual = plan.paths(item.path, query, fmt, item.output)
    _refuse_source_overwrite(item.path, [target, residual])
    return Planned(info, first, last, region.end is not None, fmt, clip, target, residual, plan.overwrite,
                   query.tag, gate=plan.gate, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as err:
        raise AudioError(f"{path}: {'no such file' if isinstance(err, FileNotFoundError) else err.strerror or err}"
                         ) from None


def unchanged(result: FileResult) -> bool:
    """Whether a pending result's file is still the one its plan probed (same size and
    modification time); if not, the result fails, saying so."""
    planned = result.planned
    if planned is None:
        return True
    try:
        stat = result.input.stat()
    except OSError as err:
        result.settle("failed", AudioError(f"{result.input}: gone since the job was planned "
                                           f"({err.strerror or err}); run it again"))
        return False
    if (stat.st_size, stat.st_mtime_ns) != (planned.size, planned.mtime_ns):
        what = "its size" if stat.st_size != planned.size else "its modification time"
        result.settle("failed", AudioError(f"{result.input}: changed since the job was planned ({what} differs); "
                                           "run it again"))
        return False
    return True


def plan_results(inputs: list[Item], query: Query, plan: OutputPlan | EventPlan, region: Region
                 ) -> list[FileResult]:
    """A result per input: ``failed`` (bad input), ``skipped`` (its stems exist) or ``pending``
    with its plan. Refuses the whole job (:class:`ClapsepError`) if two inputs would write one
    path, or a stem to be written is one of the inputs. Our temporary files that killed runs
    left in the output folders are removed (see :func:`atomic.remove_stale`)."""
    results = []
    for item in inputs:
        result = FileResult(item.path)
        try:
            planned = plan_file(item, query, plan, region)
        except ClapsepError as err:
            result.settle("failed", err)
            results.append(result)
            continue
        result.target, result.residual = planned.target, planned.residual
        result.rate, result.channels, result.offset_frames = planned.info.rate, planned.info.channels, planned.first
        existing = [p for p in (planned.target, planned.residual) if p is not None and p.exists()]
        if existing and not plan.overwrite:
            exists = ClapsepError(f"{existing[0]} exists ({{setting}} replaces it)", setting="overwrite")
            result.settle("skipped", exists)
        else:
            result.planned = planned
        results.append(result)
    _refuse_collisions(results)
    for folder in {out.parent for r in results if r.planned for out in (r.target, r.residual) if out is not None}:
        atomic.remove_stale(folder)
    return results


def _refuse_collisions(results: list[FileResult]) -> None:
    writers: dict[Path, Path] = {}
    for r in results:
        for out in (r.target, r.residual):
            if out is None:
                continue
            key = out.resolve()
            if key in writers:
                raise ClapsepError(f"{writers[key]} and {r.input} would both write {out}; nothing was written "
                                   "(give a {setting} that tells them apart, e.g. \"{name}.{query}.{ext}\")",
                                   setting="name_template")
            writers[key] = r.input
    sources = {r.input.resolve(): r.input for r in results}
    for r in results:
        for out in (r.target, r.residual) if r.planned else ():
            if out is not None and out.resolve() in sources:
                raise ClapsepError(f"{out}: is also an input of this job; refusing to write over it")


AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".rf64",
                  ".caf", ".au", ".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka"}


def _refuse_source_overwrite(source: Path, outputs: list[Path | None]) -> None:
    src = source.resolve()
    for out in outputs:
        if out is not None and out.resolve() == src:
            raise ClapsepError(f"{out}: refusing to write over the source file")


def plan_job(inputs: Iterable[str | Path | Item], req: Request, plan: OutputPlan | EventPlan | None = None,
             region: Region | None = None, pattern: str | None = None, include_stems: bool = False) -> Job:
    """Check every input and decide every output, without a model.

    ``inputs``: files, folders (every audio file under them, see :func:`collect_inputs`) and
    :class:`Item` s (a file with its own region or stem path). ``plan`` (default: the request's
    residual choice) says where stems go, or, an :class:`EventPlan`, that the job finds events
    and where they go; ``region`` applies to inputs without their own.
    Bad inputs become failed results and inputs whose stems exist skipped ones; raises
    :class:`ClapsepError` only for what stops the whole job: no inputs, a missing reference
    clip, output collisions.
    """
    started = time.perf_counter()
    plan = plan or OutputPlan(residual=req.residual)
    items, stems = collect_inputs([i if isinstance(i, Item) else Path(i) for i in inputs], pattern, include_stems)
    if not items:
        raise ClapsepError("no audio files found in the given folders"
                           + (f" ({len(stems)} stems of earlier runs left out; {{setting}} takes them)"
                              if stems else ""), setting="include_stems" if stems else None)
    if plan.output is not None and len(items) > 1:
        raise SettingError("output", "names one stem; with several inputs name a folder or a name template")
    check_references(req.query)
    region = region or Region()
    job = Job(req, plan_results(items, req.query, plan, region), stems, plan, items=items, region=region)
    job.total_seconds = time.perf_counter() - started
    return job
