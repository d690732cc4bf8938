"""How segments are laid out and batched, and how far input is read ahead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clapsep_cli.errors import SettingError
from clapsep_cli.network.architecture import SEGMENT_SAMPLES

if TYPE_CHECKING:  # torch-free at run time: the command line's options are read from here
    import torch

DEFAULT_OVERLAP = 0.1
DEFAULT_BATCH_SIZE = 2
# On a GPU the network costs little per segment and larger batches keep it busy: on an H200,
# 16 segments per call ran about 7x the segments per second of 2, in 1 GiB of GPU memory
# (benchmarks/batch_sizes.py).
CUDA_BATCH_SIZE = 16
MAX_OVERLAP = 0.5
DEFAULT_PREFETCH = 2


@dataclass(frozen=True)
class EngineOptions:
    """How segments are laid out and batched, and how far input is read ahead.

    ``prefetch``: batches' worth of 32 kHz input decoded and resampled ahead of the network in a
    background thread (0: everything in the caller's thread).
    """

    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    prefetch: int = DEFAULT_PREFETCH

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= MAX_OVERLAP:
            raise SettingError("overlap", f"must be between 0 and {MAX_OVERLAP} (fraction of a 10 s segment)")
        if self.batch_size < 1:
            raise SettingError("batch_size", "must be at least 1")
        if self.prefetch < 0:
            raise SettingError("prefetch", "must be at least 0")

    @property
    def hop(self) -> int:
        return SEGMENT_SAMPLES - round(self.overlap * SEGMENT_SAMPLES)


def default_batch_size(device: torch.device) -> int:
    """Segments per network call where none is asked for: 16 on CUDA, 2 elsewhere."""
    return CUDA_BATCH_SIZE if device.type == "cuda" else DEFAULT_BATCH_SIZE


def default_prefetch(device: torch.device) -> int:
    """Read-ahead where none is asked for: :data:`DEFAULT_PREFETCH` batches when the network runs
    on an accelerator (decoding then overlaps it), none on the CPU, where the network's own
    threads already use every core and a reader thread only competes with them (on 2 cores a
    60 s file separated about 12 % slower with it, the free-model pipeline of
    ``benchmarks/throughput.py`` 8 to 20 % slower)."""
    return 0 if device.type == "cpu" else DEFAULT_PREFETCH


def for_device(device: torch.device, overlap: float = DEFAULT_OVERLAP, batch_size: int | None = None) -> EngineOptions:
    """The options a run on ``device`` uses: ``batch_size`` where given, else the device's
    default, and the device's read-ahead (see :func:`default_batch_size`, :func:`default_prefetch`)."""
    return EngineOptions(overlap=overlap, batch_size=batch_size or default_batch_size(device),
                         prefetch=default_prefetch(device))
