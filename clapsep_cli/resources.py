"""Files shipped beside the code: presets/ and plugins/ (in the wheel under _shipped/)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The shipped folder ``name`` ("presets" or "plugins"): inside an installed wheel, or the
    source checkout's top-level folder in an editable install."""
    inside = _PACKAGE / "_shipped" / name
    return inside if inside.is_dir() else _PACKAGE.parent / name
