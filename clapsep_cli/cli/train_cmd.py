"""``clapsep train``: fine-tune on your own sounds (or train a small model from scratch)."""

from __future__ import annotations

from pathlib import Path

import click

from clapsep_cli.cli.common import emit_json
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import store
from clapsep_cli.network.architecture import ARCHITECTURES


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--captions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with file_name (or file) and caption columns; files relative to DATA_DIR.")
@click.option("--name", "out_name", required=True, help="Store name of the trained model.")
@click.option("--from", "base", default=None, metavar="MODEL",
              help=f"Installed model to fine-tune (default: {store.DEFAULT_MODEL}, unless --architecture).")
@click.option("--architecture", type=click.Choice(sorted(ARCHITECTURES)),
              help="Train this architecture from scratch (random CLAP) instead of fine-tuning.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="vocab.json + merges.txt folder (from scratch only; fine-tuning reuses the model's).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Passes over the training clips.")
@click.option("--time-limit", type=click.FloatRange(min=0), metavar="MINUTES",
              help="Stop after the epoch that ends past this many minutes.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), help="Cap the batches per epoch.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Mixtures per training step (per GPU).")
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="AdamW learning rate (lowered on a validation plateau).")
@click.option("--val-fraction", type=click.FloatRange(0.0, 0.5), default=0.1, show_default=True,
              help="Share of the clips held out to validate each epoch (at least 2).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where last.pt/best.pt go (default: <store>/training/<name>).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint directory's last.pt.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data loading processes.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed (validation split, mixing, data order, weights of a new model).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where training runs.")
@click.option("--overwrite", is_flag=True, help="Replace an installed model named --name.")
@click.option("--json", "json_output", is_flag=True, help="Print the training history as JSON.")
def train(data_dir: Path, captions: Path, out_name: str, base: str | None, architecture: str | None,
          tokenizer_dir: Path | None, epochs: int, time_limit: float | None, steps_per_epoch: int | None,
          batch_size: int, lr: float,
          val_fraction: float, checkpoint_dir: Path | None, resume: bool, workers: int, seed: int, device: str,
          overwrite: bool, json_output: bool) -> None:
    """Fine-tune on the captioned clips in DATA_DIR; the result is an installed model.

    \b
    Fine-tuning follows the paper: frozen CLAP, LoRA on the encoder copy, trainable decoder,
    text/audio query mixing. From scratch (--architecture), CLAP is random, so queries are text
    only and the whole encoder copy trains (there is nothing pretrained for LoRA to adapt).
    Several GPUs: torchrun --nproc_per_node N -m clapsep_cli train ...
    """
    from clapsep_cli.models.loaded import resolve_device
    from clapsep_cli.training import distributed, trainer

    if store.is_installed(out_name) and not overwrite:
        raise ClapsepError(f"model {out_name!r} is already installed; pass --overwrite or choose another --name")
    if architecture and base:
        raise ClapsepError("give either --from MODEL (fine-tune) or --architecture (from scratch), not both")
    if architecture:
        if tokenizer_dir is None:
            raise ClapsepError("training from scratch needs --tokenizer DIR (vocab.json + merges.txt)")
        cfg = ARCHITECTURES[architecture]
        parts = trainer.from_scratch(cfg, seed)
        origin = {"architecture": architecture, "from": "scratch"}
    else:
        cfg, *parts, tokenizer_dir = trainer.from_model(base or store.DEFAULT_MODEL)
        origin = {"from": base or store.DEFAULT_MODEL}
    dev = distributed.init_distributed(resolve_device(device))
    settings = trainer.TrainSettings(
        data_dir=data_dir, captions=captions, out_name=out_name,
        checkpoint_dir=checkpoint_dir or store.training_dir(out_name), epochs=epochs,
        steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
        workers=workers, audio_queries=not architecture, full_encoder=bool(architecture))
    log = (lambda _m: None) if json_output else (lambda m: click.echo(m, err=True))
    trainer = trainer.Trainer(settings, cfg, *parts, tokenizer_dir, dev, origin, log)
    if resume:
        trainer.resume()
    result = trainer.fit(None if time_limit is None else time_limit * 60)
    if trainer.rank == 0:
        model = trainer.export(overwrite)
        result["model"] = model.name
        if json_output:
            emit_json(result)
        else:
            click.echo(f"installed {model.name!r} (best validation SI-SDRi {trainer.best:.2f} dB) at {model.path}")
    distributed.finish_distributed()
