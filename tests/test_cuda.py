"""The CUDA path, where a GPU is present (skipped elsewhere): the same numbers as the CPU and
the official path in fp32, bf16 chosen by ``auto``, and the engine's page-locked staging and
asynchronous copies giving the same stems as the CPU's plain path over many batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from clapsep_cli import api
from clapsep_cli.cli import main
from clapsep_cli.network.architecture import RELEASED
from clapsep_cli.network.lora import merge_lora
from clapsep_cli.network.separation import SeparationNet
from testbed import official
from tests.helpers import CLIPS, Artefacts, make_clip, stems, tone, write_audio

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _extract(src: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["extract", "dog bark", str(src), "-o", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_fp32_on_cuda_gives_the_cpus_stem_through_many_batches(home: Path, tmp_path: Path) -> None:
    """Stereo 44.1 kHz over 10 segments in batches of 2: each batch is staged in page-locked
    memory and copied asynchronously; a race there would corrupt whole segments."""
    src = write_audio(tmp_path / "in.wav", tone(85.0, 44100, channels=2), 44100)
    cpu = _extract(src, tmp_path / "cpu.wav", "--device", "cpu", "--precision", "fp32")
    gpu = _extract(src, tmp_path / "gpu.wav", "--device", "cuda", "--precision", "fp32", "--batch-size", "2")
    assert gpu["device"].startswith("cuda") and gpu["precision"] == "fp32" and cpu["device"] == "cpu"
    a, _ = sf.read(str(tmp_path / "cpu.wav"), dtype="float32")
    b, _ = sf.read(str(tmp_path / "gpu.wav"), dtype="float32")
    assert a.shape == b.shape == (85 * 44100, 2)
    assert np.max(np.abs(a)) > 1e-3
    assert np.max(np.abs(a - b)) < 1e-4 * max(1.0, float(np.max(np.abs(a))))


def test_auto_precision_on_cuda_is_bf16_and_close_to_fp32(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "in.wav", tone(25.0, 32000), 32000)
    ref = _extract(src, tmp_path / "fp32.wav", "--device", "cuda", "--precision", "fp32")
    auto = _extract(src, tmp_path / "auto.wav", "--device", "cuda")
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert ref["precision"] == "fp32" and auto["precision"] == expected
    a, _ = sf.read(str(tmp_path / "fp32.wav"), dtype="float64")
    b, _ = sf.read(str(tmp_path / "auto.wav"), dtype="float64")
    snr = 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2))
    assert snr > 25, snr


def test_array_api_on_cuda_equals_the_cpu(home: Path) -> None:
    wave = tone(23.0, 48000, channels=3)
    req = api.request("dog bark")
    on_cpu, _ = api.Separator(device="cpu", precision="fp32").separate(wave, 48000, req)
    stem, residual = api.Separator(device="cuda", precision="fp32").separate(wave, 48000, req)
    assert stem.shape == wave.shape and np.allclose(stem + residual, wave, atol=1e-6)
    assert np.max(np.abs(stem - on_cpu)) < 1e-4


@pytest.mark.slow
@pytest.mark.laion
def test_full_size_fp32_on_cuda_equals_the_official_path(released_files: Artefacts) -> None:
    """The released architecture on the GPU against the official unmerged forward on the CPU."""
    training = released_files.training_state
    sep = SeparationNet(RELEASED)
    sep.load_state_dict(merge_lora(training, RELEASED.lora_alpha / RELEASED.lora_rank), strict=True)
    sep = sep.eval().cuda()
    x = torch.from_numpy(tone(10.0, 32000)[:, 0])[None]
    cond = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1).reshape(1, 1024)
    with torch.no_grad():
        ours = sep(x.cuda(), cond.cuda()).cpu()
    ref = official.reference_separate(RELEASED, training, x, cond)
    assert ref.abs().max() > 1e-3
    assert torch.max(torch.abs(ours - ref)) < 1e-4, torch.max(torch.abs(ours - ref))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_folder_whose_files_share_batches_writes_the_stems_of_solo_runs(home: Path, tmp_path: Path,
                                                                        precision: str) -> None:
    """On CUDA the files' segments share calls of 16 rows (the last filled with silence): every
    stem must still be byte for byte what a run on its file alone writes, with the real kernels."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for seed, clip in enumerate(CLIPS):
        if clip[4] != "mp3" or shutil.which("ffmpeg"):
            make_clip(folder, *clip, seed=seed)
    settings = ["--device", "cuda", "--precision", precision, "--residual"]
    result = CliRunner().invoke(main, ["extract", "dog bark", str(folder), "--out-dir", str(tmp_path / "job"),
                                       "--json", *settings])
    assert result.exit_code == 0, result.output
    for clip in sorted(folder.iterdir()):
        alone = CliRunner().invoke(main, ["extract", "dog bark", str(clip), "--out-dir", str(tmp_path / "solo"),
                                          "--json", *settings])
        assert alone.exit_code == 0, alone.output
    solo, batched = stems(tmp_path / "solo"), stems(tmp_path / "job")
    assert len(solo) == 2 * len(list(folder.iterdir())) and batched == solo
