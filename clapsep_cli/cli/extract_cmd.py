"""``clapsep extract``: keep what the query describes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from clapsep_cli import store
from clapsep_cli.cli.common import TimeType, emit_json, engine_options, engine_settings, load_model, model_options
from clapsep_cli.errors import ClapsepError
from clapsep_cli.extract import DEFAULT_NAME, Extractor, FileResult, OutputPlan, Region, collect_inputs
from clapsep_cli.queries import AudioRef, EmbeddingCache, Query


def output_options(f):  # type: ignore[no-untyped-def]
    """Where and how stems are written."""
    for decorator in reversed([
        click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                     help="Stem file for a single input (default: next to the source)."),
        click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Write stems into this folder instead of next to each source."),
        click.option("--name", "name_template", default=DEFAULT_NAME, show_default=True,
                     help="Stem file name template: {stem} {query} {ext} {name} {suffix}."),
        click.option("--residual", is_flag=True, help="Also write the residual (source minus stem)."),
        click.option("--format", "fmt", type=click.Choice(["wav", "flac", "ogg", "mp3", "aiff"]),
                     help="Stem format (default: the source's, where writable, else wav)."),
        click.option("--bit-depth", type=click.Choice(["16", "24", "32f"]),
                     help="Sample format of wav/flac/aiff stems (default: the source's)."),
        click.option("--clip", type=click.Choice(["rescale", "clamp", "none"]),
                     help="Samples beyond full scale: clamp (default for integer formats), rescale the "
                          "stem to peak 1, or none (float formats only; their default)."),
        click.option("--overwrite", is_flag=True, help="Replace existing stems (sources are never touched)."),
        click.option("--start", type=TimeType(), help="Process only from this time (s or hh:mm:ss.fff)."),
        click.option("--end", type=TimeType(), help="Process only up to this time."),
        click.option("--glob", "pattern", metavar="PATTERN",
                     help="In folders, take files matching this pattern (default: known audio types)."),
        click.option("--json", "json_output", is_flag=True, help="Print one machine-readable JSON result."),
    ]):
        f = decorator(f)
    return f


def query_options(f):  # type: ignore[no-untyped-def]
    for decorator in reversed([
        click.option("-n", "--negative", multiple=True, metavar="TEXT", help="Sound to reject (repeatable)."),
        click.option("--query-audio", multiple=True, metavar="FILE[@START-END]",
                     help="Reference clip of the sound to keep (repeatable)."),
        click.option("--negative-audio", multiple=True, metavar="FILE[@START-END]",
                     help="Reference clip of a sound to reject (repeatable)."),
        click.option("--audio-weight", type=click.FloatRange(0.0, 1.0),
                     help="Weight of reference audio against text on the same side (default 0.5)."),
    ]):
        f = decorator(f)
    return f


def build_query(positive: list[str], negative: tuple[str, ...], query_audio: tuple[str, ...],
                negative_audio: tuple[str, ...], audio_weight: float | None, label: str | None = None) -> Query:
    return Query(
        positive=tuple(t for t in positive if t.strip()),
        negative=tuple(negative),
        positive_audio=tuple(AudioRef.parse(a) for a in query_audio),
        negative_audio=tuple(AudioRef.parse(a) for a in negative_audio),
        audio_weight=audio_weight, label=label)


@click.command()
@click.argument("query")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@query_options
@output_options
@model_options
@engine_options
def extract(query: str, files: tuple[Path, ...], negative: tuple[str, ...], query_audio: tuple[str, ...],
            negative_audio: tuple[str, ...], audio_weight: float | None, **kwargs: object) -> None:
    """Keep the sound QUERY describes, from each FILE (or folder).

    QUERY is a text such as "dog barking"; an empty QUERY ("") with --negative keeps everything
    but the negative. Writes <name>.<query>.wav next to each source.
    """
    q = build_query([query], negative, query_audio, negative_audio, audio_weight)
    run_job(q, files, **kwargs)  # type: ignore[arg-type]


def run_job(query: Query, files: tuple[Path, ...], *, output: Path | None, out_dir: Path | None, name_template: str,
            residual: bool, fmt: str | None, bit_depth: str | None, clip: str | None, overwrite: bool,
            start: float | None, end: float | None, pattern: str | None, json_output: bool, model_name: str,
            device: str, precision: str, overlap: float, batch_size: int) -> None:
    """Shared by ``extract`` and ``remove``: load once, separate every input, report."""
    from clapsep_cli import progress as progress_mod

    inputs, scanned = collect_inputs(files, pattern)
    if not inputs:
        raise ClapsepError("no audio files found in the given folders")
    if output is not None and len(inputs) > 1:
        raise ClapsepError("--output names one stem; with several inputs use --out-dir or --name")
    plan = OutputPlan(name_template=name_template, out_dir=out_dir, output=output, residual=residual, fmt=fmt,
                      bit_depth=bit_depth, clip=clip, overwrite=overwrite)
    options = engine_settings(overlap, batch_size)
    region = Region(start or 0.0, end)
    started = time.perf_counter()
    model = load_model(model_name, device, precision, quiet=json_output)
    load_seconds = time.perf_counter() - started
    cache = EmbeddingCache(store.store_root() / "embeddings", model.installed.fingerprint)
    show = progress_mod.wanted(json_output)
    bar = progress_mod.RichProgress(len(inputs)) if show else None
    if bar:
        with bar:
            results = Extractor(model, query, options, plan, cache, region, bar).run(inputs, scanned)
    else:
        results = Extractor(model, query, options, plan, cache, region).run(inputs, scanned)
    report(results, query, model, load_seconds, time.perf_counter() - started, json_output)


def report(results: list[FileResult], query: Query, model: object, load_seconds: float, total_seconds: float,
           json_output: bool) -> None:
    failed = [r for r in results if r.status == "failed"]
    if json_output:
        emit_json({
            "query": query.describe(),
            "model": getattr(model, "installed").name,
            "device": str(getattr(model, "device")),
            "precision": getattr(model, "precision"),
            "results": [r.to_json() for r in results],
            "failed": len(failed),
            "timings": {"model_load_seconds": round(load_seconds, 3), "total_seconds": round(total_seconds, 3)},
        })
    else:
        for r in results:
            if r.status == "ok":
                outs = " + ".join(str(p) for p in (r.target, r.residual) if p)
                click.echo(f"{r.input} -> {outs}")
            elif r.status == "skipped":
                click.echo(f"skipped {r.input}: {r.error}", err=True)
        if len(results) == 1 and failed:
            click.echo(f"clapsep: error: {failed[0].error}", err=True)
        elif failed:
            click.echo(f"clapsep: {len(failed)} of {len(results)} files failed:", err=True)
            for r in failed:
                click.echo(f"  {r.error}", err=True)
    if failed:
        sys.exit(1)
