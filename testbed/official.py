"""Test doubles of the released artefacts and of the official forward path.

* random-weight CLAP and CLAPSep checkpoints written in the official layouts;
* a small byte-level BPE tokenizer in roberta-base's file format;
* ``reference_separate``: the official signal path, unmerged, built independently of the fast
  inference code (laion-clap's HTS-AT forward with forward hooks, loralib-style LoRA layers,
  torchlibrosa's conv STFT/ISTFT and magphase). It reuses our ``Decoder`` and ``SincResampler``;
  those two are checked against outputs of the official code itself (``golden_*`` below,
  tests/test_golden.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from clapsep_cli.network.architecture import N_FFT, ModelConfig
from clapsep_cli.network.encoders import AudioEncoder, TextEncoder
from clapsep_cli.network.separation import SeparationNet


def _jitter(state: dict[str, torch.Tensor], gen: torch.Generator, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """Perturb float weights so biases, norms and BN statistics are not at their trivial init."""
    out = {}
    for k, v in state.items():
        if not v.is_floating_point() or ".stft." in k or "melW" in k or "attn_mask" in k:
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=gen) * 0.5
        else:
            out[k] = v + torch.randn(v.shape, generator=gen) * scale
    return out


def random_clap_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A CLAP model state dict with the official key set (without ``module.``)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    state = {**TextEncoder(cfg).state_dict(), **AudioEncoder(cfg).state_dict()}
    state = _jitter(state, gen)
    d = cfg.joint_embed_dim
    for side in ("text", "audio"):
        state[f"{side}_transform.sequential.0.weight"] = torch.randn(d, d, generator=gen) * 0.02
        state[f"{side}_transform.sequential.0.bias"] = torch.zeros(d)
        state[f"{side}_transform.sequential.3.weight"] = torch.randn(d, d, generator=gen) * 0.02
        state[f"{side}_transform.sequential.3.bias"] = torch.zeros(d)
    state["logit_scale_a"] = torch.tensor(2.65)
    state["logit_scale_t"] = torch.tensor(2.65)
    state["text_branch.embeddings.position_ids"] = torch.arange(cfg.text.max_position_embeddings)[None]
    return state


def write_clap(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 15, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return path


def random_clapsep_training_state(cfg: ModelConfig, clap_state: dict[str, torch.Tensor], seed: int = 1
                                  ) -> dict[str, torch.Tensor]:
    """The separator part of a trained official module: audio_branch.* (with LoRA) + decoder_model.*."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sep = SeparationNet(cfg)
    state = {}
    for k, v in clap_state.items():
        if k.startswith("audio_branch."):
            state[k] = v.clone()
    r = cfg.lora_rank
    for key, value in sep.state_dict().items():
        if key.startswith("audio_branch.") and key.endswith((".attn.qkv.weight", ".attn.proj.weight")):
            layer = key[: -len(".weight")]
            out_f, in_f = value.shape
            state[layer + ".lora_A"] = torch.randn(r, in_f, generator=gen) * 0.05
            state[layer + ".lora_B"] = torch.randn(out_f, r, generator=gen) * 0.05
            state[layer + ".bias"] = state[layer + ".bias"] + torch.randn(out_f, generator=gen) * 0.02
    decoder = {k: v for k, v in sep.state_dict().items() if k.startswith("decoder_model.")}
    state.update(_jitter(decoder, gen))
    return state


