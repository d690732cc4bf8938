"""Metrics against torchmetrics (an independent implementation) and their defining properties."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    scale_invariant_signal_noise_ratio,
    signal_distortion_ratio,
    signal_noise_ratio,
)

from clapsep_cli.training import metrics


@pytest.fixture
def signals() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 8000, generator=gen)
    estimate = target * 0.7 + 0.3 * torch.randn(4, 8000, generator=gen)
    estimate[1] = torch.roll(target[1], 3) + 0.1 * torch.randn(8000, generator=gen)  # filtered-ish
    return estimate.double(), target.double()


def test_snr_and_si_metrics_match_torchmetrics(signals: tuple[torch.Tensor, torch.Tensor]) -> None:
    est, tgt = signals
    assert torch.allclose(metrics.snr(est, tgt), signal_noise_ratio(est, tgt), atol=1e-6)
    assert torch.allclose(metrics.si_sdr(est, tgt), scale_invariant_signal_distortion_ratio(est, tgt), atol=1e-6)
    assert torch.allclose(metrics.si_snr(est, tgt), scale_invariant_signal_noise_ratio(est, tgt), atol=1e-6)


def test_sdr_matches_torchmetrics(signals: tuple[torch.Tensor, torch.Tensor]) -> None:
    est, tgt = signals
    assert torch.allclose(metrics.sdr(est, tgt), signal_distortion_ratio(est, tgt), atol=1e-4)


def test_si_sdr_is_scale_invariant_and_sdr_forgives_short_filters(signals: tuple[torch.Tensor, torch.Tensor]) -> None:
    est, tgt = signals
    assert torch.allclose(metrics.si_sdr(3 * est, tgt), metrics.si_sdr(est, tgt), atol=1e-9)
    taps = torch.tensor([[[0.2, 0.3, 0.5]]], dtype=tgt.dtype)  # causal: 0.5 x[n] + 0.3 x[n-1] + 0.2 x[n-2]
    filtered = torch.nn.functional.conv1d(torch.nn.functional.pad(tgt[:, None], (2, 0)), taps)[:, 0]
    assert torch.all(metrics.sdr(filtered, tgt) > 30)  # a short causal filter of the target is not distortion
    assert torch.all(metrics.si_sdr(filtered, tgt) < 20)


def test_improvement_of_the_mixture_is_zero(signals: tuple[torch.Tensor, torch.Tensor]) -> None:
    est, tgt = signals
    for name in ("sdr", "si_sdr"):
        assert torch.equal(metrics.improvement(name, est, est, tgt), torch.zeros(4, dtype=torch.float64))
