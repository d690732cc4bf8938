"""SpecAugment as CLAP's training applies it to log-mel inputs: zeroed stripes in time and mel."""

from __future__ import annotations

import torch

# The official training's setting (HTS-AT's spec augmenter): 2 stripes of up to 64 frames, 2 of up to 8 mel bins.
TIME_WIDTH, TIME_STRIPES, MEL_WIDTH, MEL_STRIPES = 64, 2, 8, 2


def drop_stripes(x: torch.Tensor, dim: int, width: int, stripes: int) -> torch.Tensor:
    """Zero, in place, ``stripes`` random bands of fewer than ``width`` rows along ``dim`` of
    each item of ``x`` (B, channels, frames, mels); returns ``x``."""
    total = x.shape[dim]
    for item in x:
        for _ in range(stripes):
            length = int(torch.randint(0, width, (1,))[0])
            start = int(torch.randint(0, total - length, (1,))[0])
            item.narrow(dim - 1, start, length).zero_()
    return x


def spec_augment(x: torch.Tensor) -> torch.Tensor:
    """Time stripes, then mel stripes, on a log-mel batch (B, channels, frames, mels), in place."""
    return drop_stripes(drop_stripes(x, 2, TIME_WIDTH, TIME_STRIPES), 3, MEL_WIDTH, MEL_STRIPES)
