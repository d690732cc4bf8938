"""CLAP query encoders: text (RoBERTa) and audio (HTS-AT) to unit-norm 512-d embeddings.

The module trees mirror laion-clap's ``CLAP`` model (``text_branch``, ``text_projection``,
``audio_branch``, ``audio_projection``) so the CLAP checkpoint loads by name. RoBERTa is built
from its configuration, never downloaded: the checkpoint supplies every weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clapsep_cli.errors import ModelMissingError
from clapsep_cli.network.architecture import ENCODER_RATE, QUERY_SECONDS, ModelConfig
from clapsep_cli.network.htsat import HTSAT

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


class TextEncoder(nn.Module):
    """RoBERTa pooled output -> projection -> L2 normalisation (laion-clap's text path)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        t = cfg.text
        self.context_length = t.context_length
        roberta = RobertaConfig(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
            max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
            layer_norm_eps=t.layer_norm_eps, pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id)
        self.text_branch = RobertaModel(roberta)
        self.text_projection = _projection(t.hidden_size, cfg.joint_embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_branch(input_ids=input_ids, attention_mask=attention_mask)["pooler_output"]
        return F.normalize(self.text_projection(pooled), dim=-1)


class AudioEncoder(nn.Module):
    """HTS-AT clip embedding -> projection -> L2 normalisation (laion-clap's audio path)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.audio_branch = HTSAT(cfg.htsat)
        self.audio_projection = _projection(cfg.htsat.out_dim, cfg.joint_embed_dim)

    def forward(self, wave48: torch.Tensor) -> torch.Tensor:
        """Embeddings of 10 s clips at 48 kHz (N, 480000)."""
        return F.normalize(self.audio_projection(self.audio_branch.clip_embedding(wave48)), dim=-1)


def fit_query_clip(wave48: torch.Tensor) -> torch.Tensor:
    """Bring a mono 48 kHz clip (samples,) to the 10 s CLAP input.

    Shorter clips are repeated whole as often as they fit, then zero-padded (laion-clap's
    ``repeatpad``); longer clips are cut into 10 s windows (the last one ending at the clip's
    end), returned as rows whose embeddings the caller averages.
    """
    n = ENCODER_RATE * QUERY_SECONDS
    length = wave48.shape[-1]
    if length == 0:
        raise ValueError("empty query clip")
    if length <= n:
        repeated = wave48.repeat(n // length)
        return F.pad(repeated, (0, n - repeated.shape[-1]))[None]
    starts = list(range(0, length - n, n)) + [length - n]
    return torch.stack([wave48[s : s + n] for s in starts])


class Tokenizer:
    """The roberta-base byte-level BPE tokenizer, loaded only from local files.

    Checked on load: transformers 5 silently builds a tokenizer with 5 special tokens when the
    files are missing, mapping every text to ``<unk>``.
    """

    def __init__(self, directory: Path, context_length: int):
        missing = [f for f in TOKENIZER_FILES if not (directory / f).is_file()]
        if missing:
            raise ModelMissingError(
                f"the text tokenizer is not installed ({', '.join(missing)} missing in {directory}); "
                "install the model again with it: `clapsep models download --overwrite`, or offline "
                "`clapsep models import --clap FILE --clapsep FILE --tokenizer DIR --overwrite`")
        from transformers import RobertaTokenizer

        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        self._tok = RobertaTokenizer.from_pretrained(str(directory), local_files_only=True)
        if len(self._tok) < len(vocab):
            raise ModelMissingError(
                f"the tokenizer in {directory} loaded {len(self._tok)} tokens but vocab.json has {len(vocab)}; "
                "reinstall it with `clapsep models download`")
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self._tok(texts, padding="max_length", truncation=True, max_length=self.context_length,
                        return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
