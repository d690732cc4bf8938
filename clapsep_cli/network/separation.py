"""The CLAPSep separation network at inference: encoder copy, decoder and STFT masking.

One call separates a batch of 10 s, 32 kHz mono segments given their conditioning vectors
(positive and negative CLAP embeddings, concatenated). Module names follow the released
checkpoint: ``audio_branch.*`` (a copy of CLAP's HTS-AT with LoRA merged) and
``decoder_model.*``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from clapsep_cli.audio import dsp
from clapsep_cli.network.architecture import ENCODER_RATE, SAMPLE_RATE, HTSATConfig, ModelConfig
from clapsep_cli.network.decoder import Decoder
from clapsep_cli.network.htsat import HTSAT


def log_mel(encoder: HTSAT, cfg: HTSATConfig, wave: torch.Tensor) -> torch.Tensor:
    """HTS-AT's front end on 48 kHz audio (B, samples) -> batch-normalised log-mel (B, 1, 1024, mels).

    Power spectrogram, time axis zero-padded to the encoder's 1024 frames (as the official
    separation model does right after the spectrogram extractor), mel projection with the
    checkpoint's filter bank, dB with floor 1e-10, then ``bn0``.
    """
    spec = dsp.stft(wave, n_fft=cfg.fft_window, hop=cfg.hop_size)
    power = (spec.real.square() + spec.imag.square()).transpose(1, 2)
    frames = encoder.spec_size * encoder.freq_ratio
    power = F.pad(power, (0, 0, 0, frames - power.shape[1]))
    return encoder.normalised_log_mel(encoder.logmel_extractor(power).unsqueeze(1))


class SeparationNet(nn.Module):
    """Query-conditioned mask estimation and masking for 10 s segments at 32 kHz."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.audio_branch = HTSAT(cfg.htsat)
        self.decoder_model = Decoder(cfg.decoder, cfg.htsat, cfg.condition_dim)
        self.to_encoder_rate = dsp.SincResampler(SAMPLE_RATE, ENCODER_RATE)

    def encode(self, wave48: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features: patch embedding output and each stage's output (5 tensors)."""
        enc = self.audio_branch
        return enc.features(enc.reshape_wav2img(log_mel(enc, self.cfg.htsat, wave48)))

    def mask(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor | None = None) -> torch.Tensor:
        """Sigmoid magnitude mask (B, 513, frames) for 32 kHz segments (B, samples)."""
        if spec is None:
            spec = dsp.stft(mixture)
        features = self.encode(self.to_encoder_rate(mixture))
        return self.decoder_model(features, spec.abs(), condition)

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Target estimate (B, samples): iSTFT of the mask times the mixture's STFT."""
        return masked_estimate(mixture, lambda spec: self.mask(mixture, condition, spec))


def apply_mask(spec: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """The estimate of ``length`` samples: iSTFT of ``spec`` (..., 513, frames) times ``mask``
    (broadcast to it, cast to its real dtype)."""
    return dsp.istft(spec * mask.to(spec.real.dtype), length)


def masked_estimate(mixture: torch.Tensor, mask_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The separation step for 32 kHz segments (B, samples): STFT, ``mask_of(spec)`` (the
    network's mask for that STFT, (B, 513, frames)), iSTFT of their product."""
    spec = dsp.stft(mixture)
    return apply_mask(spec, mask_of(spec), mixture.shape[-1])


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Run the network's arithmetic in ``dtype`` (bf16, fp16) on ``device``; fp32 runs as is."""
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield
