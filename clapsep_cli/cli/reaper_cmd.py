"""``clapsep reaper``: ReaScript actions that extract from REAPER's selected items."""

from __future__ import annotations

import click


@click.group()
def reaper() -> None:
    """Install REAPER actions (one per preset, plus a free-text one)."""