def lightning_state(training_state: dict[str, torch.Tensor], clap_state: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """The whole official training module's state dict: clap_model.model.*, audio_branch.*, decoder_model.*,
    stft.*, istft.* (the query encoder ``clap_model`` holds ``clap_state``)."""
    from torchlibrosa import ISTFT, STFT

    state = {"clap_model.model." + k: v for k, v in clap_state.items() if k != "text_branch.embeddings.position_ids"}
    state.update(training_state)
    for name, mod in (("stft", STFT(n_fft=1024, hop_length=320)), ("istft", ISTFT(n_fft=1024, hop_length=320))):
        state.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    return state


def official_save_filter(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rule of the official ``on_save_checkpoint`` (commented out at the end of model/CLAPSep.py):
    keep every key that contains 'lora', 'attn.qkv.bias', 'attn.proj.bias' or 'decoder_model'."""
    return {k: v for k, v in weights.items()
            if any(e in k for e in ["lora", "attn.qkv.bias", "attn.proj.bias", "decoder_model"])}


def write_clapsep(path: Path, training_state: dict[str, torch.Tensor], clap_state: dict[str, torch.Tensor],
                  layout: int) -> Path:
    """Save the separator weights in official layout 1 (changes only, plain), 2 (plain) or 3 (Lightning)."""
    if layout == 1:
        torch.save(official_save_filter(lightning_state(training_state, clap_state)), path)
    elif layout == 2:
        torch.save(dict(training_state), path)
    else:
        torch.save({"epoch": 149, "global_step": 231000, "state_dict": lightning_state(training_state, clap_state)},
                   path)
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars]))


TOKENIZER_WORDS = ("dog", "bark", "speech", "wind", "rain", "bird")


def write_tokenizer(directory: Path, words: tuple[str, ...] = TOKENIZER_WORDS) -> Path:
    """vocab.json + merges.txt of a small byte-level BPE vocabulary with RoBERTa's special ids."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    merges = []
    space = _bytes_to_unicode()[ord(" ")]
    for word in words:
        token = space + word[0]
        pieces = [space, word[0]]
        merges.append(" ".join(pieces))
        vocab.setdefault(token, len(vocab))
        for ch in word[1:]:
            merges.append(f"{token} {ch}")
            token += ch
            vocab.setdefault(token, len(vocab))
    vocab["<mask>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    return directory


class LoRALinear(nn.Module):
    """loralib's unmerged Linear: x W^T + b + (x A^T B^T) * alpha / r."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.lora_A, self.lora_B = nn.Parameter(a.clone()), nn.Parameter(b.clone())
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight, self.bias)
        return out + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


class OfficialPath:
    """The official test-time forward for 32 kHz segments, LoRA unmerged (built once)."""

    def __init__(self, cfg: ModelConfig, training_state: dict[str, torch.Tensor]):
        from torchlibrosa.stft import ISTFT, STFT

        from clapsep_cli.audio.dsp import SincResampler
        from clapsep_cli.network.separation import build_htsat

        encoder = build_htsat(cfg.htsat)
        base = {k[len("audio_branch."):]: v for k, v in training_state.items()
                if k.startswith("audio_branch.") and "lora" not in k}
        encoder.load_state_dict(base, strict=True)
        scaling = cfg.lora_alpha / cfg.lora_rank
        for name, module in list(encoder.named_modules()):
            if type(module).__name__ == "WindowAttention":
                for attr in ("qkv", "proj"):
                    key = f"audio_branch.{name}.{attr}"
                    setattr(module, attr, LoRALinear(getattr(module, attr), training_state[key + ".lora_A"],
                                                     training_state[key + ".lora_B"], scaling))
        decoder = SeparationNet(cfg).decoder_model
        decoder.load_state_dict({k[len("decoder_model."):]: v for k, v in training_state.items()
                                 if k.startswith("decoder_model.")}, strict=True)
        self.encoder, self.decoder = encoder.eval(), decoder.eval()
        self.features: list[torch.Tensor] = []
        encoder.spectrogram_extractor.register_forward_hook(
            lambda _m, _i, out: nn.functional.pad(out, (0, 0, 0, 1024 - out.size(2))))
        encoder.patch_embed.register_forward_hook(lambda _m, _i, out: self.features.append(out))
        for layer in encoder.layers:
            layer.register_forward_hook(lambda _m, _i, out: self.features.append(out[0]))
        self.stft = STFT(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True, pad_mode="reflect")
        self.istft = ISTFT(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
                           pad_mode="reflect")
        self.resample = SincResampler(32000, 48000)

    @torch.no_grad()
    def __call__(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        from torchlibrosa.stft import magphase

        self.features.clear()
        real, imag = self.stft(mixture)
        mag, cos, sin = magphase(real, imag)
        self.encoder({"waveform": self.resample(mixture)})
        mask = self.decoder(self.features, mag[:, 0].transpose(1, 2), condition)  # (B, bins, frames)
        mag_y = torch.relu(mag * mask.transpose(1, 2).unsqueeze(1))
        return self.istft(mag_y * cos, mag_y * sin, length=mixture.shape[-1])


def reference_separate(cfg: ModelConfig, training_state: dict[str, torch.Tensor], mixture: torch.Tensor,
                       condition: torch.Tensor) -> torch.Tensor:
    """One-off :class:`OfficialPath` call."""
    return OfficialPath(cfg, training_state)(mixture, condition)


# Golden reference of the decoder and the 32 -> 48 kHz resampler, computed by the official code
# (tests/fixtures/make_golden.py). Weights and inputs are closed-form functions of a tensor's name
# and shape, so both sides build the same values without storing them or sharing an RNG.
GOLDEN_DECODER = {"embed_dim": 16, "encoder_embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                  "window_size": 8, "d_attn": 32, "n_masker_layer": 1, "spec_factor": 8, "mlp_ratio": 4.0}
GOLDEN_COND_DIM = 64
GOLDEN_FRAMES = 4
GOLDEN_DERIVED = (".relative_position_index", ".attn_mask", ".num_batches_tracked")


def pattern(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Deterministic pseudo-random values in [-1, 1] of ``shape``, different for each ``name``."""
    import zlib

    h = zlib.crc32(name.encode())
    i = torch.arange(int(torch.tensor(shape).prod()) if shape else 1, dtype=torch.float64)
    freq = 0.5 + (h % 1009) / 1009 * 3.0
    values = torch.sin(i * freq + (h >> 10) % 628 / 100) * torch.cos(i * 0.0137 * (1 + h % 7) + 0.3)
    return values.reshape(shape).float()


def golden_state(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Values for every tensor of a decoder state dict, from names and shapes alone (derived buffers kept)."""
    out = {}
    for name, value in reference.items():
        p = pattern(name, tuple(value.shape))
        if name.endswith(GOLDEN_DERIVED) or not value.is_floating_point():
            out[name] = value.clone()
        elif name.endswith("running_var"):
            out[name] = 1 + 0.5 * p.abs()
        elif name.endswith("running_mean"):
            out[name] = 0.1 * p
        elif value.dim() >= 2:
            out[name] = p / float(value[0].numel()) ** 0.5  # fan-in scaled
        elif name.endswith(".weight"):
            out[name] = 1 + 0.1 * p
        else:
            out[name] = 0.05 * p
    return out


def golden_inputs() -> dict[str, torch.Tensor]:
    """Encoder features (patch embedding, 4 stage outputs), mixture magnitude (1, frames, 513), query, signal."""
    e = GOLDEN_DECODER["encoder_embed_dim"]
    shapes = {"patch": (1, 4096, e), "layer0": (1, 1024, 2 * e), "layer1": (1, 256, 4 * e),
              "layer2": (1, 64, 8 * e), "layer3": (1, 64, 8 * e)}
    inputs = {name: pattern(name, shape) for name, shape in shapes.items()}
    inputs["magnitude"] = 2 * pattern("magnitude", (1, GOLDEN_FRAMES, N_FFT // 2 + 1)).abs()
    inputs["cond"] = pattern("cond", (1, GOLDEN_COND_DIM))
    inputs["signal32k"] = 0.5 * pattern("signal32k", (1, 320))
    return inputs
