"""Architecture settings of the CLAPSep network and the fixed constants of its signal path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Signal path of the released model (see the reference doc): 10 s segments at 32 kHz mono,
# STFT n_fft 1024 / hop 320 / Hann, centred, reflect padding; the encoder sees the same
# segment resampled to 48 kHz.
SAMPLE_RATE = 32000
SEGMENT_SECONDS = 10
SEGMENT_SAMPLES = SAMPLE_RATE * SEGMENT_SECONDS
N_FFT = 1024
HOP = 320
ENCODER_RATE = 48000
QUERY_SECONDS = 10


@dataclass(frozen=True)
class HTSATConfig:
    """HTS-AT audio encoder (laion-clap's ``HTSAT_Swin_Transformer``)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    spec_size: int = 256
    mel_bins: int = 64
    sample_rate: int = ENCODER_RATE
    fft_window: int = 1024
    hop_size: int = 480
    fmin: int = 50
    fmax: int = 14000
    class_num: int = 527

    @property
    def out_dim(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@dataclass(frozen=True)
class DecoderConfig:
    """The separation decoder ("HTSAT_Decoder" in the official code)."""

    embed_dim: int = 128
    encoder_embed_dim: int = 128
    depths: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    d_attn: int = 640
    n_masker_layer: int = 3
    masker_heads: int = 8
    spec_factor: int = 8
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class TextConfig:
    """RoBERTa text encoder of CLAP (roberta-base unless a test shrinks it)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    context_length: int = 77


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network before loading weights."""

    htsat: HTSATConfig = field(default_factory=HTSATConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    joint_embed_dim: int = 512
    lora_rank: int = 16
    lora_alpha: float = 1.0

    @property
    def condition_dim(self) -> int:
        """Length of the conditioning vector: positive and negative CLAP embeddings."""
        return 2 * self.joint_embed_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        def build(kind: type, values: dict[str, Any]) -> Any:
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return kind(**kwargs)

        return cls(
            htsat=build(HTSATConfig, data["htsat"]),
            decoder=build(DecoderConfig, data["decoder"]),
            text=build(TextConfig, data["text"]),
            joint_embed_dim=data["joint_embed_dim"],
            lora_rank=data["lora_rank"],
            lora_alpha=data["lora_alpha"],
        )

    def validate(self) -> None:
        """Check the couplings the signal path relies on."""
        h, d = self.htsat, self.decoder
        if d.spec_factor * h.mel_bins + 1 != N_FFT // 2 + 1:
            raise ValueError("decoder.spec_factor * mel_bins + 1 must equal the STFT bin count (513)")
        if d.encoder_embed_dim != h.embed_dim or len(d.depths) != len(h.depths):
            raise ValueError("decoder must mirror the encoder's embed_dim and stage count")
        if h.spec_size % h.mel_bins or h.fft_window != N_FFT:
            raise ValueError("unsupported HTS-AT geometry")


RELEASED = ModelConfig()

# A small network with the released geometry (same spectrogram, patch grid and stage count),
# for tests, quick training runs and benchmarks of the plumbing.
TINY = ModelConfig(
    htsat=HTSATConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)),
    decoder=DecoderConfig(embed_dim=16, encoder_embed_dim=16, d_attn=32, n_masker_layer=1),
    text=TextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    joint_embed_dim=32,
    lora_rank=4,
)

ARCHITECTURES = {"clapsep-base": RELEASED, "tiny": TINY}
