"""``clapsep audacity``: extract from Audacity's selection through mod-script-pipe."""

from __future__ import annotations

import click


@click.group()
def audacity() -> None:
    """Work inside a running Audacity (mod-script-pipe)."""
