"""The stem equals the official (unmerged) forward path for the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from clapsep_cli.cli import main
from clapsep_cli.models import install
from clapsep_cli.network.architecture import RELEASED, TINY
from clapsep_cli.network.encoders import TextEncoder, Tokenizer
from clapsep_cli.network.separation import SeparationNet
from testbed import official
from tests.helpers import Artefacts, tone, write_audio

pytestmark = pytest.mark.laion


def _text_embedding(clap_state: dict[str, torch.Tensor], tokenizer_dir: Path, text: str) -> torch.Tensor:
    enc = TextEncoder(TINY)
    enc.load_state_dict({k: v for k, v in clap_state.items() if k.startswith(("text_branch.", "text_projection."))
                         and not k.endswith("position_ids")})
    with torch.no_grad():
        return enc.eval()(**Tokenizer(tokenizer_dir, 77)([text]))[0]


@pytest.fixture(scope="module")
def layout_store(tmp_path_factory: pytest.TempPathFactory, tiny_files: Artefacts) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPSEP_HOME", str(root))
    for n, path in tiny_files.layouts.items():
        install.install(f"layout{n}", tiny_files.clap, path, tiny_files.tokenizer, config=TINY)
    mp.undo()
    return root


@pytest.mark.parametrize("layout", [1, 2, 3])
@pytest.mark.parametrize("positive,negative", [("dog bark", "wind"), ("dog bark", None), ("", "wind")])
def test_stem_equals_official_forward(layout: int, positive: str, negative: str | None, layout_store: Path,
                                      tiny_files: Artefacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAPSEP_HOME", str(layout_store))
    x = tone(10.0, 32000, seed=layout)
    src = write_audio(tmp_path / "in.wav", x, 32000)
    args = ["extract", positive, str(src), "--model", f"layout{layout}", "--device", "cpu", "--precision", "fp32",
            "-o", str(tmp_path / "stem.wav")]
    if negative:
        args += ["-n", negative]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    stem, rate = sf.read(str(tmp_path / "stem.wav"), dtype="float32")
    assert rate == 32000 and stem.shape == (320000,)

    dim = TINY.joint_embed_dim
    pos = _text_embedding(tiny_files.clap_state, tiny_files.tokenizer, positive) if positive else torch.zeros(dim)
    neg = _text_embedding(tiny_files.clap_state, tiny_files.tokenizer, negative) if negative else torch.zeros(dim)
    ref = official.reference_separate(TINY, tiny_files.training_state, torch.from_numpy(x[:, 0])[None],
                                      torch.cat([pos, neg])[None])[0].numpy()
    assert np.max(np.abs(stem - ref)) < 2e-6 * max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(ref)) > 1e-3  # the comparison is not between two silences


@pytest.mark.slow
def test_full_size_released_architecture_separates_a_clip(released_files: Artefacts) -> None:
    """Random weights at the real sizes: the fast path equals the unmerged official path."""
    training = released_files.training_state
    sep = SeparationNet(RELEASED)
    sep.load_state_dict(_merged(training), strict=True)
    sep.eval()
    x = torch.from_numpy(tone(10.0, 32000)[:, 0])[None]
    cond = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1).reshape(1, 1024)
    with torch.no_grad():
        ours = sep(x, cond)
    ref = official.reference_separate(RELEASED, training, x, cond)
    assert ours.shape == (1, 320000)
    assert torch.max(torch.abs(ours - ref)) < 1e-5
    assert ref.abs().max() > 1e-3


def _merged(training: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from clapsep_cli.network.lora import merge_lora

    return merge_lora(training, RELEASED.lora_alpha / RELEASED.lora_rank)
