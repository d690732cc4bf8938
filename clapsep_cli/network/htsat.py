"""HTS-AT, CLAP's audio encoder ("HTSAT-base"), as the CLAP and CLAPSep checkpoints hold it.

The module tree and parameter names are laion-clap's ``HTSAT_Swin_Transformer`` (with
torchlibrosa's ``Spectrogram`` and ``LogmelFilterBank`` front end), so both checkpoints load by
name, and a seeded random build draws the same weights in the same order. Two forwards:

* :meth:`HTSAT.clip_embedding`: CLAP's clip embedding of a 10 s, 48 kHz clip, in laion-clap's
  order of operations (conv STFT with the checkpoint's DFT weights, log-mel, bicubic stretch to
  1024 frames, Swin stages, average pool), for audio queries;
* :meth:`HTSAT.features`: the separation encoder's multi-scale features of a log-mel image
  (the caller computes the log-mel, see ``separation.log_mel``).

The front end's DFT and mel tables are checkpoint weights; a build on the meta device (about to
load them, see ``fast_build``) skips computing them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clapsep_cli.network.architecture import HTSATConfig
from clapsep_cli.network.swin import PatchMerging, SwinBlock, truncated_normal_

_AMIN = 1e-10  # floor of the mel power before dB


def periodic_hann(n: int) -> np.ndarray:
    """The periodic Hann window of length ``n`` (float64), computed as scipy's ``get_window``."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    return (0.5 * np.cos(0 * fac) + 0.5 * np.cos(fac))[:-1]


def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary windowed DFT rows for the non-negative frequencies, as conv1d weights
    (n_fft // 2 + 1, 1, n_fft), float32."""
    x, y = np.meshgrid(np.arange(n_fft), np.arange(n_fft))
    bins = n_fft // 2 + 1
    rows = (np.power(np.exp(-2j * np.pi / n_fft), x * y)[:, :bins] * periodic_hann(n_fft)[:, None]).T
    real, imag = (torch.tensor(part, dtype=torch.float32)[:, None] for part in (np.real(rows), np.imag(rows)))
    return real, imag


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asanyarray(f, dtype=np.float64)
    mels = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.where(log, f, 1000.0) / 1000.0) / (np.log(6.4) / 27.0), mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    freqs = (200.0 / 3) * m
    log = m >= 15.0
    freqs[log] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (m[log] - 15.0))
    return freqs


