"""Reading the released CLAP and CLAPSep checkpoints into complete, checked state dicts.

Accepted inputs (see the reference doc):

* CLAP: ``{"state_dict": {"module.text_branch.*", "module.audio_branch.*", ...}}``.
* CLAPSep, any of three layouts, each as a plain dict or wrapped in ``{"state_dict": ...}``,
  with or without ``module.`` prefixes:
  1. what training changed, as the official ``on_save_checkpoint`` filter keeps it: every key of
     the whole training module containing ``lora``, ``attn.qkv.bias``, ``attn.proj.bias`` or
     ``decoder_model``. The substring rule also keeps the frozen query encoder's attention
     biases (``clap_model.model.audio_branch.*.attn.{qkv,proj}.bias``). The other separation
     encoder weights come from the CLAP checkpoint's audio branch;
  2. every ``audio_branch.*`` and ``decoder_model.*`` key;
  3. the whole training module: ``clap_model.model.*``, ``audio_branch.*``, ``decoder_model.*``,
     ``stft.*``, ``istft.*``.

Query-encoder tensors a CLAPSep checkpoint carries (``clap_model.model.*``) replace the CLAP
checkpoint's, as the released Space's ``load_state_dict(..., strict=False)`` onto a module
holding the loaded CLAP model does.

Every result is checked against the module it will load into: a missing, unexpected or
misshapen tensor is an error that names it, never a silent non-strict load.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clapsep_cli.errors import CheckpointError
from clapsep_cli.network.architecture import ModelConfig
from clapsep_cli.network.lora import LORA_A, lora_layers, merge_lora

# Buffers that every build computes identically; a checkpoint may omit them.
DERIVED_BUFFERS = (".relative_position_index", ".attn_mask", ".num_batches_tracked")
# Encoder front-end weights that are fixed at construction (DFT matrix); the inference path
# uses an FFT instead, so a checkpoint must hold exactly these values.
FIXED_DFT = (".spectrogram_extractor.stft.conv_real.weight", ".spectrogram_extractor.stft.conv_imag.weight")
# CLAP parts inference does not use.
CLAP_UNUSED = ("text_transform.", "audio_transform.", "logit_scale_a", "logit_scale_t",
               "text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")
# The training module's copy of the CLAP model (the query encoder), and its STFT pair.
QUERY_PREFIX = "clap_model.model."
LIGHTNING_OTHER = ("clap_model.", "stft.", "istft.")
# The official on_save_checkpoint filter keeps every key containing one of these.
SAVED_SUBSTRINGS = ("lora", "attn.qkv.bias", "attn.proj.bias", "decoder_model")
LORA_TARGETS = (".attn.qkv", ".attn.proj")


def read(path: Path, trust_pickle: bool = False) -> dict:
    """Load a checkpoint file onto the CPU.

    Only tensors and plain containers are unpickled unless ``trust_pickle`` is set, since a
    pickle can run code.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises many types (some with cryptic texts) for a corrupt file
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err) and not trust_pickle:
            raise CheckpointError(
                f"{path}: holds pickled Python objects besides tensors; if you trust the file, "
                "run again with {setting}", setting="trust_pickle") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a checkpoint)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def _tensors(data: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown


def fit_to_module(state: dict[str, torch.Tensor], module: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """Return ``state`` completed and checked against ``module``'s state dict.

    Derived buffers absent from ``state`` are taken from ``module``; anything else missing,
    any unexpected key and any shape mismatch raises :class:`CheckpointError`.
    """
    reference = module.state_dict()
    missing = [k for k in reference if k not in state and not k.endswith(DERIVED_BUFFERS)]
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} weights missing: {_names(missing)}")
    unexpected = [k for k in state if k not in reference]
    if unexpected:
        raise CheckpointError(f"{what}: {len(unexpected)} unexpected tensors: {_names(unexpected)}")
    out = {}
    for key, ref in reference.items():
        value = state.get(key)
        if value is None:
            out[key] = ref.clone()
            continue
        if value.shape != ref.shape:
            raise CheckpointError(
                f"{what}: {key} has shape {list(value.shape)}, the model needs {list(ref.shape)}")
        out[key] = value.to(ref.dtype).contiguous()
    return out


def clap_state(data: dict, source: str) -> dict[str, torch.Tensor]:
    """The CLAP checkpoint's model tensors without the ``module.`` prefix and unused parts."""
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: no state dict found")
    state = _strip(_tensors(state), "module.")
    if not any(k.startswith("text_branch.") for k in state) or not any(k.startswith("audio_branch.") for k in state):
        raise CheckpointError(f"{source}: not a CLAP checkpoint (no text_branch/audio_branch weights)")
    return {k: v for k, v in state.items() if not k.startswith(CLAP_UNUSED)}


def split_clap(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(text encoder part, audio encoder part) of a CLAP state dict; the rest is unexpected."""
    text = {k: v for k, v in state.items() if k.startswith(("text_branch.", "text_projection."))}
    audio = {k: v for k, v in state.items() if k.startswith(("audio_branch.", "audio_projection."))}
    rest = sorted(set(state) - set(text) - set(audio))
    if rest:
        raise CheckpointError(f"CLAP checkpoint: {len(rest)} unexpected tensors: {_names(rest)}")
    return text, audio


def _unwrapped(data: dict) -> dict[str, torch.Tensor]:
    """The tensors of a plain or ``{"state_dict": ...}``-wrapped checkpoint, ``module.`` prefixes removed."""
    state = data["state_dict"] if isinstance(data.get("state_dict"), dict) else data
    return {k.removeprefix("module."): v for k, v in _tensors(state).items()}


def detect_layout(data: dict) -> int:
    """Which of the three released CLAPSep layouts ``data`` is (1, 2 or 3)."""
    keys = list(_unwrapped(data))
    if not any(k.startswith("decoder_model.") for k in keys):
        raise CheckpointError("not a CLAPSep checkpoint (no decoder_model.* weights)")
    if all(any(part in k for part in SAVED_SUBSTRINGS) for k in keys):
        return 1
    return 3 if any(k.startswith(LIGHTNING_OTHER) for k in keys) else 2


@dataclass
class SeparatorWeights:
    """What a CLAPSep checkpoint holds: the complete separator and the query-encoder tensors it carries."""

    state: dict[str, torch.Tensor]
    layout: int
    query: dict[str, torch.Tensor]  # CLAP model keys (``audio_branch.*``, ...), without ``clap_model.model.``


def separator_state(data: dict, clap_audio_branch: dict[str, torch.Tensor], cfg: ModelConfig,
                    reference: nn.Module, source: str) -> SeparatorWeights:
    """Complete separator weights (LoRA merged) from a CLAPSep checkpoint, and its query-encoder tensors.

    ``clap_audio_branch`` is the CLAP checkpoint's ``audio_branch.*`` (without prefix), which
    layout 1 builds on. ``reference`` is a freshly built ``Separator`` of ``cfg``.
    """
    try:
        layout = detect_layout(data)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    state = _unwrapped(data)
    query = {k[len(QUERY_PREFIX):]: v for k, v in state.items() if k.startswith(QUERY_PREFIX)}
    query = {k: v for k, v in query.items() if not k.startswith(CLAP_UNUSED)}
    state = {k: v for k, v in state.items() if not k.startswith(LIGHTNING_OTHER)}
    if layout == 1:
        base = {"audio_branch." + k: v for k, v in clap_audio_branch.items()}
        state = {**base, **state}
    state = _merged(state, cfg, reference, source)
    _check_fixed_dft(state, reference, source)
    return SeparatorWeights(fit_to_module(state, reference, f"CLAPSep checkpoint {source}"), layout, query)


def apply_query_tensors(parts: dict[str, dict[str, torch.Tensor]], query: dict[str, torch.Tensor],
                        source: str) -> dict[str, object]:
    """Overwrite the CLAP query-encoder ``parts`` ("text", "audio") with a CLAPSep checkpoint's tensors.

    Returns what was found, for the manifest: how many tensors, how many differ from the CLAP
    checkpoint's and by how much at most. A tensor the query encoders lack is an error naming it.
    """
    differing, largest = 0, 0.0
    for key, value in sorted(query.items()):
        part = next((p for p in parts.values() if key in p), None)
        if part is None:
            raise CheckpointError(f"CLAPSep checkpoint {source}: unexpected tensor {QUERY_PREFIX}{key}")
        if value.shape != part[key].shape:
            raise CheckpointError(f"CLAPSep checkpoint {source}: {QUERY_PREFIX}{key} has shape "
                                  f"{list(value.shape)}, the model needs {list(part[key].shape)}")
        difference = float((value.double() - part[key].double()).abs().max()) if value.numel() else 0.0
        differing += difference > 0
        largest = max(largest, difference)
        part[key] = value.to(part[key].dtype).contiguous()
    return {"tensors": len(query), "differ_from_clap": differing, "max_abs_difference": largest}


def _merged(state: dict[str, torch.Tensor], cfg: ModelConfig, reference: nn.Module,
            source: str) -> dict[str, torch.Tensor]:
    targets = sorted(k[: -len(".weight")] for k in reference.state_dict()
                     if k.startswith("audio_branch.") and k.endswith(tuple(t + ".weight" for t in LORA_TARGETS)))
    present = lora_layers(state)
    if not present:
        return state  # already merged (or trained without LoRA)
    absent = sorted(set(targets) - set(present))
    if absent:
        raise CheckpointError(f"CLAPSep checkpoint {source}: LoRA weights missing for {len(absent)} layers: "
                              f"{_names([a + LORA_A for a in absent])}")
    ranks = {state[layer + LORA_A].shape[0] for layer in present}
    if ranks != {cfg.lora_rank}:
        raise CheckpointError(f"CLAPSep checkpoint {source}: LoRA rank {sorted(ranks)}, expected {cfg.lora_rank}")
    try:
        return merge_lora(state, cfg.lora_alpha / cfg.lora_rank)
    except KeyError as err:
        raise CheckpointError(f"CLAPSep checkpoint {source}: incomplete LoRA layer, {err.args[0]} missing") from None


def _check_fixed_dft(state: dict[str, torch.Tensor], reference: nn.Module, source: str) -> None:
    ref = reference.state_dict()
    for key in ref:
        if key.endswith(FIXED_DFT) and key in state:
            if state[key].shape != ref[key].shape or not torch.allclose(state[key].float(), ref[key], atol=1e-5):
                raise CheckpointError(
                    f"CLAPSep checkpoint {source}: {key} differs from the standard DFT the model was built with")
