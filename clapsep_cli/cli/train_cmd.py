"""``clapsep train``: fine-tune on your own sounds (or train a small model from scratch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from clapsep_cli.cli.common import emit_json
from clapsep_cli.cli.options import collect
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import store
from clapsep_cli.network.architecture import ARCHITECTURES


@dataclass(frozen=True)
class Start:
    """What training starts from: the installed model ``base`` (fine-tuning), or the
    ``architecture`` from scratch with the ``tokenizer`` folder."""

    base: str | None
    architecture: str | None
    tokenizer: Path | None

    def check(self) -> None:
        if self.architecture and self.base:
            raise ClapsepError("give either --from MODEL (fine-tune) or --architecture (from scratch), not both")
        if self.architecture and self.tokenizer is None:
            raise ClapsepError("training from scratch needs --tokenizer DIR (vocab.json + merges.txt)")


def start_options(f: Any) -> Any:
    """--from, --architecture and --tokenizer: the command gets ``start`` (:class:`Start`)."""
    def build(base: str | None, architecture: str | None, tokenizer_dir: Path | None) -> Start:
        return Start(base=base, architecture=architecture, tokenizer=tokenizer_dir)

    return collect("start", [
        click.option("--from", "base", default=None, metavar="MODEL",
                     help=f"Installed model to fine-tune (default: {store.DEFAULT_MODEL}, unless --architecture)."),
        click.option("--architecture", type=click.Choice(sorted(ARCHITECTURES)),
                     help="Train this architecture from scratch (random CLAP) instead of fine-tuning."),
        click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="vocab.json + merges.txt folder (from scratch only; fine-tuning reuses the model's)."),
    ], build)(f)


@dataclass(frozen=True)
class Schedule:
    """How training goes: passes and limits, batches, learning rate, the validation share,
    where checkpoints go and whether to resume from them, data loaders and the seed."""

    epochs: int
    time_limit: float | None  # minutes
    steps_per_epoch: int | None
    batch_size: int
    lr: float
    val_fraction: float
    checkpoint_dir: Path | None
    resume: bool
    workers: int
    seed: int


def schedule_options(f: Any) -> Any:
    """--epochs to --seed: the command gets ``schedule`` (:class:`Schedule`)."""
    return collect("schedule", [
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Passes over the training clips."),
        click.option("--time-limit", type=click.FloatRange(min=0), metavar="MINUTES",
                     help="Stop after the epoch that ends past this many minutes."),
        click.option("--steps-per-epoch", type=click.IntRange(min=1), help="Cap the batches per epoch."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Mixtures per training step (per GPU)."),
        click.option("--lr", type=float, default=1e-4, show_default=True,
                     help="AdamW learning rate (lowered on a validation plateau)."),
        click.option("--val-fraction", type=click.FloatRange(0.0, 0.5), default=0.1, show_default=True,
                     help="Share of the clips held out to validate each epoch (at least 2)."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where last.pt/best.pt go (default: <store>/training/<name>)."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint directory's last.pt."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Data loading processes."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Random seed (validation split, mixing, data order, weights of a new model)."),
    ], Schedule)(f)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--captions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with file_name (or file) and caption columns; files relative to DATA_DIR.")
@click.option("--name", "out_name", required=True, help="Store name of the trained model.")
@start_options
@schedule_options
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where training runs.")
@click.option("--overwrite", is_flag=True, help="Replace an installed model named --name.")
@click.option("--json", "json_output", is_flag=True, help="Print the training history as JSON.")
def train(data_dir: Path, captions: Path, out_name: str, start: Start, schedule: Schedule, device: str,
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
    start.check()
    architecture, tokenizer_dir = start.architecture, start.tokenizer
    if architecture:
        cfg = ARCHITECTURES[architecture]
        parts = trainer.from_scratch(cfg, schedule.seed)
        origin = {"architecture": architecture, "from": "scratch"}
    else:
        cfg, *parts, tokenizer_dir = trainer.from_model(start.base or store.DEFAULT_MODEL)
        origin = {"from": start.base or store.DEFAULT_MODEL}
    dev = distributed.init_distributed(resolve_device(device))
    settings = trainer.TrainSettings(
        data_dir=data_dir, captions=captions, out_name=out_name,
        checkpoint_dir=schedule.checkpoint_dir or store.training_dir(out_name), epochs=schedule.epochs,
        steps_per_epoch=schedule.steps_per_epoch, batch_size=schedule.batch_size, lr=schedule.lr,
        val_fraction=schedule.val_fraction, seed=schedule.seed, workers=schedule.workers,
        audio_queries=not architecture, full_encoder=bool(architecture))
    log = (lambda _m: None) if json_output else (lambda m: click.echo(m, err=True))
    trainer = trainer.Trainer(settings, cfg, *parts, tokenizer_dir, dev, origin, log)
    if schedule.resume:
        trainer.resume()
    result = trainer.fit(None if schedule.time_limit is None else schedule.time_limit * 60)
    if trainer.rank == 0:
        model = trainer.export(overwrite)
        result["model"] = model.name
        if json_output:
            emit_json(result)
        else:
            click.echo(f"installed {model.name!r} (best validation SI-SDRi {trainer.best:.2f} dB) at {model.path}")
    distributed.finish_distributed()
