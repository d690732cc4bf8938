"""The names of the network's arithmetic, torch-free so the command line's options and the
service's clients can name them without loading torch (:mod:`clapsep_cli.models.loaded` maps
them to dtypes)."""

from __future__ import annotations

PRECISION_NAMES = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "auto"  # bf16 where the device computes it natively, else fp32
