"""Signal-processing building blocks: the separation STFT pair and band-limited resampling.

Functional style (as torchaudio's ``functional``): plain functions over tensors, plus the
small stateful :class:`ResampleStream` for block-by-block processing.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import torch
import torch.nn.functional as F

from clapsep_cli.network.architecture import HOP, N_FFT


@cache
def _hann(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, device=device, dtype=dtype)


def stft(x: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Complex STFT of ``x`` (..., time) -> (..., n_fft // 2 + 1, frames).

    Hann window (periodic), centred frames with reflect padding: the released model's settings.
    Half-precision input (from autocast) is transformed in float32: cuFFT has no bf16, and a
    bf16 window would round the analysis itself.
    """
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    shape = x.shape
    spec = torch.stft(
        x.reshape(-1, shape[-1]),
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        window=_hann(n_fft, x.device, x.dtype),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, length: int, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Inverse of :func:`stft`: (..., bins, frames) complex -> (..., length) real.

    The same arithmetic as ``torch.istft`` (inverse real FFT, Hann synthesis window, overlap-add
    in frame order, division by the summed squared window), bit for bit on the CPU; the
    overlap-add is done as a few strided additions and the window envelope is computed once per
    frame count, which makes it several times faster than ``torch.istft``'s.
    """
    shape = spec.shape
    frames = shape[-1]
    window = _hann(n_fft, spec.device, spec.real.dtype)
    pieces = torch.fft.irfft(spec.reshape(-1, *shape[-2:]).transpose(1, 2), n=n_fft, dim=-1).mul_(window)
    envelope = _window_envelope(n_fft, hop, frames, spec.device, spec.real.dtype)
    start = n_fft // 2
    if start + length > envelope.shape[-1]:
        raise ValueError(f"{frames} frames cannot give {length} samples")
    wave = _overlap_add(pieces, hop)[:, start : start + length] / envelope[start : start + length]
    return wave.reshape(*shape[:-2], length)


def _overlap_add(pieces: torch.Tensor, hop: int) -> torch.Tensor:
    """Frames (rows, frames, n) placed ``hop`` apart and summed -> (rows, n + hop * (frames - 1)).

    Each output sample adds its frames in increasing frame order (as ``torch.istft`` does):
    frame ``f``'s ``j``-th stretch of ``hop`` samples lands in output stretch ``f + j``, so adding
    the stretches from the last ``j`` to the first adds earlier frames first.
    """
    rows, frames, n = pieces.shape
    stretches = -(-n // hop)
    out = pieces.new_zeros(rows, frames + stretches - 1, hop)
    for j in reversed(range(stretches)):
        part = pieces[:, :, j * hop : (j + 1) * hop]
        out[:, j : j + frames, : part.shape[-1]] += part
    return out.reshape(rows, -1)[:, : n + hop * (frames - 1)]


@lru_cache(maxsize=16)
def _window_envelope(n_fft: int, hop: int, frames: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sum of the squared synthesis windows over ``frames`` frames (the iSTFT's normaliser)."""
    window = _hann(n_fft, device, dtype)
    envelope = _overlap_add(window.square().expand(1, frames, n_fft), hop)[0]
    inner = envelope[n_fft // 2 : envelope.shape[-1] - n_fft // 2]
    if inner.numel() and float(inner.abs().min()) < 1e-11:
        raise ValueError(f"window {n_fft} with hop {hop} does not overlap enough to invert")
    return envelope


class SincResampler:
    """Rational-ratio resampling with a Hann-windowed sinc low-pass filter.

    The kernel is the one torchaudio's ``Resample`` uses by default (6 zero crossings, roll-off
    0.99), which is how the official pipeline turns 32 kHz segments into the 48 kHz encoder
    input; the same filter serves every other rate conversion here. The ratio is reduced to
    ``up / down``; output sample ``i * up + p`` is a dot product of phase ``p``'s taps with the
    input window starting at ``i * down`` (after ``width`` zeros of left padding).
    """

    def __init__(self, orig_rate: int, new_rate: int, zero_crossings: int = 6, rolloff: float = 0.99):
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self.down, self.up = self.orig_rate // g, self.new_rate // g
        self.width, self.kernel = _sinc_kernel(self.down, self.up, zero_crossings, rolloff)
        self.groups = _phase_groups(self.down, self.up, zero_crossings, rolloff)
        self._kernels: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}

    @property
    def identity(self) -> bool:
        return self.up == self.down

    def output_length(self, n: int) -> int:
        """Samples produced for ``n`` input samples."""
        return -(-self.up * n // self.down)

    def _kernels_for(self, like: torch.Tensor) -> list[torch.Tensor]:
        """The kernel on ``like``'s device and dtype: whole (up, 1, taps) for one group, else
        each group's taps as a (taps, phases) matrix."""
        key = (like.device, like.dtype)
        if key not in self._kernels:
            kernel = self.kernel.to(device=like.device, dtype=like.dtype)
            if len(self.groups) == 1:
                self._kernels[key] = [kernel]
            else:
                self._kernels[key] = [kernel[p0:p1, 0, lo:hi].T.contiguous() for p0, p1, lo, hi in self.groups]
        return self._kernels[key]

    def _frames(self, padded: torch.Tensor) -> torch.Tensor:
        """Run the polyphase filter over already padded input (rows, samples): output frame
        ``i`` (``up`` samples) reads ``padded[i * down : i * down + kernel length]``.

        With several phase groups, each group's taps multiply strided windows of the input (a
        matrix product over the group's non-zero taps only); with one, a strided convolution.
        """
        kernels = self._kernels_for(padded)
        if len(self.groups) == 1:
            out = F.conv1d(padded[:, None, :], kernels[0], stride=self.down)
            return out.transpose(1, 2).reshape(padded.shape[0], -1)
        rows, length = padded.shape
        padded = padded.contiguous()
        frames = (length - self.kernel.shape[-1]) // self.down + 1
        parts = [padded.as_strided((rows, frames, hi - lo), (length, self.down, 1), padded.storage_offset() + lo)
                 @ kernel for (_, _, lo, hi), kernel in zip(self.groups, kernels)]
        return torch.cat(parts, dim=2).reshape(rows, -1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Resample a whole signal (..., time)."""
        if self.identity:
            return x
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = self._frames(F.pad(flat, (self.width, self.width + self.down)))
        n = self.output_length(shape[-1])
        return out[:, :n].reshape(*shape[:-1], n)

    def stream(self) -> ResampleStream:
        return ResampleStream(self)


@cache
def _sinc_kernel(down: int, up: int, zero_crossings: int, rolloff: float) -> tuple[int, torch.Tensor]:
    """(width, polyphase kernel (up, 1, 2 * width + down)) of :class:`SincResampler`; computed
    once per ratio, as every file and stream at that ratio uses the same."""
    base = min(down, up) * rolloff
    width = math.ceil(zero_crossings * down / base)
    taps = torch.arange(-width, width + down, dtype=torch.float64)[None, :] / down
    phases = -(torch.arange(up, dtype=torch.float32) / up).to(torch.float64)[:, None]
    t = (phases + taps) * base
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return width, (sinc * window * (base / down)).to(torch.float32)[:, None, :]


@cache
def _phase_groups(down: int, up: int, zero_crossings: int, rolloff: float) -> tuple[tuple[int, int, int, int], ...]:
    """Runs of consecutive phases ``(first, end, first tap, end tap)`` that together cover every
    non-zero tap of the ratio's polyphase kernel (up, 1, taps); computed once per ratio.

    Each phase is non-zero over about ``2 * zero_crossings * down / base`` taps, a window that
    slides across the kernel as the phase grows, so one convolution over all taps mostly
    multiplies zeros when ``down`` is large (441 taps per output sample for 44.1 -> 32 kHz,
    17 of them non-zero). Groups of phases small enough that their windows overlap mostly
    skip those zeros; dropping exact zeros from a sum leaves its terms unchanged.
    """
    kernel = _sinc_kernel(down, up, zero_crossings, rolloff)[1]
    nonzero = kernel[:, 0, :] != 0
    first = nonzero.int().argmax(dim=1).tolist()
    end = (kernel.shape[-1] - nonzero.flip(1).int().argmax(dim=1)).tolist()
    span = max(e - f for f, e in zip(first, end))
    size = max(1, -(-span * up // down))  # phases whose windows slide by about one span
    if size >= up:
        return ((0, up, 0, kernel.shape[-1]),)
    return tuple((p, min(p + size, up), min(first[p:p + size]), max(end[p:p + size])) for p in range(0, up, size))


class ResampleStream:
    """Block-by-block resampling whose concatenated output equals the whole-signal result."""

    def __init__(self, resampler: SincResampler):
        self.r = resampler
        self._buffer: torch.Tensor | None = None  # input from absolute index _start - width
        self._consumed = 0  # input samples received so far
        self._frames_done = 0  # output frames (of `up` samples each) emitted

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Feed (channels, n) input; returns the output that is now fully determined."""
        if self.r.identity:
            return x
        if self._buffer is None:
            self._buffer = F.pad(x[:, :0], (self.r.width, 0))
        self._buffer = torch.cat([self._buffer, x], dim=1)
        self._consumed += x.shape[1]
        return self._emit(final=False)

    def flush(self, channels: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Finish the stream; returns the remaining output."""
        if self.r.identity:
            return torch.zeros(channels, 0, dtype=dtype)
        if self._buffer is None:
            return torch.zeros(channels, 0, dtype=dtype)
        self._buffer = F.pad(self._buffer, (0, self.r.width + self.r.down))
        return self._emit(final=True)

    def _emit(self, final: bool) -> torch.Tensor:
        r = self.r
        assert self._buffer is not None
        kernel_len = 2 * r.width + r.down
        # Frame i reads buffer[i*down - start : ... + kernel_len] where the buffer starts at
        # frame `_frames_done`.
        available = self._buffer.shape[1]
        frames = (available - kernel_len) // r.down + 1 if available >= kernel_len else 0
        if final:
            total = -(-r.output_length(self._consumed) // r.up)
            frames = min(frames, total - self._frames_done)
        if frames <= 0:
            return self._buffer[:, :0]
        used = (frames - 1) * r.down + kernel_len
        out = r._frames(self._buffer[:, :used])
        self._buffer = self._buffer[:, frames * r.down :]
        self._frames_done += frames
        if final:
            excess = self._frames_done * r.up - r.output_length(self._consumed)
            if excess > 0:
                out = out[:, : out.shape[1] - excess]
        return out
