"""Named query presets: TOML files shipped with clapsep, plus the user's own.

A preset file ``NAME.toml``::

    description = "Spoken voices: interviews, dialogue, voice-over"
    positive = ["people talking", "a man speaking"]    # texts describing what to keep
    negative = ["music", "wind noise"]                 # texts describing what to reject
    positive_audio = ["refs/voice.wav@0-4"]            # optional reference clips (relative
    negative_audio = []                                #   paths are relative to the file)
    audio_weight = 0.5                                 # optional, see queries.py
    tag = "dialogue"                                   # optional tag in stem names (default: NAME;
                                                       #   `suffix`, its old name, is read too)
    residual = false                                   # optional: also write the residual

User presets live in ``<user config dir>/clapsep/presets`` and override shipped presets of the
same name. Validation errors name the file, the key and the problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import platformdirs

from clapsep_cli import resources
from clapsep_cli.audio import atomic
from clapsep_cli.errors import ClapsepError
from clapsep_cli.queries.spec import AudioRef, Query, slugify

KEYS = {"description", "positive", "negative", "positive_audio", "negative_audio", "audio_weight", "tag",
        "suffix", "residual"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def shipped_dir() -> Path:
    return resources.shipped("presets")


def user_dir() -> Path:
    return Path(platformdirs.user_config_dir("clapsep", appauthor=False)) / "presets"


@dataclass(frozen=True)
class Preset:
    """A validated preset."""

    name: str
    path: Path
    source: str  # "shipped" | "user"
    description: str
    query: Query
    tag: str
    residual: bool


def _strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ClapsepError(f"{path}: '{key}' must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def parse(path: Path, source: str, name: str | None = None) -> Preset:
    """Read and validate one preset file (named after the file unless ``name`` is given)."""
    name = path.stem if name is None else name
    if not NAME_RE.match(name):
        raise ClapsepError(f"{path}: bad preset name {name!r} (use a-z, 0-9, '-' and '_', 48 at most)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ClapsepError(f"{path}: not valid TOML ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClapsepError(f"{path}: cannot read ({err})") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ClapsepError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(KEYS))})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ClapsepError(f"{path}: 'description' must be a string")
    positive, negative = _strings(path, data, "positive"), _strings(path, data, "negative")
    refs = {}
    for key in ("positive_audio", "negative_audio"):
        items = []
        for spec in _strings(path, data, key):
            ref = AudioRef.parse(spec)
            items.append(ref if ref.path.is_absolute() else AudioRef(path.parent / ref.path, ref.start, ref.end))
        refs[key] = tuple(items)
    weight = data.get("audio_weight")
    number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if weight is not None and (not number or not 0 <= weight <= 1):
        raise ClapsepError(f"{path}: 'audio_weight' must be a number between 0 and 1")
    if "tag" in data and "suffix" in data:
        raise ClapsepError(f"{path}: give 'tag' only ('suffix' is its old name)")
    key = "suffix" if "suffix" in data else "tag"
    tag = data.get(key, slugify(name))
    if not isinstance(tag, str) or slugify(tag) != tag:
        raise ClapsepError(f"{path}: '{key}' must be a file-name tag such as {slugify(str(tag))!r}")
    residual = data.get("residual", False)
    if not isinstance(residual, bool):
        raise ClapsepError(f"{path}: 'residual' must be true or false")
    if not (positive or negative or refs["positive_audio"] or refs["negative_audio"]):
        raise ClapsepError(f"{path}: a preset needs at least one of positive, negative, positive_audio, negative_audio")
    query = Query(positive, negative, refs["positive_audio"], refs["negative_audio"],
                  None if weight is None else float(weight), given_tag=tag)
    return Preset(name, path, source, description, query, tag, residual)


def available() -> dict[str, Path]:
    """Preset name -> file, user presets overriding shipped ones."""
    found: dict[str, Path] = {}
    for folder in (shipped_dir(), user_dir()):
        if folder.is_dir():
            for file in sorted(folder.glob("*.toml")):
                found[file.stem] = file
    return found


def source_of(path: Path) -> str:
    return "user" if path.parent == user_dir() else "shipped"


def load(name: str) -> Preset:
    files = available()
    if name not in files:
        close = [n for n in files if n.startswith(name[:3])]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `clapsep presets list`)"
        raise ClapsepError(f"unknown preset {name!r}{hint}")
    return parse(files[name], source_of(files[name]))


def load_all() -> tuple[list[Preset], list[str]]:
    """Every preset that validates, and one error line per preset that does not."""
    good, bad = [], []
    for path in available().values():
        try:
            good.append(parse(path, source_of(path)))
        except ClapsepError as err:
            bad.append(str(err))
    return good, bad


def to_toml(description: str, positive: list[str], negative: list[str], tag: str | None = None,
            residual: bool | None = None, audio_weight: float | None = None) -> str:
    """A preset file's text. Strings are written as JSON strings, which are valid TOML."""
    lines = [f"description = {json.dumps(description, ensure_ascii=False)}",
             f"positive = {json.dumps(positive, ensure_ascii=False)}",
             f"negative = {json.dumps(negative, ensure_ascii=False)}"]
    if tag is not None:
        lines.append(f"tag = {json.dumps(tag)}")
    if residual is not None:
        lines.append(f"residual = {'true' if residual else 'false'}")
    if audio_weight is not None:
        lines.append(f"audio_weight = {audio_weight!r}")
    return "\n".join(lines) + "\n"


def create(name: str, text: str, overwrite: bool = False) -> Path:
    """Write a user preset (validated before it is saved)."""
    if not NAME_RE.match(name):
        raise ClapsepError(f"bad preset name {name!r} (use a-z, 0-9, '-' and '_', 48 at most)")
    folder = user_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.toml"
    if target.exists() and not overwrite:
        raise ClapsepError(f"user preset {name!r} exists ({target}; {{setting}} replaces it)", setting="overwrite")
    with atomic.writing(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
        try:
            parse(tmp, "user", name=name)
        except ClapsepError as err:
            raise ClapsepError(str(err).replace(str(tmp), f"preset {name!r}")) from None  # not our temp file's name
    return target


def remove(name: str) -> Path:
    target = user_dir() / f"{name}.toml"
    if not target.is_file():
        if name in available():
            raise ClapsepError(f"preset {name!r} is shipped with clapsep and cannot be removed "
                               "(create a user preset of the same name to override it)")
        raise ClapsepError(f"unknown preset {name!r}")
    target.unlink()
    return target
