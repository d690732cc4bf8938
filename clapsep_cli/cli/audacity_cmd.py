"""``clapsep audacity``: extract from, and find in, Audacity's selection through mod-script-pipe (3.x); set up
Audacity 4's extension."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clapsep_cli.cli.common import F, engine_options, make_executor, model_options, server_option
from clapsep_cli.cli.options import apply_options, detect_flags, detect_settings
from clapsep_cli.errors import ClapsepError


@click.group()
def audacity() -> None:
    """Work inside a running Audacity (mod-script-pipe).

    \b
    Once:  clapsep audacity setup      (enable mod-script-pipe; Audacity closed)
           clapsep audacity install    (two macros per preset)
    Then, with Audacity running and some audio selected:
           clapsep audacity extract "dog barking"
           clapsep audacity find "dog barking"
    or keep `clapsep audacity watch` running and use Tools > Apply Macro > clapsep-<preset>
    (extract) or clapsep-find-<preset> (find).

    \b
    Audacity 4 (no mod-script-pipe): `clapsep audacity setup` installs clapsep's extension;
    then Effect > Extension > clapsep (extract, remove) and Analyze > Extension > clapsep (find).
    """


def request_options(f: F) -> F:
    """QUERY, -p and -n."""
    return apply_options([
        click.argument("query", required=False),
        click.option("-p", "--preset", metavar="NAME", help="A named query preset (see `clapsep presets list`)."),
        click.option("-n", "--negative", multiple=True, metavar="TEXT", help="A sound to reject (repeatable)."),
    ], f)


def _executor(server: str, model_name: str, device: str, precision: str, overlap: float, batch_size: int | None
              ) -> Any:
    """The warm service's executor (``--server``), else a separator here."""
    return make_executor(server, model_name, device, precision, quiet=False, overlap=overlap, batch_size=batch_size)


AUDACITY4_INSTEAD = ("this is Audacity 3's route (mod-script-pipe), which Audacity 4 does not have: in Audacity 4 "
                     "use Effect > Extension > clapsep (Analyze > Extension > clapsep to find), which "
                     "`clapsep audacity setup` installs")


FOR_OPTION = click.option("--for", "major", type=click.Choice(["3", "4"]), callback=lambda c, p, v: v and int(v),
                          help="The Audacity to set up (default: the one running, else the one installed).")
CC_OPTION = click.option("--cc", metavar="COMPILER",
                         help="Audacity 4: the C compiler that builds the extension's native library "
                              "(default: $CC, cc, gcc, clang).")


def _refuse_on_audacity4() -> None:
    """One line and exit 1 where this user has Audacity 4 and not 3.x (extract, find, watch)."""
    from clapsep_cli.bridges.audacity4 import setup as a4setup

    if a4setup.only_audacity4():
        raise ClapsepError(AUDACITY4_INSTEAD)


def _which(major: int | None, implied: int | None = None) -> Any:
    """The Audacity a set-up serves: ``--for``, else what the options imply, else what is found."""
    from clapsep_cli.bridges.audacity4 import setup as a4setup

    if major is not None:
        return a4setup.Which(major, "--for")
    if implied is not None:
        return a4setup.Which(implied, "the options are Audacity 3's")
    return a4setup.which_audacity() or a4setup.Which(3, "no Audacity was found; assuming 3.x")


def _install_audacity4(names: tuple[str, ...], folder: Path | None, cc: str | None, check: bool, how: str
                       ) -> None:
    """Audacity 4's set-up: clapsep's extension bundle (effects in Effect/Analyze > Extension > clapsep)."""
    from clapsep_cli.bridges.audacity4 import setup as a4setup
    from clapsep_cli.queries import presets

    chosen = [presets.load(n).name for n in names] if names else sorted(presets.available())
    target = folder or a4setup.extensions_folder()
    if check:
        problems = a4setup.bundle_problems(chosen, target)
        if problems:
            raise ClapsepError(f"{problems[0]} (run `clapsep audacity setup --for 4`)")
        click.echo(f"Audacity 4: clapsep's extension is installed in {target}")
        return
    bundle, removed = a4setup.install_bundle(chosen, target, compiler=cc)
    click.echo(f"Audacity 4 ({how}): installed clapsep's extension in {bundle}")
    for old in removed:
        click.echo(f"removed an older one: {old}")
    click.echo("Restart Audacity 4 to see its menu entries (run each on a selection):")
    for line in a4setup.menu_lines(chosen):
        click.echo(f"  {line}")


