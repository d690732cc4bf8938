"""``clapsep models``: install, list and locate models."""

from __future__ import annotations

from pathlib import Path

import click

from clapsep_cli.cli.common import emit_json
from clapsep_cli.models import store
from clapsep_cli.network.architecture import ARCHITECTURES


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def models() -> None:
    """Install, list and locate models (store: $CLAPSEP_HOME or your user data folder)."""


@models.command()
@click.option("--name", default=store.DEFAULT_MODEL, show_default=True, help="Name to install the model under.")
@click.option("--overwrite", is_flag=True, help="Replace an installed model of that name.")
@click.option("--keep-downloads", is_flag=True, help="Keep the original checkpoints after converting them.")
@click.option("--architecture", type=click.Choice(sorted(ARCHITECTURES)), default="clapsep-base", show_default=True,
              help="Network size the downloaded checkpoints hold (clapsep-base is the released model).")
def download(name: str, overwrite: bool, keep_downloads: bool, architecture: str) -> None:
    """Download the released CLAP + CLAPSep weights and the tokenizer, then install them.

    Each file is checked against the checksum the Hub gives for it (sha256 for the checkpoints)
    and refused if it differs; an interrupted download resumes on the next run. The files'
    sha256 sums are recorded in the manifest. HF_ENDPOINT and HTTPS_PROXY are honoured.
    """
    from clapsep_cli.models import download as hub

    model = hub.download(name, ARCHITECTURES[architecture], overwrite=overwrite, keep_downloads=keep_downloads,
                         log=_log)
    click.echo(str(model.path))


@models.command(name="import")
@click.option("--clap", "clap_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CLAP checkpoint (music_audioset_epoch_15_esc_90.14.pt).")
@click.option("--clapsep", "clapsep_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CLAPSep checkpoint (best_model.ckpt), any of the released layouts.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with roberta-base's vocab.json and merges.txt (needed for text queries).")
@click.option("--name", default=store.DEFAULT_MODEL, show_default=True, help="Name to install the model under.")
@click.option("--overwrite", is_flag=True, help="Replace an installed model of that name.")
@click.option("--trust-pickle", is_flag=True, help="Allow checkpoints that contain pickled Python objects.")
@click.option("--architecture", type=click.Choice(sorted(ARCHITECTURES)), default="clapsep-base", show_default=True,
              help="Network size the checkpoints hold (clapsep-base is the released model).")
def import_(clap_file: Path, clapsep_file: Path, tokenizer_dir: Path | None, name: str, overwrite: bool,
            trust_pickle: bool, architecture: str) -> None:
    """Install a model from checkpoint files you copied here (works offline)."""
    from clapsep_cli.models.install import install

    model = install(name, clap_file, clapsep_file, tokenizer_dir, config=ARCHITECTURES[architecture],
                    overwrite=overwrite, trust_pickle=trust_pickle, log=_log)
    if model.manifest.get("tokenizer") is None:
        _log("note: no tokenizer installed; text queries need one (--tokenizer DIR), audio queries work")
    click.echo(str(model.path))


@models.command(name="list")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
def list_(json_output: bool) -> None:
    """Show installed models."""
    installed = store.installed_models()
    rows = [{"name": m.name, "path": str(m.path), "created": m.manifest.get("created"),
             "origin": m.manifest.get("origin"), "size_mb": round(m.size_bytes() / 2**20, 1),
             "tokenizer": m.manifest.get("tokenizer") is not None, "fingerprint": m.fingerprint[:16]}
            for m in installed]
    if json_output:
        emit_json({"store": str(store.store_root()), "models": rows})
        return
    if not rows:
        click.echo(f"no models installed in {store.store_root()}; run `clapsep models download`", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "origin", "created", "size", "text queries", "fingerprint")
    for r in rows:
        table.add_row(r["name"], str(r["origin"]), str(r["created"]), f"{r['size_mb']} MB",
                      "yes" if r["tokenizer"] else "no (no tokenizer)", r["fingerprint"])
    Console().print(table)


@models.command()
@click.argument("name", required=False)
def path(name: str | None) -> None:
    """Print the store folder, or an installed model's folder."""
    click.echo(str(store.get_model(name).path if name else store.store_root()))


@models.command()
@click.argument("name")
def rm(name: str) -> None:
    """Remove an installed model."""
    click.echo(f"removed {store.remove(name)}")
