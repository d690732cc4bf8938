"""Separation metrics, from their definitions (as torchmetrics and BSS Eval compute them).

* SNR: ``10 log10(|s|^2 / |s - s_hat|^2)``.
* SI-SDR: the estimate's projection onto the target, ``a s`` with ``a = <s_hat, s> / |s|^2``,
  against the rest: ``10 log10(|a s|^2 / |s_hat - a s|^2)``. SI-SNR is SI-SDR of zero-mean
  signals.
* SDR (BSS Eval v4 for one source): the part of the estimate that a 512-tap filter of the
  target explains counts as target, the rest as distortion. With unit-norm signals, ``R`` the
  target's autocorrelation Toeplitz matrix and ``b`` the target-estimate cross-correlation over
  512 lags, the explained fraction is ``c = b^T R^-1 b`` and ``SDR = 10 log10(c / (1 - c))``.

All functions take (..., time) tensors and return (...) in dB, computed in float64.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def snr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    estimate, target = estimate.double(), target.double()
    noise = (target - estimate).square().sum(-1)
    return 10 * torch.log10((target.square().sum(-1) + EPS) / (noise + EPS))


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, zero_mean: bool = False) -> torch.Tensor:
    estimate, target = estimate.double(), target.double()
    if zero_mean:
        estimate = estimate - estimate.mean(-1, keepdim=True)
        target = target - target.mean(-1, keepdim=True)
    alpha = ((estimate * target).sum(-1, keepdim=True) + EPS) / (target.square().sum(-1, keepdim=True) + EPS)
    projected = alpha * target
    return 10 * torch.log10((projected.square().sum(-1) + EPS) / ((estimate - projected).square().sum(-1) + EPS))


def si_snr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return si_sdr(estimate, target, zero_mean=True)


def sdr(estimate: torch.Tensor, target: torch.Tensor, filter_length: int = 512) -> torch.Tensor:
    estimate, target = estimate.double(), target.double()
    target = target / target.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    estimate = estimate / estimate.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    n = target.shape[-1] + filter_length
    n_fft = 1 << (n - 1).bit_length()
    t_spec = torch.fft.rfft(target, n=n_fft)
    e_spec = torch.fft.rfft(estimate, n=n_fft)
    autocorr = torch.fft.irfft(t_spec.abs().square(), n=n_fft)[..., :filter_length]
    crosscorr = torch.fft.irfft(t_spec.conj() * e_spec, n=n_fft)[..., :filter_length]
    lags = torch.arange(filter_length)
    toeplitz = autocorr[..., (lags[:, None] - lags[None, :]).abs()]
    solution = torch.linalg.solve(toeplitz, crosscorr.unsqueeze(-1)).squeeze(-1)
    explained = (crosscorr * solution).sum(-1)
    return 10 * torch.log10(explained / (1 - explained))


def improvement(metric: str, estimate: torch.Tensor, mixture: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``metric(estimate, target) - metric(mixture, target)`` for "sdr" or "si_sdr"."""
    fn = {"sdr": sdr, "si_sdr": si_sdr}[metric]
    return fn(estimate, target) - fn(mixture, target)
