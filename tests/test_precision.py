"""``--precision auto``: bf16 where the hardware computes it natively, fp32 elsewhere; the run
reports which one it used, and an explicit ``fp32`` stays the exact reference."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from clapsep_cli.cli import main
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models.loaded import PRECISIONS, check_precision, cpu_computes_bf16, resolve_precision
from tests.helpers import tone, write_audio

CPU = torch.device("cpu")

# Capability maps as torch.cpu.get_capabilities() returns them on real machines (abridged).
SAPPHIRE_RAPIDS = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_tile": True,
                   "amx_bf16": True, "amx_int8": True}
ZEN4 = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False}
SKYLAKE_X = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
HASWELL = {"architecture": "x86_64", "avx2": True, "fma3": True}
GRAVITON3 = {"architecture": "aarch64", "neon": True, "bf16": True, "sve": True}


@pytest.mark.parametrize("caps,native", [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (SKYLAKE_X, False),
                                         (HASWELL, False), (GRAVITON3, False), ({}, False)])
def test_bf16_is_native_only_with_amx_or_avx512_bf16(caps: dict, native: bool) -> None:
    assert cpu_computes_bf16(caps) is native


@pytest.mark.parametrize("caps,expected", [(ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (SKYLAKE_X, "fp32"),
                                           (GRAVITON3, "fp32")])
def test_auto_on_the_cpu_follows_the_detected_features(caps: dict, expected: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision("auto", CPU) == expected
    assert check_precision("auto", CPU) == PRECISIONS[expected]


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the kernel's /proc/cpuinfo")
def test_detection_agrees_with_the_kernels_cpu_flags() -> None:
    """The kernel's view of this very machine is the independent reference."""
    flags = _cpuinfo_flags()
    assert cpu_computes_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_asks_for_native_bf16_not_emulation(native: bool, expected: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def fake_device(device: torch.device):  # type: ignore[no-untyped-def]
        asked.append(("device", str(device)))
        yield

    def fake_supported(including_emulation: bool = True) -> bool:
        asked.append(("emulation", including_emulation))
        return True if including_emulation else native  # emulation: any GPU "supports" bf16

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake_supported)
    assert resolve_precision("auto", torch.device("cuda:1")) == expected
    assert asked == [("device", "cuda:1"), ("emulation", False)]


def test_auto_elsewhere_is_fp32_and_explicit_choices_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: ZEN4)
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: HASWELL)
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for: emulated, but honoured
    with pytest.raises(ClapsepError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ClapsepError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def _extract(src: Path, out: Path, *extra: str) -> tuple[dict, np.ndarray]:
    result = CliRunner().invoke(main, ["extract", "dog barking", str(src), "--device", "cpu", "-o", str(out),
                                       "--overwrite", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output), sf.read(str(out), dtype="float32")[0]


def test_default_is_auto_and_json_reports_the_precision_used(home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_audio(tmp_path / "in.wav", tone(4.0, 32000), 32000)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: ZEN4)
    report, auto_bf16 = _extract(src, tmp_path / "a.wav")
    assert report["precision"] == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: HASWELL)
    report, auto_fp32 = _extract(src, tmp_path / "b.wav")
    assert report["precision"] == "fp32"
    report, fp32 = _extract(src, tmp_path / "c.wav", "--precision", "fp32")
    assert report["precision"] == "fp32"
    _, bf16 = _extract(src, tmp_path / "d.wav", "--precision", "bf16")
    assert np.array_equal(auto_fp32, fp32) and np.array_equal(auto_bf16, bf16)
    assert not np.array_equal(bf16, fp32)  # bf16 really ran in bf16
    assert np.max(np.abs(fp32)) > 1e-3
