"""Training: the recipe learns, checkpoints resume, the result is a usable store model, torchrun works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from clapsep_cli.cli import main
from clapsep_cli.network import lora
from clapsep_cli.network.architecture import TINY
from clapsep_cli.training.trainer import Trainer, TrainSettings, from_scratch
from tests.helpers import Artefacts, write_audio


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = ["file_name,caption"]
    t = np.arange(3 * 32000) / 32000
    for i in range(8):
        if i % 2:
            x, caption = 0.3 * np.sin(2 * np.pi * (500 + 100 * i) * t), "a high beep"
        else:
            x, caption = 0.2 * rng.standard_normal(len(t)), "noise"
        write_audio(root / f"clip {i}.wav", x.astype(np.float32)[:, None], 32000)
        rows.append(f"clip {i}.wav,{caption}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root, root / "captions.csv"


def test_lora_wrapping_starts_as_the_base_layer_and_merges_back() -> None:
    torch.manual_seed(0)
    from clapsep_cli.network.htsat import HTSAT

    encoder = HTSAT(TINY.htsat).eval()
    x = torch.randn(1, 480000) * 0.1
    before = encoder.clip_embedding(x)
    params = lora.attach(encoder, rank=4, alpha=1.0)
    assert torch.allclose(encoder.clip_embedding(x), before, atol=1e-6)  # B = 0 at the start
    with torch.no_grad():
        for p in params:
            if p.dim() == 2 and p.shape[1] == 4:
                p.normal_(std=0.1)  # lora_B
    wrapped = encoder.clip_embedding(x)
    lora.detach_merged(encoder)
    assert not any(isinstance(m, lora.LoRALinear) for m in encoder.modules())
    assert torch.allclose(encoder.clip_embedding(x), wrapped, atol=1e-5)
    assert not torch.allclose(wrapped, before, atol=1e-4)


@pytest.mark.slow
def test_loss_goes_down_on_repeated_batches(dataset: tuple[Path, Path], tmp_path: Path,
                                            tiny_files: Artefacts) -> None:
    data, captions = dataset
    settings = TrainSettings(data_dir=data, captions=captions, out_name="x", checkpoint_dir=tmp_path,
                                   batch_size=4, lr=3e-3, val_fraction=0.25, seed=1)
    trainer = Trainer(settings, TINY, *from_scratch(TINY, 0), tiny_files.tokenizer,
                            torch.device("cpu"), {}, log=lambda _m: None)
    batch = next(iter(trainer.train_loader()))
    losses = [trainer.train_step(batch) for _ in range(12)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses


@pytest.mark.slow
def test_train_save_load_extract_round_trip_and_resume(dataset: tuple[Path, Path], tiny_files: Artefacts,
                                                       empty_home: Path, tmp_path: Path) -> None:
    data, captions = dataset
    args = ["train", data, "--captions", captions, "--name", "mine", "--architecture", "tiny", "--tokenizer",
            tiny_files.tokenizer, "--steps-per-epoch", "2", "--batch-size", "2", "--device", "cpu", "--json"]
    first = run(*args, "--epochs", "1")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["model"] == "mine" and len(report["history"]) == 1
    checkpoints = empty_home / "training" / "mine"
    assert (checkpoints / "last.pt").is_file() and (checkpoints / "best.pt").is_file()
    resumed = run(*args, "--epochs", "2", "--resume", "--overwrite")
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in json.loads(resumed.stdout)["history"]] == [2]
    listed = json.loads(run("models", "list", "--json").stdout)["models"]
    assert [m["name"] for m in listed] == ["mine"]
    out = run("extract", "a high beep", data / "clip 1.wav", "--model", "mine", "-o", tmp_path / "beep.wav", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["results"][0]["frames"] == 3 * 32000


@pytest.mark.slow
def test_torchrun_two_processes(dataset: tuple[Path, Path], tiny_files: Artefacts, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    data, captions = dataset
    env = {**os.environ, "CLAPSEP_HOME": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "clapsep_cli", "train", str(data), "--captions",
         str(captions), "--name", "ddp", "--architecture", "tiny", "--tokenizer", str(tiny_files.tokenizer),
         "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2", "--device", "cpu", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["model"] == "ddp"  # only rank 0 reports and writes the model
    assert (tmp_path / "store" / "models" / "ddp" / "separator.safetensors").is_file()
