"""STFT pair and resampler against independent definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clapsep_cli.audio import dsp


def test_stft_istft_round_trip_is_identity() -> None:
    x = torch.randn(3, 32000 * 2 + 123)
    y = dsp.istft(dsp.stft(x), x.shape[-1])
    assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.laion
def test_stft_matches_torchlibrosa_conv_dft() -> None:
    from torchlibrosa.stft import ISTFT, STFT

    x = torch.randn(2, 32000)
    real, imag = STFT(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True, pad_mode="reflect")(x)
    spec = dsp.stft(x)
    assert torch.allclose(spec.real, real[:, 0].transpose(1, 2), atol=1e-3)
    assert torch.allclose(spec.imag, imag[:, 0].transpose(1, 2), atol=1e-3)
    ref = ISTFT(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True, pad_mode="reflect")(
        real, imag, length=x.shape[-1])
    assert torch.allclose(dsp.istft(spec, x.shape[-1]), ref, atol=1e-5)


def _naive_resample(x: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Direct evaluation of windowed-sinc interpolation, one output sample at a time."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    base = min(o, n) * rolloff
    out = np.zeros(-(-len(x) * n // o))
    for j in range(len(out)):
        t_out = j / n  # in units of input "blocks" of o samples -> position j*o/n samples
        acc = 0.0
        for i in range(len(x)):
            t = (i / o - t_out) * base
            if abs(t) >= zeros:
                continue
            window = math.cos(t * math.pi / zeros / 2) ** 2
            sinc = 1.0 if t == 0 else math.sin(math.pi * t) / (math.pi * t)
            acc += x[i] * sinc * window * base / o
        out[j] = acc
    return out


@pytest.mark.parametrize("orig,new", [(32000, 48000), (48000, 32000), (44100, 32000), (32000, 22050)])
def test_resampler_matches_windowed_sinc_formula(orig: int, new: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(97)
    ours = dsp.SincResampler(orig, new)(torch.from_numpy(x).float()).numpy()
    ref = _naive_resample(x, orig, new)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-5


def test_resampler_preserves_a_band_limited_tone() -> None:
    rate = 32000
    t = torch.arange(rate) / rate
    x = torch.sin(2 * math.pi * 1000 * t)
    up = dsp.SincResampler(32000, 48000)(x)
    t48 = torch.arange(up.shape[-1]) / 48000
    expected = torch.sin(2 * math.pi * 1000 * t48)
    inner = slice(2000, -2000)
    err = up[inner] - expected[inner]
    snr = 10 * torch.log10(expected[inner].pow(2).sum() / err.pow(2).sum())
    assert up.shape[-1] == 48000
    assert snr > 60


@pytest.mark.parametrize("orig,new", [(44100, 32000), (32000, 44100), (8000, 32000), (32000, 32000), (96000, 32000)])
def test_streaming_resample_equals_whole_signal(orig: int, new: int) -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 20011))).float()
    r = dsp.SincResampler(orig, new)
    whole = r(x)
    stream = r.stream()
    parts, pos = [], 0
    for size in [1, 7, 500, 3000, 1, 9000, 10000]:
        parts.append(stream.push(x[:, pos : pos + size]))
        pos += size
    parts.append(stream.flush(2))
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == whole.shape
    assert torch.allclose(streamed, whole, atol=1e-6)


@pytest.mark.parametrize("length", [320000, 100003, 7777, 1000, 513])
def test_istft_is_torch_istft_bit_for_bit(length: int) -> None:
    spec = dsp.stft(torch.randn(2, 3, length)) * torch.rand(2, 3, 513, 1)
    window = torch.hann_window(1024)
    ref = torch.istft(spec.reshape(6, 513, -1), 1024, 320, 1024, window, center=True, length=length)
    assert torch.equal(dsp.istft(spec, length), ref.reshape(2, 3, length))


def test_half_precision_input_is_transformed_in_float32() -> None:
    """Under autocast the encoder's input arrives in bf16; cuFFT has no bf16, and a bf16 window
    would round the analysis: the transform must be the float32 one of the same samples."""
    x = torch.randn(2, 32000).bfloat16()
    spec = dsp.stft(x)
    assert spec.dtype == torch.complex64
    assert torch.equal(spec, dsp.stft(x.float()))