@audacity.command()
@request_options
@click.option("--residual/--no-residual", default=None,
              help="Also add the residual (selection minus stem) as a track; a preset may turn it on.")
@model_options
@engine_options
@server_option
def extract(query: str | None, preset: str | None, negative: tuple[str, ...], residual: bool | None,
            model_name: str, device: str, precision: str, overlap: float, batch_size: int | None, server: str
            ) -> None:
    """Extract QUERY (or a preset) from the audio selected in Audacity, as new tracks.

    The selection is marked with a label `clapsep:<query> #<id>` that shows the progress and
    then the result; the stems land over the marked range whatever is selected meanwhile.

    \b
      clapsep audacity extract "dog barking"
      clapsep audacity extract -p dialogue --residual
    """
    from clapsep_cli.bridges.audacity.pipe import AudacityPipe
    from clapsep_cli.bridges.audacity.requests import StemMaker, extract_selection, make_request

    _refuse_on_audacity4()
    req = make_request(query, preset, negative, residual)
    separate = StemMaker(_executor(server, model_name, device, precision, overlap, batch_size))
    with AudacityPipe() as pipe:
        added = extract_selection(pipe, req, separate)
    for track in added:
        click.echo(f"added track '{track.name}' ({track.start:.3f}-{track.end:.3f} s, "
                   f"{'stereo' if track.channels > 1 else 'mono'})")


@audacity.command()
@request_options
@detect_flags
@model_options
@engine_options
@server_option
def find(query: str | None, preset: str | None, negative: tuple[str, ...], threshold: tuple[float, ...],
         min_duration: float, merge: float, model_name: str, device: str, precision: str, overlap: float,
         batch_size: int | None, server: str) -> None:
    """Find where QUERY (or a preset) occurs in the audio selected in Audacity, as labels.

    The selection is marked with a label `clapsep-find:<query> #<id>` that shows the progress
    and then the result; a label track `find: <query>` gets one label per event over the marked
    range, whatever is selected meanwhile. Nothing found: no track, the label says so.

    \b
      clapsep audacity find "dog barking"
      clapsep audacity find -p siren --threshold 0.4
    """
    from clapsep_cli.bridges.audacity.finding import EventSearch, find_selection
    from clapsep_cli.bridges.audacity.pipe import AudacityPipe
    from clapsep_cli.bridges.audacity.requests import make_request

    _refuse_on_audacity4()
    req = make_request(query, preset, negative, None)
    search = EventSearch(_executor(server, model_name, device, precision, overlap, batch_size),
                         detect_settings(threshold, min_duration, merge))
    with AudacityPipe() as pipe:
        found = find_selection(pipe, req, search)
    if found.track is None:
        click.echo(f"no {req.tag} found")
        return
    click.echo(f"added label track '{found.track.name}':")
    for event in found.events:
        click.echo(f"  {event.start:.3f}-{event.end:.3f} s  {event.confidence:.2f}")


@audacity.command()
@click.option("--poll", type=click.FloatRange(0.05, 60.0), default=2.0, show_default=True, metavar="SECONDS",
              help="How often to look for requests.")
@click.option("--once", is_flag=True, help="Serve the requests waiting now, then exit.")
@click.option("--status", "show_status", is_flag=True,
              help="Only say whether a watcher is running and what it does (exit 1 if none).")
@click.option("--residual/--no-residual", default=None,
              help="Extraction requests add the residual too (default: as each preset says).")
