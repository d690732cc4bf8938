"""Audacity 4's side of the set-up: which Audacity a user has, and clapsep's extension bundle.

Audacity 4 (a Qt rewrite) has no mod-script-pipe and no macros that run, so the 3.x route
(``bridges/audacity``) does not work there. It runs JavaScript extension effects instead, from a
bundle folder under ``~/.local/share/Audacity/Audacity4/extensions/``: ``manifest.json`` lists the
effects (``contributes."audacity.effects"``), a script makes them (``plugins/audacity4/clapsep.js``),
and a native library of clapsep's (``platform/linux/x86_64/clapsep.so``, built here from
``plugins/audacity4/native/clapsep_audacity4.c`` with the system's C compiler) starts
``clapsep audacity job`` off Audacity's UI thread. See docs/editors.md, "Audacity 4".

Audacity 4 registers a bundle's effects once, by the path of its manifest: effects added to a
registered manifest later are not seen. So the bundle's folder is named after a digest of what it
holds (``clapsep-<digest>``), and an install removes the bundles of earlier installs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli import __version__, resources
from clapsep_cli.errors import ClapsepError
from clapsep_cli.events.detect import DetectOptions

BUNDLE_PREFIX = "clapsep-"
LIBRARY = "clapsep"
URI = "musescore://extensions/clapsep"
VENDOR = "clapsep"
KINDS = {"extract": ("effect", "Extract"), "remove": ("effect", "Remove"), "find": ("analyze", "Find")}


def _xdg(variable: str, default: str, home: Path | None = None) -> Path:
    home = Path.home() if home is None else home
    value = os.environ.get(variable)
    return Path(value) if value else home / default


def settings_files(home: Path | None = None) -> list[Path]:
    """Where Audacity 4 keeps its settings (present once it has run)."""
    config = _xdg("XDG_CONFIG_HOME", ".config", home)
    return [config / "Audacity" / "Audacity4.ini", config / "audacity4"]


def extensions_folder(home: Path | None = None) -> Path:
    """Where Audacity 4 looks for user extension bundles."""
    return _xdg("XDG_DATA_HOME", ".local/share", home) / "Audacity" / "Audacity4" / "extensions"


def installed_version(program: str = "audacity") -> str | None:
    """The version ``audacity --version`` prints (``4.0.1``), or None where that says nothing."""
    path = shutil.which(program)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                             env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\b(\d+)\.(\d+)\.(\d+)\b", out.stdout + out.stderr)
    return ".".join(found.groups()) if found else None


def detect_major(home: Path | None = None, version: str | None = None) -> int | None:
    """3 or 4: which Audacity this user has (``version``, else the settings each one leaves:
    Audacity 4's ``Audacity4.ini`` / ``audacity4`` folder, 3.x's ``audacity.cfg``); None when
    neither shows."""
    if version:
        return 4 if int(version.split(".")[0]) >= 4 else 3
    if any(path.exists() for path in settings_files(home)):
        return 4
    config = _xdg("XDG_CONFIG_HOME", ".config", home)
    if (config / "audacity" / "audacity.cfg").exists() or ((Path.home() if home is None else home)
                                                           / ".audacity-data").is_dir():
        return 3
    return None


@dataclass(frozen=True)
class Entry:
    """One menu item: an extension effect."""

    kind: str  # extract, remove, find
    preset: str | None  # None: it asks for a description

    @property
    def ident(self) -> str:
        return f"{self.kind}-{self.preset or 'ask'}"

    @property
    def title(self) -> str:
        verb = KINDS[self.kind][1]
        return f"{verb} a sound" if self.preset is None else f"{verb}: {self.preset}"

    def manifest(self) -> dict[str, str]:
        group = KINDS[self.kind][0]
        what = "a sound you describe" if self.preset is None else f"the preset '{self.preset}'"
        description = {"extract": f"Extract {what} from the selection into a new track (clapsep)",
                       "remove": f"Remove {what} from the selection (clapsep)",
                       "find": f"Mark where {what} occurs in the selection, as labels (clapsep)"}[self.kind]
        return {"id": self.ident, "title": self.title, "description": description, "vendor": VENDOR,
                "group": group, "script": "clapsep.js", "factory": self.ident}

    def config(self) -> dict[str, object]:
        return {"factory": self.ident, "kind": self.kind, "preset": self.preset, "ask": self.preset is None}


def entries(presets: list[str]) -> list[Entry]:
    """The menu items: per kind, one that asks for a description, then one per preset."""
    return [Entry(kind, preset) for kind in KINDS for preset in [None, *presets]]


def clapsep_command() -> list[str]:
    """The argv that starts this clapsep, whatever PATH Audacity sees."""
    return [sys.executable, "-m", "clapsep_cli.bridges.audacity4.job"]


def manifest(items: list[Entry]) -> dict[str, object]:
    return {"uri": URI, "type": "macros", "title": "clapsep",
            "description": "Describe a sound to extract, remove or find",
            "version": __version__, "apiversion": "2", "actions": [],
            "contributes": {"audacity.effects": [item.manifest() for item in items]}}


def script(items: list[Entry], command: list[str]) -> str:
    template = (resources.shipped("plugins") / "audacity4" / "clapsep.js").read_text(encoding="utf-8")
    config = json.dumps({"command": command, "threshold": DetectOptions().threshold,
                         "effects": [item.config() for item in items]}, indent=1)
    if "{/* CONFIG */}" not in template:
        raise ClapsepError("plugins/audacity4/clapsep.js has no CONFIG placeholder")
    return template.replace("{/* CONFIG */}", config)


def native_source() -> Path:
    return resources.shipped("plugins") / "audacity4" / "native" / "clapsep_audacity4.c"


def platform_folder() -> Path:
    """The bundle's folder for native libraries on this machine (Audacity 4 looks there)."""
    system = {"linux": "linux", "darwin": "macos"}.get(sys.platform)
    machines = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    machine = machines.get(platform.machine().lower())
    if system is None or machine is None:
        raise ClapsepError(f"clapsep's Audacity 4 extension is built for Linux and macOS (x86_64, arm64), "
                           f"not {sys.platform} {platform.machine()}")
    return Path("platform") / system / machine


