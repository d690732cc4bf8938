"""``clapsep evaluate``: SDRi / SI-SDRi on a benchmark manifest or on your own pairs."""

from __future__ import annotations

import math
from pathlib import Path

import click

from clapsep_cli.cli.common import emit_json, make_separator, model_options
from clapsep_cli.errors import ClapsepError
from clapsep_cli.training.evaluate import MODES, Evaluator, read_manifest


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--audio-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the manifest's file names are relative to.")
@click.option("--out", "out_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="Per-row results CSV (default: <manifest>.<model>.eval.csv); an existing one is resumed.")
@click.option("--restart", is_flag=True, help="Start over instead of resuming an existing results CSV.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N rows.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Benchmark rows (10 s clips) separated per network call.")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON.")
@model_options
def evaluate(manifest: Path, audio_dir: Path, out_csv: Path | None, restart: bool, limit: int | None, batch_size: int,
             json_output: bool, model_name: str, device: str, precision: str) -> None:
    """Score a model on MANIFEST: the paper's protocol (source_file, positive_caption,
    noise_file, negative_caption: 10 s clips mixed at 0 dB) or your own pairs (mixture_file,
    target_file, positive_caption[, negative_caption]).

    Prints SDRi and SI-SDRi (mean, std), with and without the negative caption. Exits 1 if no
    row could be scored; a std needs two rows (null in --json, nan in the table).
    """
    from clapsep_cli.cli import progress

    _, rows = read_manifest(manifest)
    out_csv = out_csv or manifest.with_name(f"{manifest.stem}.{model_name}.eval.csv")
    if restart:
        out_csv.unlink(missing_ok=True)

    sep = make_separator(model_name, device, precision, quiet=json_output)
    evaluator = Evaluator(sep, batch_size)
    total = min(len(rows), limit) if limit else len(rows)
    if progress.wanted(json_output):
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("evaluating", total=total)
            summary = evaluator.run(manifest, audio_dir, out_csv, limit, lambda: bar.advance(task))
    else:
        summary = evaluator.run(manifest, audio_dir, out_csv, limit)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if summary.rows == 0:
        raise ClapsepError(f"none of the {summary.failed} rows could be scored (first error: {summary.first_error}); "
                           f"see {out_csv}")
    if json_output:
        scores = {mode: {k: None if math.isnan(v) else v for k, v in s.items()} for mode, s in summary.scores.items()}
        emit_json({"manifest": str(manifest), "results_csv": str(out_csv), "model": model_name, "rows": summary.rows,
                   "failed_rows": summary.failed, "warnings": summary.warnings, "scores": scores})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("query", "SDRi mean", "SDRi std", "SI-SDRi mean", "SI-SDRi std", title=f"{summary.rows} rows")
    for mode in MODES:
        s = summary.scores[mode]
        table.add_row(mode.replace("_", " "), *(f"{s[k]:.2f}" for k in ("sdri_mean", "sdri_std", "si_sdri_mean",
                                                                          "si_sdri_std")))
    Console().print(table)
    click.echo(f"per-row results: {out_csv}")
    if summary.failed:
        click.echo(f"note: {summary.failed} rows could not be scored (see the error column)", err=True)
