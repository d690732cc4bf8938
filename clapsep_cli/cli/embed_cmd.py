"""``clapsep embed``: compute query embeddings ahead of time (and export them)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from clapsep_cli import api
from clapsep_cli.cli.common import emit_json, make_separator, model_options
from clapsep_cli.errors import ClapsepError
from clapsep_cli.queries import presets


@click.command()
@click.argument("texts", nargs=-1)
@click.option("-p", "--preset", "names", multiple=True, metavar="NAME", help="A preset to embed (repeatable).")
@click.option("--all-presets", is_flag=True, help="Embed every preset.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also save each conditioning vector as DIR/<name>.npy (float32: 512 positive, 512 negative).")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@model_options
def embed(texts: tuple[str, ...], names: tuple[str, ...], all_presets: bool, export_dir: Path | None,
          json_output: bool, model_name: str, device: str, precision: str) -> None:
    """Cache the CLAP embeddings of TEXTS and presets, so later runs start without the text encoder.

    The cache is per model; `clapsep extract` fills it too, on first use of a query.
    """
    jobs: list[tuple[str, api.Query]] = []
    if all_presets:
        good, bad = presets.load_all()
        if bad:
            raise ClapsepError(f"invalid preset: {bad[0]}")
        jobs += [(p.name, api.request(preset=p).query) for p in good]
    jobs += [(n, api.request(preset=n).query) for n in names]
    jobs += [(q.tag, q) for q in (api.request(t).query for t in texts)]
    if not jobs:
        raise ClapsepError("nothing to embed: give TEXTS, -p PRESET or --all-presets")
    for _, query in jobs:
        api.check_references(query)  # a missing reference clip is reported before anything about models
    sep = make_separator(model_name, device, precision, quiet=json_output)
    rows = []
    for name, query in jobs:
        vector = sep.session.conditioning(query)[0]
        row = {"name": name, "query": query.describe()}
        if export_dir is not None:
            export_dir.mkdir(parents=True, exist_ok=True)
            np.save(export_dir / f"{name}.npy", vector.numpy().astype(np.float32))
            row["file"] = str(export_dir / f"{name}.npy")
        rows.append(row)
        if not json_output:
            click.echo(f"{name}: cached" + (f" -> {row['file']}" if "file" in row else ""))
    if json_output:
        emit_json({"model": sep.model.installed.name, "embedded": rows,
                   "from_cache": sep.session.cache.hits, "computed": sep.session.cache.misses})
