"""Audacity's side of the set-up: enabling mod-script-pipe in audacity.cfg, and the request macros.

Audacity loads a module only when ``[Module] mod-script-pipe=1`` comes with ``[ModulePath]``
naming the very file it found and ``[ModuleDateTime]`` holding that file's modification time
(local time, ``YYYY-MM-DDTHH:MM:SS``); otherwise it resets the module to "new" and skips it.

Audacity 3.2 macros cannot start a program, so each preset gets two macros that only mark the
selection: a Nyquist Prompt step returning one label over the selection (in the selected label
track, else a new one; Nyquist gets the selection's length with six decimals, so the label's end
can differ from the selection's by a microsecond): ``clapsep:<preset>`` (macro ``clapsep-<preset>``)
asks for an extraction, ``clapsep-find:<preset>`` (macro ``clapsep-find-<preset>``) for a search.
``clapsep audacity watch`` finds and serves these labels; ``clapsep audacity extract`` and
``clapsep audacity find`` add one the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli import resources
from clapsep_cli.audio import atomic
from clapsep_cli.errors import ClapsepError

MODULE = "mod-script-pipe"
MODULE_FOLDERS = ("/usr/lib/audacity/modules", "/usr/lib/x86_64-linux-gnu/audacity/modules",
                  "/usr/lib/aarch64-linux-gnu/audacity/modules", "/usr/lib64/audacity/modules",
                  "/usr/local/lib/audacity/modules", "/opt/audacity/lib/audacity/modules",
                  "/Applications/Audacity.app/Contents/modules")
MACRO_PREFIX = "clapsep-"
REQUEST_PREFIX = "clapsep:"
FIND_MACRO_PREFIX = "clapsep-find-"
FIND_PREFIX = "clapsep-find:"


def _home_base(xdg_variable: str, default: str) -> Path:
    """Audacity's folder for settings or data: ~/.audacity-data when it exists (older
    installs), else the XDG folder; on macOS ~/Library/Application Support/audacity."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "audacity"
    if (home / ".audacity-data").is_dir():
        return home / ".audacity-data"
    return Path(os.environ.get(xdg_variable) or home / default) / "audacity"


def config_file() -> Path:
    """Where Audacity keeps its settings (audacity.cfg)."""
    return _home_base("XDG_CONFIG_HOME", ".config") / "audacity.cfg"


def macros_folder() -> Path:
    """Where Audacity looks for user macros."""
    return _home_base("XDG_DATA_HOME", ".local/share") / "Macros"


def find_module(given: Path | None = None) -> Path:
    """The mod-script-pipe library: ``given``, else the one of an installed Audacity."""
    if given is not None:
        if not given.is_file():
            raise ClapsepError(f"{given}: no such file (pass the path of {MODULE}.so)")
        return given
    for folder in MODULE_FOLDERS:
        candidate = Path(folder) / f"{MODULE}.so"
        if candidate.is_file():
            return candidate
    raise ClapsepError(f"cannot find {MODULE}.so (is Audacity installed? pass --module PATH)")


def module_time(module: Path) -> str:
    """The module's modification time as Audacity records it (local time, whole seconds)."""
    return dt.datetime.fromtimestamp(module.stat().st_mtime).strftime("%Y-%m-%dT%H:%M:%S")


def audacity_running() -> bool:
    """Whether an Audacity of this user runs now (it rewrites audacity.cfg when it quits)."""
    proc = Path("/proc")
    if proc.is_dir():
        for stat_file in proc.glob("[0-9]*/stat"):
            try:
                text, owner = stat_file.read_text(), stat_file.stat().st_uid
            except OSError:
                continue
            name, _, rest = text.partition("(")[2].rpartition(")")
            if name.lower() == "audacity" and owner == os.getuid() and rest.split()[:1] != ["Z"]:
                return True
        return False
    pgrep = shutil.which("pgrep")
    return pgrep is not None and subprocess.run([pgrep, "-i", "-x", "-u", str(os.getuid()), "audacity"],
                                                capture_output=True).returncode == 0