def find_compiler(given: str | None = None) -> str:
    for name in [given] if given else [os.environ.get("CC"), "cc", "gcc", "clang"]:
        if name and (path := shutil.which(name)):
            return path
    raise ClapsepError("no C compiler found to build the extension's native library (install gcc, "
                       "e.g. `sudo apt install gcc`, or pass --cc)")


def build_library(target: Path, compiler: str) -> None:
    """Compile the native library into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = ["-dynamiclib"] if sys.platform == "darwin" else ["-shared", "-fPIC"]
    command = [compiler, *flags, "-O2", "-o", str(target), str(native_source()), "-lpthread"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClapsepError(f"building the native library failed ({' '.join(command)}):\n{done.stderr.strip()}")


def bundle_files(items: list[Entry], command: list[str]) -> dict[str, str]:
    """The bundle's text files (name: text)."""
    return {"manifest.json": json.dumps(manifest(items), indent=2) + "\n", "clapsep.js": script(items, command)}


def digest(files: dict[str, str]) -> str:
    hasher = hashlib.sha256(native_source().read_bytes())
    for name in sorted(files):
        hasher.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return hasher.hexdigest()[:10]


def install_bundle(presets: list[str], folder: Path, compiler: str | None = None,
                   command: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Write the bundle into ``folder/clapsep-<digest>`` (with its native library built) and
    remove the bundles of earlier installs; (the bundle, the removed ones)."""
    items = entries(presets)
    files = bundle_files(items, command or clapsep_command())
    bundle = folder / f"{BUNDLE_PREFIX}{digest(files)}"
    cc = find_compiler(compiler)
    library = bundle / platform_folder() / f"{LIBRARY}{'.dylib' if sys.platform == 'darwin' else '.so'}"
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{bundle.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        build_library(staging / library.relative_to(bundle), cc)
        shutil.rmtree(bundle, ignore_errors=True)
        staging.rename(bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    removed = [old for old in sorted(folder.glob(f"{BUNDLE_PREFIX}*")) if old != bundle and old.is_dir()
               and (old / "manifest.json").is_file()]
    for old in removed:
        shutil.rmtree(old)
    return bundle, removed


@dataclass(frozen=True)
class Which:
    """Which Audacity a set-up serves: its major version (3 or 4) and how that was found."""

    major: int
    how: str


def _running_majors() -> set[int]:
    """The majors of this user's Audacity processes that run in this root: a process called
    ``audacity`` is 3.x; Audacity 4's is called ``main`` (its program is still ``audacity``)."""
    found: set[int] = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        proc = stat_file.parent
        try:
            text, owner = stat_file.read_text(), stat_file.stat().st_uid
            if owner != os.getuid() or os.readlink(proc / "root") != "/":
                continue
            name, _, rest = text.partition("(")[2].rpartition(")")
            if rest.split()[:1] == ["Z"]:
                continue
            if name.lower() == "audacity":
                found.add(3)
            elif name == "main":
                argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                programs = {Path(argv0).name.lower(), Path(os.readlink(proc / "exe")).name.lower()}
                if any(p.startswith("audacity") for p in programs):
                    found.add(4)
        except (OSError, IndexError):
            continue
    return found


def _settings_majors(home: Path | None = None) -> dict[int, float]:
    """The majors whose settings this user has, with when each was last written."""
    config = _xdg("XDG_CONFIG_HOME", ".config", home)
    places = {4: settings_files(home),
              3: [config / "audacity" / "audacity.cfg", (Path.home() if home is None else home) / ".audacity-data"]}
    found: dict[int, float] = {}
    for major, paths in places.items():
        times = [path.stat().st_mtime for path in paths if path.exists()]
        if times:
            found[major] = max(times)
    return found


def which_audacity(home: Path | None = None, spawn: bool = True) -> Which | None:
    """The Audacity this user has: the one running (3.x or 4.x), else the ``audacity`` on PATH when
    ``audacity --version`` says (4.x does; 3.x needs a display for it; ``spawn``), else the one whose
    settings were written last, else a 3.x whose mod-script-pipe is installed; None when nothing shows."""
    running = _running_majors()
    if len(running) == 1:
        major = running.pop()
        return Which(major, f"Audacity {major} is running")
    version = installed_version() if spawn else None
    if version:
        return Which(4 if int(version.split(".")[0]) >= 4 else 3, f"`audacity --version` says {version}")
    settings = _settings_majors(home)
    if settings:
        major = max(settings, key=lambda m: settings[m])
        both = " (the one used last)" if len(settings) > 1 else ""
        return Which(major, f"Audacity {major}'s settings are here{both}")
    from clapsep_cli.bridges.audacity.setup import find_module

    try:
        return Which(3, f"Audacity 3's mod-script-pipe is installed ({find_module()})")
    except ClapsepError:
        return None


def only_audacity4(home: Path | None = None) -> bool:
    """Whether this user has Audacity 4 and not 3.x, as far as can be told without starting a
    program: an Audacity 4 runs and no 3.x, or none runs and only Audacity 4's settings exist."""
    running = _running_majors()
    if running:
        return running == {4}
    return set(_settings_majors(home)) == {4}


def menu_lines(presets: list[str]) -> list[str]:
    """Where the bundle's effects show in Audacity 4's menus, one line per kind."""
    named = f"{presets[0]} ... {presets[-1]}" if len(presets) > 3 else ", ".join(presets)
    lines = []
    for group, verb in KINDS.values():
        menu = "Analyze" if group == "analyze" else "Effect"
        more = f", {verb}: <preset> ({len(presets)}: {named})" if presets else ""
        lines.append(f"{menu} > Extension > clapsep > {verb} a sound{more}")
    return lines


def bundle_problems(presets: list[str], folder: Path, command: list[str] | None = None) -> list[str]:
    """What keeps the bundle an install would write from being in ``folder`` (empty: it is)."""
    files = bundle_files(entries(presets), command or clapsep_command())
    bundle = folder / f"{BUNDLE_PREFIX}{digest(files)}"
    if not bundle.is_dir():
        others = [p.name for p in sorted(folder.glob(f"{BUNDLE_PREFIX}*")) if p.is_dir()]
        return [f"no current clapsep bundle in {folder}" + (f" (an older one: {', '.join(others)})" if others else "")]
    library = bundle / platform_folder() / f"{LIBRARY}{'.dylib' if sys.platform == 'darwin' else '.so'}"
    return [] if library.is_file() else [f"{bundle}: its native library is missing"]
