"""Test doubles of the released artefacts and of the official forward path.

* random-weight CLAP and CLAPSep checkpoints written in the official layouts;
* a small byte-level BPE tokenizer in roberta-base's file format;
* ``reference_separate``: the official signal path, unmerged, built independently of the fast
  inference code (laion-clap's own HTS-AT module and forward with forward hooks, loralib-style
  LoRA layers, torchlibrosa's conv STFT/ISTFT and magphase). It reuses our ``Decoder`` and
  ``SincResampler``; those two are checked against outputs of the official code itself
  (``golden_*`` below, tests/test_golden.py). laion-clap and torchlibrosa come with the test
  extra on Python below 3.13 (laion-clap pins numpy<2).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from clapsep_cli.network.architecture import N_FFT, HTSATConfig, ModelConfig
from clapsep_cli.network.encoders import AudioEncoder, TextEncoder
from clapsep_cli.network.htsat import dft_kernels, periodic_hann
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


class _Seeded:
    """Weights of the test fixtures' random models: built ones jittered, new ones Gaussian, from one seed."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the modules' own initialisation, before they are built

    def state(self, built: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _jitter(built, self.gen)

    def draw(self, name: str, shape: tuple[int, ...], scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * scale


class _Patterned:
    """Weights from tensors' names and shapes alone (:func:`pattern`): the same on every torch and
    Python, for the stored references of tests/test_reference.py."""

    def state(self, built: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return reference_state(built)

    def draw(self, name: str, shape: tuple[int, ...], scale: float) -> torch.Tensor:
        return pattern(name, shape) * scale


def _clap_state(cfg: ModelConfig, values: _Seeded | _Patterned) -> dict[str, torch.Tensor]:
    state = values.state({**TextEncoder(cfg).state_dict(), **AudioEncoder(cfg).state_dict()})
    d = cfg.joint_embed_dim
    for side in ("text", "audio"):
        for i in (0, 3):
            name = f"{side}_transform.sequential.{i}"
            state[name + ".weight"] = values.draw(name + ".weight", (d, d), 0.02)
            state[name + ".bias"] = torch.zeros(d)
    state["logit_scale_a"] = torch.tensor(2.65)
    state["logit_scale_t"] = torch.tensor(2.65)
    state["text_branch.embeddings.position_ids"] = torch.arange(cfg.text.max_position_embeddings)[None]
    return state


def random_clap_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A CLAP model state dict with the official key set (without ``module.``)."""
    return _clap_state(cfg, _Seeded(seed))


def pattern_clap_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """:func:`random_clap_state` with values from names and shapes alone."""
    return _clap_state(cfg, _Patterned())


def write_clap(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 15, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return path


def _clapsep_training_state(cfg: ModelConfig, clap_state: dict[str, torch.Tensor], values: _Seeded | _Patterned
                            ) -> dict[str, torch.Tensor]:
    sep = SeparationNet(cfg)
    state = {k: v.clone() for k, v in clap_state.items() if k.startswith("audio_branch.")}
    r = cfg.lora_rank
    for key, value in sep.state_dict().items():
        if key.startswith("audio_branch.") and key.endswith((".attn.qkv.weight", ".attn.proj.weight")):
            layer = key[: -len(".weight")]
            out_f, in_f = value.shape
            state[layer + ".lora_A"] = values.draw(layer + ".lora_A", (r, in_f), 0.05)
            state[layer + ".lora_B"] = values.draw(layer + ".lora_B", (out_f, r), 0.05)
            state[layer + ".bias"] = state[layer + ".bias"] + values.draw(layer + ".bias", (out_f,), 0.02)
    state.update(values.state({k: v for k, v in sep.state_dict().items() if k.startswith("decoder_model.")}))
    return state


def random_clapsep_training_state(cfg: ModelConfig, clap_state: dict[str, torch.Tensor], seed: int = 1
                                  ) -> dict[str, torch.Tensor]:
    """The separator part of a trained official module: audio_branch.* (with LoRA) + decoder_model.*."""
    return _clapsep_training_state(cfg, clap_state, _Seeded(seed))


def pattern_clapsep_training_state(cfg: ModelConfig, clap_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`random_clapsep_training_state` with values from names and shapes alone."""
    return _clapsep_training_state(cfg, clap_state, _Patterned())


def lightning_state(training_state: dict[str, torch.Tensor], clap_state: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """The whole official training module's state dict: clap_model.model.*, audio_branch.*, decoder_model.*,
    stft.*, istft.* (the query encoder ``clap_model`` holds ``clap_state``)."""
    state = {"clap_model.model." + k: v for k, v in clap_state.items() if k != "text_branch.embeddings.position_ids"}
    state.update(training_state)
    state.update(_stft_tables())
    return state


@functools.cache
def _stft_tables() -> dict[str, torch.Tensor]:
    """The official module's ``stft.*`` and ``istft.*`` tensors (torchlibrosa's conv STFT and ISTFT at
    n_fft 1024): windowed DFT rows, the inverse DFT over n_fft times the window, the squared window.
    clapsep's loader ignores these keys; they make the layout whole."""
    real, imag = dft_kernels(N_FFT)
    window = periodic_hann(N_FFT)
    x, y = np.meshgrid(np.arange(N_FFT), np.arange(N_FFT))
    inverse = (np.power(np.exp(2j * np.pi / N_FFT), x * y) / N_FFT * window[None, :]).T
    return {"stft.conv_real.weight": real, "stft.conv_imag.weight": imag,
            "istft.ola_window": torch.tensor(window**2, dtype=torch.float32),
            "istft.conv_real.weight": torch.tensor(np.real(inverse), dtype=torch.float32)[:, :, None],
            "istft.conv_imag.weight": torch.tensor(np.imag(inverse), dtype=torch.float32)[:, :, None]}


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


def laion_htsat(cfg: HTSATConfig) -> nn.Module:
    """laion-clap's own ``HTSAT_Swin_Transformer`` with the given geometry (random weights)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # importing laion_clap asks the hub for three tokenizers
    from laion_clap.clap_module.htsat import HTSAT_Swin_Transformer

    audio_cfg = SimpleNamespace(mel_bins=cfg.mel_bins, window_size=cfg.fft_window, hop_size=cfg.hop_size,
                                sample_rate=cfg.sample_rate, fmin=cfg.fmin, fmax=cfg.fmax)
    return HTSAT_Swin_Transformer(
        spec_size=cfg.spec_size, patch_size=4, patch_stride=(4, 4), num_classes=cfg.class_num,
        embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
        window_size=cfg.window_size, config=audio_cfg)


class OfficialPath:
    """The official test-time forward for 32 kHz segments, LoRA unmerged (built once)."""

    def __init__(self, cfg: ModelConfig, training_state: dict[str, torch.Tensor]):
        from torchlibrosa.stft import ISTFT, STFT

        from clapsep_cli.audio.dsp import SincResampler

        encoder = laion_htsat(cfg.htsat)
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


# Tensors a build computes rather than learns: the front end's DFT and mel tables.
FRONT_END_TABLES = (".stft.conv_real.weight", ".stft.conv_imag.weight", ".melW")


def reference_state(built: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`golden_state` for a whole model: pattern values, the built front-end tables kept."""
    out = golden_state(built)
    out.update({k: v.clone() for k, v in built.items() if k.endswith(FRONT_END_TABLES)})
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
