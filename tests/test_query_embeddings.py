"""Text and audio query embeddings equal laion-clap's own for the same weights (full size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clapsep_cli.models import install
from clapsep_cli.models.loaded import ClapSep
from clapsep_cli.network.architecture import RELEASED
from tests.helpers import Artefacts, tone

pytestmark = [pytest.mark.slow, pytest.mark.laion]


@pytest.fixture(scope="module")
def released_clap(released_files: Artefacts) -> tuple[Path, Path, Path]:
    return released_files.clap, released_files.layouts[1], released_files.tokenizer


@pytest.fixture(scope="module")
def laion_model(released_clap: tuple[Path, Path, Path]):  # type: ignore[no-untyped-def]
    """laion-clap's CLAP_Module with the same weights, its downloads replaced by local files."""
    clap_path, _, tok_dir = released_clap
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    import laion_clap
    import transformers
    from laion_clap.clap_module import model as clap_model_module

    roberta_base = transformers.RobertaConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)
    mp.setattr(clap_model_module.RobertaModel, "from_pretrained",
               classmethod(lambda cls, *a, **k: transformers.RobertaModel(roberta_base)))
    local_tokenizer = transformers.RobertaTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    mp.setattr(laion_clap.hook.RobertaTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: local_tokenizer))
    module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base", device="cpu")
    module.load_ckpt(str(clap_path), verbose=False)
    mp.undo()
    return module


@pytest.fixture(scope="module")
def ours(released_clap: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ClapSep:
    clap_path, sep_path, tok_dir = released_clap
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPSEP_HOME", str(tmp_path_factory.mktemp("store")))
    installed = install.install("released", clap_path, sep_path, tok_dir, config=RELEASED)
    mp.undo()
    return ClapSep(installed, torch.device("cpu"))


def test_text_embeddings_match_laion_clap(laion_model, ours: ClapSep) -> None:  # type: ignore[no-untyped-def]
    texts = ["dog bark", "speech in the rain", "a bird"]
    with torch.no_grad():
        expected = laion_model.get_text_embedding(texts, use_tensor=True)
    got = ours.embed_texts(texts)
    assert got.shape == (3, 512)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # different texts, different embeddings


@pytest.mark.parametrize("seconds", [10.0, 3.7])
def test_audio_embedding_matches_laion_clap(laion_model, ours: ClapSep, seconds: float) -> None:  # type: ignore[no-untyped-def]
    clip = torch.from_numpy(tone(seconds, 48000, seed=2)[:, 0])
    with torch.no_grad():
        expected = laion_model.get_audio_embedding_from_data(clip[None], use_tensor=True)[0]
    got = ours.embed_audio(clip)
    assert torch.allclose(got, expected, atol=1e-5)
    assert np.isclose(float(got.norm()), 1.0, atol=1e-5)