@detect_flags
@model_options
@engine_options
@server_option
def watch(poll: float, once: bool, show_status: bool, residual: bool | None, threshold: tuple[float, ...],
          min_duration: float, merge: float, model_name: str, device: str, precision: str, overlap: float,
          batch_size: int | None, server: str) -> None:
    """Serve the requests Audacity's clapsep macros make (Ctrl-C stops).

    Select audio in Audacity, then Tools > Apply Macro > clapsep-<preset>: the macro marks the
    selection with a label `clapsep:<preset>`; this command takes it (`clapsep:<preset> #<id>`,
    with the progress), adds the stem over that range and marks the label done. The macro
    clapsep-find-<preset> marks it `clapsep-find:<preset>`: this command adds the events found
    there as a label track `find: <preset>` (--threshold, --min-duration, --merge apply).
    """
    from clapsep_cli.bridges.audacity.finding import EventSearch
    from clapsep_cli.bridges.audacity.pipe import AudacityPipe
    from clapsep_cli.bridges.audacity.requests import StemMaker
    from clapsep_cli.bridges.audacity.watcher import Extracting, Finding, WatcherStatus
    from clapsep_cli.bridges.audacity.watcher import watch as serve_requests

    status = WatcherStatus()
    if show_status:
        line = status.read()
        if line is None:
            raise ClapsepError("no `clapsep audacity watch` is running")
        click.echo(line)
        return
    _refuse_on_audacity4()
    status.claim()
    try:
        status.write("loading the model")
        separator = _executor(server, model_name, device, precision, overlap, batch_size)
        detect = detect_settings(threshold, min_duration, merge)
        if separator.holds_model:  # here, not in the service: load now, so the first request is quick
            separator.model  # noqa: B018
        kinds = [Extracting(StemMaker(separator), residual), Finding(EventSearch(separator, detect))]
        if not once:
            click.echo("watching Audacity for clapsep requests (Tools > Apply Macro > clapsep-...); Ctrl-C stops")
        for line in serve_requests(lambda: AudacityPipe(greet=False), kinds, poll, once, status):
            click.echo(line)
    finally:
        status.release()


@audacity.command()
@click.option("--module", "module_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path of mod-script-pipe.so (default: found in the usual places).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Audacity's audacity.cfg (default: the one Audacity uses for you).")
@click.option("--check", is_flag=True, help="Only report; exit 1 if mod-script-pipe is not enabled "
              "(Audacity 4: if clapsep's extension is not installed).")
@FOR_OPTION
@CC_OPTION
def setup(module_path: Path | None, config_path: Path | None, check: bool, major: int | None, cc: str | None) -> None:
    """Set up the Audacity you have: 3.x, enable mod-script-pipe in its settings (run it while
    Audacity is closed); 4.x, install clapsep's extension (Effect > Extension > clapsep)."""
    from clapsep_cli.bridges.audacity import setup as aset

    which = _which(major, 3 if module_path or config_path else None)
    if which.major == 4:
        _install_audacity4((), None, cc, check, which.how)
        return
    module = aset.find_module(module_path)
    config = config_path or aset.config_file()
    if check:
        problems = aset.pipe_problems(config, module)
        for line in problems:
            click.echo(f"{config}: {line}")
        if problems:
            raise ClapsepError("mod-script-pipe is not enabled (run `clapsep audacity setup` with Audacity closed)")
        click.echo(f"{config}: mod-script-pipe is enabled ({module})")
        return
    fixed = aset.enable_pipe(config, module)
    click.echo(f"{config}: {'enabled' if fixed else 'already enabled'} {aset.MODULE} ({module})")
    if fixed:
        click.echo("Start Audacity; if `clapsep audacity extract` then says nothing answers, restart Audacity "
                   "once (its plug-in scan at the first start can break the pipe).")


@audacity.command()
@click.option("-p", "--preset", "names", multiple=True, metavar="NAME",
              help="Install the macro of this preset only (repeatable; default: every preset).")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path),
              help="Audacity's Macros folder (Audacity 4: its extensions folder; default: the one Audacity "
              "uses for you).")
@FOR_OPTION
@CC_OPTION
def install(names: tuple[str, ...], folder: Path | None, major: int | None, cc: str | None) -> None:
    """Audacity 3.x: write two Audacity macros per preset: Tools > Apply Macro > clapsep-<preset>
    (extract) and clapsep-find-<preset> (find). Audacity 4: install clapsep's extension, with a
    menu entry per preset in Effect > Extension > clapsep (extract, remove) and Analyze >
    Extension > clapsep (find)."""
    from clapsep_cli.bridges.audacity import setup as aset
    from clapsep_cli.queries import presets

    which = _which(major)
    if which.major == 4:
        _install_audacity4(names, folder, cc, False, which.how)
        return
    chosen = [presets.load(n).name for n in names] if names else sorted(presets.available())
    written, removed = aset.install_macros(chosen, folder or aset.macros_folder())
    for path in written:
        click.echo(f"wrote {path}")
    for path in removed:
        click.echo(f"removed {path}")
    click.echo("Restart Audacity to see them under Tools > Apply Macro, and keep `clapsep audacity watch` "
               "running to serve them.")