def mel_filters(rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters on the FFT bins: (n_fft // 2 + 1, n_mels), float32
    (librosa's ``filters.mel`` with its defaults, transposed)."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights.T


class _STFT(nn.Module):
    """Holds the DFT as two frozen convolutions (``stft.conv_real``, ``stft.conv_imag``)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        if not self.conv_real.weight.is_meta:
            self.conv_real.weight.data, self.conv_imag.weight.data = dft_kernels(n_fft)
        self.requires_grad_(False)


class Spectrogram(nn.Module):
    """Power spectrogram by convolution: (B, samples) -> (B, 1, frames, n_fft // 2 + 1)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = _STFT(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        half = self.stft.n_fft // 2
        x = F.pad(wave[:, None, :], (half, half), mode="reflect")
        real = self.stft.conv_real(x)[:, None].transpose(2, 3)
        imag = self.stft.conv_imag(x)[:, None].transpose(2, 3)
        return real**2 + imag**2


class LogMel(nn.Module):
    """Mel projection (``melW``, (bins, mels)) and dB: power (..., bins) -> (..., mels)."""

    def __init__(self, cfg: HTSATConfig):
        super().__init__()
        bins = cfg.fft_window // 2 + 1
        self.melW = nn.Parameter(torch.empty(bins, cfg.mel_bins), requires_grad=False)
        if not self.melW.is_meta:
            self.melW.data = torch.from_numpy(
                mel_filters(cfg.sample_rate, cfg.fft_window, cfg.mel_bins, cfg.fmin, cfg.fmax))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=_AMIN))


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches of the log-mel image to tokens: (B, 1, S, S) -> (B, (S/4)^2, C)."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(image).flatten(2).transpose(1, 2))


class Stage(nn.Module):
    """Swin blocks at one resolution, then patch merging (all but the last stage)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int,
                 drop_path: list[float], merge: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2, drop_path=drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(resolution, dim) if merge else None


class HTSAT(nn.Module):
    """The HTS-AT encoder (see the module doc). ``tscam_conv`` and ``head``, the tagging head,
    are kept so the checkpoints load strictly; no forward here uses them."""

    patch_size = 4

    def __init__(self, cfg: HTSATConfig, drop_path_rate: float = 0.1):
        super().__init__()
        self.spec_size = cfg.spec_size
        self.freq_ratio = cfg.spec_size // cfg.mel_bins
        self.spectrogram_extractor = Spectrogram(cfg.fft_window, cfg.hop_size)
        self.logmel_extractor = LogMel(cfg)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.patch_embed = PatchEmbed(self.patch_size, cfg.embed_dim)
        grid = cfg.spec_size // self.patch_size
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(cfg.depths))]
        self.layers = nn.ModuleList(
            Stage(cfg.embed_dim * 2**i, (grid // 2**i, grid // 2**i), depth, cfg.num_heads[i], cfg.window_size,
                  rates[sum(cfg.depths[:i]):sum(cfg.depths[: i + 1])], merge=i < len(cfg.depths) - 1)
            for i, depth in enumerate(cfg.depths))
        self.num_features = cfg.out_dim
        self.norm = nn.LayerNorm(self.num_features)
        grid_freq = cfg.spec_size // 2 ** (len(cfg.depths) - 1) // self.patch_size // self.freq_ratio
        self.tscam_conv = nn.Conv2d(self.num_features, cfg.class_num, kernel_size=(grid_freq, 3), padding=(0, 1))
        self.head = nn.Linear(cfg.class_num, cfg.class_num)
        self.apply(_init_weights)

    def reshape_wav2img(self, x: torch.Tensor) -> torch.Tensor:
        """Fold a log-mel (B, 1, frames, mels) into the square image (B, 1, S, S): four time
        quarters side by side along the mel axis. Fewer than S * freq_ratio frames are first
        stretched to that many (bicubic), as laion-clap does for CLAP's 1001-frame clips."""
        frames = self.spec_size * self.freq_ratio
        if x.shape[2] < frames:
            x = F.interpolate(x, (frames, x.shape[3]), mode="bicubic", align_corners=True)
        x = x.permute(0, 1, 3, 2).contiguous()
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2], self.freq_ratio, x.shape[3] // self.freq_ratio)
        x = x.permute(0, 1, 3, 2, 4).contiguous()
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])

    def normalised_log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """``bn0`` over the mel axis of a log-mel (B, 1, frames, mels)."""
        return self.bn0(power.transpose(1, 3)).transpose(1, 3)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The separation encoder's features of a log-mel image (B, 1, S, S): the patch
        embedding's tokens and each stage's output, shallow first (5 tensors)."""
        x = self.patch_embed(image)
        out = [x]
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
            out.append(x)
        return out

    def clip_embedding(self, wave48: torch.Tensor) -> torch.Tensor:
        """CLAP's clip embedding (B, num_features) of 10 s clips at 48 kHz (B, 480000)."""
        x = self.normalised_log_mel(self.logmel_extractor(self.spectrogram_extractor(wave48)))
        x = self.patch_embed(self.reshape_wav2img(x))
        for stage in self.layers:
            for block in stage.blocks:
                x = block.forward_exact(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        x = self.norm(x)
        b, _, c = x.shape
        side = self.spec_size // self.patch_size // 2 ** (len(self.layers) - 1)
        x = x.permute(0, 2, 1).contiguous().reshape(b, c, side, side)
        group = side // self.freq_ratio
        x = x.reshape(b, c, side // group, group, side).permute(0, 1, 3, 2, 4).contiguous().reshape(b, c, group, -1)
        return F.adaptive_avg_pool1d(torch.flatten(x, 2), 1).flatten(1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        truncated_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
