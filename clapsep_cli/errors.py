"""Errors meant for the user: front ends print their message as one line, without a traceback.

Messages are written in neutral words. Where a message is about a setting (or a setting would
fix the problem), ``setting`` names it as the Python API spells it (``overwrite``,
``bit_depth``) and the message says ``{setting}`` where it appears, so each front end can
render it in its own spelling (the command line as ``--overwrite``): :meth:`ClapsepError.render`.
"""

from __future__ import annotations

from collections.abc import Callable


class ClapsepError(Exception):
    """A failure the user can act on; ``str(err)`` is a complete, single-line explanation."""

    def __init__(self, message: str = "", *, setting: str | None = None):
        self.template, self.setting = message, setting
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message, with the setting it mentions spelled by ``name``."""
        if self.setting is None:
            return self.template
        return self.template.replace("{setting}", name(self.setting))


class SettingError(ClapsepError):
    """A setting has a value that cannot be used: ``setting`` and the ``problem`` apart."""

    def __init__(self, setting: str, problem: str):
        self.problem = problem
        super().__init__("{setting} " + problem, setting=setting)


class ModelMissingError(ClapsepError):
    """No usable model is installed (or a part of it, such as the tokenizer, is missing)."""


class CheckpointError(ClapsepError):
    """A checkpoint file is unreadable, of an unknown layout, or incomplete."""


class AudioError(ClapsepError):
    """An input cannot be read as audio, or an output cannot be written."""


def first_line(err: BaseException) -> str:
    """The first line of a foreign exception's message (at most 200 characters), else its type's
    name: what a one-line error says about a failure in a library clapsep calls."""
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