@dataclass
class ConfigText:
    """audacity.cfg as lines (wxFileConfig: top-level keys, then ``[Section]`` groups of
    ``key=value``), edited in place so that everything else stays as Audacity wrote it."""

    lines: list[str]

    @classmethod
    def read(cls, path: Path) -> ConfigText:
        try:
            return cls(path.read_text(encoding="utf-8").splitlines() if path.exists() else [])
        except (OSError, UnicodeDecodeError) as err:
            raise ClapsepError(f"{path}: cannot read Audacity's settings ({err})") from None

    def get(self, section: str, key: str) -> str | None:
        start, end = self._section(section)
        for line in self.lines[start:end]:
            name, sep, value = line.partition("=")
            if sep and name.strip() == key:
                return value.strip()
        return None

    def set(self, section: str, key: str, value: str) -> None:
        start, end = self._section(section)
        if start < 0:
            self.lines += [f"[{section}]", f"{key}={value}"]
            return
        for i in range(start, end):
            name, sep, _ = self.lines[i].partition("=")
            if sep and name.strip() == key:
                self.lines[i] = f"{key}={value}"
                return
        self.lines.insert(end, f"{key}={value}")

    def write(self, path: Path) -> None:
        """Replace the file atomically."""
        atomic.write_text(path, "\n".join(self.lines) + "\n")

    def _section(self, section: str) -> tuple[int, int]:
        """(first line after the header, end of the section), or (-1, -1) when absent."""
        header = f"[{section}]"
        for i, line in enumerate(self.lines):
            if line.strip() == header:
                end = next((j for j in range(i + 1, len(self.lines)) if self.lines[j].startswith("[")),
                           len(self.lines))
                return i + 1, end
        return -1, -1


def pipe_problems(path: Path, module: Path) -> list[str]:
    """Why Audacity, with the settings in ``path``, would not load ``module`` (empty: it will)."""
    config = ConfigText.read(path)
    wanted = {("Module", MODULE): "1", ("ModulePath", MODULE): str(module),
              ("ModuleDateTime", MODULE): module_time(module)}
    problems = []
    for (section, key), value in wanted.items():
        found = config.get(section, key)
        if found != value:
            problems.append(f"[{section}] {key} is {found if found is not None else 'missing'}, needs {value}")
    return problems


def write_pipe_settings(path: Path, module: Path) -> list[str]:
    """Write the three settings that make Audacity load ``module``; the problems fixed."""
    problems = pipe_problems(path, module)
    if problems:
        config = ConfigText.read(path)
        config.set("Module", MODULE, "1")
        config.set("ModulePath", MODULE, str(module))
        config.set("ModuleDateTime", MODULE, module_time(module))
        config.write(path)
    return problems


def enable_pipe(path: Path, module: Path) -> list[str]:
    """:func:`write_pipe_settings`, refused while Audacity runs (it would write its own
    settings back when it quits)."""
    if audacity_running():
        raise ClapsepError("Audacity is running: quit it first (it rewrites its settings when it quits)")
    return write_pipe_settings(path, module)


def request_command(text: str) -> str:
    """The macro step that adds a label ``text`` over the selection (from the shipped template)."""
    template = resources.shipped("plugins") / "audacity" / "request-macro.txt"
    return template.read_text(encoding="utf-8").strip().replace("{request}", text)


def macro_text(request: str) -> str:
    """The macro that marks the selection with the request label ``request``."""
    return request_command(request) + "\n"


def install_macros(names: list[str], folder: Path) -> tuple[list[Path], list[Path]]:
    """Write the two request macros of each preset into ``folder`` (``clapsep-<preset>``
    extracts, ``clapsep-find-<preset>`` finds) and delete clapsep macros of presets not named;
    (written, removed)."""
    macros: dict[Path, tuple[str, str]] = {}  # path: (preset, text)
    for name in names:
        for macro, request in ((MACRO_PREFIX + name, REQUEST_PREFIX + name),
                               (FIND_MACRO_PREFIX + name, FIND_PREFIX + name)):
            path = folder / f"{macro}.txt"
            if path in macros:
                raise ClapsepError(f"the presets '{macros[path][0]}' and '{name}' would both have the macro "
                                   f"{macro}: rename one of them")
            macros[path] = name, macro_text(request)
    folder.mkdir(parents=True, exist_ok=True)
    for path, (_, text) in macros.items():
        path.write_text(text, encoding="utf-8")
    written = list(macros)
    removed = [path for path in sorted(folder.glob(f"{MACRO_PREFIX}*.txt"))
               if path not in macros and _is_request_macro(path)]
    for path in removed:
        path.unlink()
    return written, removed


def _is_request_macro(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(rf'\\"({REQUEST_PREFIX}|{FIND_PREFIX})[a-z0-9_-]+\\"', text) is not None
