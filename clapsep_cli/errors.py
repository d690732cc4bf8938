"""Errors meant for the user: the CLI prints their message as one line, without a traceback."""


class ClapsepError(Exception):
    """A failure the user can act on; ``str(err)`` is a complete, single-line explanation."""


class ModelMissingError(ClapsepError):
    """No usable model is installed (or a part of it, such as the tokenizer, is missing)."""


class CheckpointError(ClapsepError):
    """A checkpoint file is unreadable, of an unknown layout, or incomplete."""


class AudioError(ClapsepError):
    """An input cannot be read as audio, or an output cannot be written."""
