"""clapsep: pull one sound out of a recording by describing it (CLAPSep)."""

__version__ = "0.1.0"
