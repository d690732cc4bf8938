"""Clips and mixtures as the paper's training and evaluation make them: 32 kHz mono, 10 s, 0 dB."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from clapsep_cli.audio.reader import read_mono
from clapsep_cli.errors import ClapsepError
from clapsep_cli.network.architecture import SAMPLE_RATE


def pad_or_trim(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` cut or zero-padded (at the end of its last axis) to ``length`` samples."""
    return F.pad(x[..., :length], (0, max(length - x.shape[-1], 0)))


def load_mono32(path: Path, length: int | None = None) -> torch.Tensor:
    """A file as 32 kHz mono; cut or zero-padded to ``length`` samples if given."""
    mono = read_mono(path, SAMPLE_RATE)
    return mono if length is None else pad_or_trim(mono, length)


def mix_at_0db(target: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixture, target): noise scaled to the target's power, then the peak rule (both scaled
    by 0.9 / peak when the mixture peaks above 1)."""
    e_target, e_noise = target.square().sum(), noise.square().sum()
    if e_target == 0 or e_noise == 0:
        raise ClapsepError("silent target or noise clip")
    mixture = target + noise * torch.sqrt(e_target / e_noise)
    peak = mixture.abs().max()
    if peak > 1:
        mixture, target = mixture * (0.9 / peak), target * (0.9 / peak)
    return mixture, target
