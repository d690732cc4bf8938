"""Options and helpers shared by the commands that separate audio."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from clapsep_cli import store
from clapsep_cli.engine import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, EngineOptions
from clapsep_cli.queries import parse_time

F = Callable[..., Any]


def model_options(f: F) -> F:
    """--model, --device and --precision."""
    f = click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                     help="Arithmetic of the network (bf16/fp16 trade a little accuracy for speed).")(f)
    f = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|mps",
                     help="Where the network runs.")(f)
    f = click.option("--model", "model_name", default=store.DEFAULT_MODEL, show_default=True, metavar="NAME",
                     help="Installed model to use (see `clapsep models list`).")(f)
    return f


def engine_options(f: F) -> F:
    """--overlap and --batch-size."""
    f = click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="10 s segments per network call.")(f)
    f = click.option("--overlap", type=click.FloatRange(0.0, 0.5), default=DEFAULT_OVERLAP, show_default=True,
                     help="Fraction of each 10 s segment shared with the next, crossfaded (0 = hard cuts).")(f)
    return f


def engine_settings(overlap: float, batch_size: int) -> EngineOptions:
    return EngineOptions(overlap=overlap, batch_size=batch_size)


class TimeType(click.ParamType):
    """Seconds or hh:mm:ss.fff."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_time(str(value))
        except Exception as err:  # noqa: BLE001 - reported through click
            self.fail(str(err), param, ctx)


def load_model(model_name: str, device: str, precision: str, quiet: bool) -> Any:
    """Resolve the device, make sure the model is installed (downloading the default on first
    use when online) and load it."""
    from clapsep_cli.download import ensure_model
    from clapsep_cli.model import ClapSep, check_precision, resolve_device

    dev = resolve_device(device)
    check_precision(precision, dev)
    log = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    installed = ensure_model(model_name, log=log)
    return ClapSep(installed, dev, precision)


def emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
