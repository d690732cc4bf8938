"""Options and helpers shared by the commands that separate audio."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from clapsep_cli.queries.spec import parse_time

F = Callable[..., Any]


def model_options(f: F) -> F:
    """--model, --device and --precision."""
    from clapsep_cli.models import store
    from clapsep_cli.models.precision import DEFAULT_PRECISION, PRECISION_NAMES

    f = click.option("--precision", type=click.Choice(["auto", *PRECISION_NAMES]), default=DEFAULT_PRECISION,
                     show_default=True,
                     help="Arithmetic of the network: auto is bf16 where the hardware computes it natively (CPUs "
                          "with AMX or AVX512_BF16, CUDA GPUs from compute 8.0), else fp32; fp32 reproduces the "
                          "published model exactly. --json reports the one used.")(f)
    f = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|mps",
                     help="Where the network runs.")(f)
    f = click.option("--model", "model_name", default=store.DEFAULT_MODEL, show_default=True, metavar="NAME",
                     help="Installed model to use (see `clapsep models list`).")(f)
    return f


def engine_options(f: F) -> F:
    """--overlap and --batch-size."""
    from clapsep_cli.engine.options import CUDA_BATCH_SIZE, DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, MAX_OVERLAP

    f = click.option("--batch-size", type=click.IntRange(min=1),
                     help=f"10 s segments per network call (default: {CUDA_BATCH_SIZE} on a CUDA GPU, "
                          f"{DEFAULT_BATCH_SIZE} elsewhere).")(f)
    f = click.option("--overlap", type=click.FloatRange(0.0, MAX_OVERLAP), default=DEFAULT_OVERLAP, show_default=True,
                     help="Fraction of each 10 s segment shared with the next, crossfaded (0 = hard cuts).")(f)
    return f


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


# Settings whose command-line option is not simply --<setting with dashes>.
_FLAGS = {"name_template": "--name", "fmt": "--format", "pattern": "--glob", "model": "--model",
          "address": "--ray", "worker_cpus": "--ray-cpus", "max_workers": "--ray-workers"}


def flag(setting: str) -> str:
    """The command-line spelling of a library setting (``bit_depth`` -> ``--bit-depth``), used to
    render library errors (:meth:`clapsep_cli.errors.ClapsepError.render`)."""
    return _FLAGS.get(setting, "--" + setting.replace("_", "-"))


def make_separator(model_name: str, device: str, precision: str, quiet: bool, **engine: Any) -> Any:
    """The library's :class:`~clapsep_cli.api.Separator` for these options; it loads the model
    on first use (downloading the default model when missing and online), saying so on stderr
    unless ``quiet``. ``engine``: ``overlap`` and ``batch_size``, where the command has them."""
    from clapsep_cli.api import Separator

    return Separator(model_name, device=device, precision=precision, **engine,
                     log=None if quiet else lambda msg: click.echo(msg, err=True))


def server_option(f: F) -> F:
    """--server: whether the job goes to the warm service (`clapsep serve`)."""
    from clapsep_cli.service.client import SERVER_MODES

    return click.option("--server", type=click.Choice(SERVER_MODES), default="auto", show_default=True,
                        envvar="CLAPSEP_SERVER",
                        help="auto: hand the job to a running `clapsep serve` of this clapsep and model store "
                             "(it answers without loading anything), else run here; require: always hand it "
                             "over, starting the service if none runs; never: run here. Default from "
                             "$CLAPSEP_SERVER.")(f)


def make_executor(server: str, model_name: str, device: str, precision: str, quiet: bool, **settings: Any) -> Any:
    """Where a job runs, as :func:`clapsep_cli.service.choose.choose_executor` chooses it for
    ``server`` (``auto``, ``never``, ``require``) and ``settings`` (``ray``, ``ray_cpus``,
    ``ray_workers``, ``overlap``, ``batch_size``); what loading says goes to stderr unless ``quiet``."""
    from clapsep_cli.service.choose import choose_executor

    return choose_executor(server, model_name, device=device, precision=precision, **settings,
                           log=None if quiet else lambda msg: click.echo(msg, err=True))


def emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
