"""One network call for a batch of 32 kHz segments: staging, STFT, mask, iSTFT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from clapsep_cli.audio import dsp
from clapsep_cli.network.separation import apply_mask


class SeparationModel(Protocol):
    """What the engine needs from a model: masks for 32 kHz segments, on some device."""

    device: torch.device

    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor: ...


def shared_rows(device: torch.device, batch_size: int) -> int | None:
    """Rows of every network call when sources share batches, or None where they must not.

    A segment's estimate must not depend on what shares its batch. On CUDA every element of an
    element-wise kernel is computed alike and matrix kernels are chosen by shape, so calls of a
    fixed ``batch_size`` rows (the last one filled with silent rows) are enough. On the CPU (and
    elsewhere, unmeasured) they are not: element-wise kernels compute the few elements where
    they split work between threads by a scalar path that rounds differently from the vector
    one, so a segment's row changes its last bits; there a batch holds one source's segments
    only, as it would alone.
    """
    return batch_size if device.type == "cuda" else None


def separate_batch(model: SeparationModel, segments: Sequence[torch.Tensor], condition: torch.Tensor,
                   rows: int | None = None) -> list[torch.Tensor]:
    """Estimates (C, L) on the CPU for 32 kHz segments (C, L), whose channel counts may differ:
    each segment's downmix mask applied to each of its channels.

    The network runs in calls of ``rows`` rows (default: all segments in one call), the last
    call's rows past the segments silent; STFT and iSTFT run per segment, so that a segment's
    numbers depend on nothing else (see :func:`shared_rows`). ``condition`` is (1, D) or one
    row per segment. STFT, masking and iSTFT run on the model's device.
    """
    rows = rows or len(segments)
    staged = _staged(segments, model.device)
    length = staged[0].shape[-1]
    specs = [dsp.stft(x[None]) for x in staged]  # (1, C, bins, frames) each
    mono = torch.cat([_downmix(x[None]) for x in staged])
    mono_spec = torch.cat([_downmix(spec) for spec in specs])
    cond = condition.to(model.device)
    masks = []
    for i in range(0, len(segments), rows):
        n = min(rows, len(segments) - i)
        part = cond if cond.shape[0] == 1 else cond[i : i + n]
        masks.append(model.masks(_filled(mono[i : i + n], rows), _filled(part, rows, repeat=True),
                                 _filled(mono_spec[i : i + n], rows))[:n])
    mask = torch.cat(masks)
    return _to_host([apply_mask(spec, mask[i : i + 1].unsqueeze(1), length)[0] for i, spec in enumerate(specs)])


def _filled(x: torch.Tensor, rows: int, repeat: bool = False) -> torch.Tensor:
    """``x`` (n, ...) made ``rows`` rows long: silent rows appended, or with ``repeat`` its first row."""
    if len(x) == rows:
        return x
    if repeat:
        return x[:1].expand(rows, *x.shape[1:]) if len(x) == 1 else torch.cat([x, x[:1].expand(rows - len(x), -1)])
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def _downmix(x: torch.Tensor) -> torch.Tensor:
    """Mean over the channel axis (1). Two channels are added directly: the same numbers as
    ``mean`` (a sum of two is a sum of two), without its slow strided reduction."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 2:
        return (x[:, 0] + x[:, 1]) / 2
    return x.mean(dim=1)


def _staged(segments: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``segments`` on ``device``. Bound for a CUDA device, they travel as one page-locked host
    block copied asynchronously (a fresh block from PyTorch's caching host allocator, which does
    not hand it out again before that copy has finished)."""
    if device.type == "cpu":
        return list(segments)
    sizes = [s.shape[0] for s in segments]
    out = None
    if device.type == "cuda":
        out = torch.empty((sum(sizes), segments[0].shape[1]), dtype=segments[0].dtype, pin_memory=True)
    host = torch.cat(list(segments), out=out)
    return list(host.to(device, non_blocking=True).split(sizes))


def _to_host(estimates: list[torch.Tensor]) -> list[torch.Tensor]:
    """``estimates`` on the CPU; from CUDA as one block through page-locked memory, waiting for
    the copy to finish."""
    device = estimates[0].device
    if device.type == "cpu":
        return estimates
    sizes = [e.shape[0] for e in estimates]
    x = torch.cat(estimates)
    if device.type != "cuda":
        return list(x.cpu().split(sizes))
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    torch.cuda.current_stream(device).synchronize()
    return list(out.split(sizes))
