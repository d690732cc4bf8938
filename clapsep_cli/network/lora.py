"""LoRA deltas of the separation encoder, merged into their base weights for inference.

loralib semantics: a LoRA ``Linear`` computes ``x W^T + b + (x A^T B^T) * alpha / r`` with
``A`` (r x in) and ``B`` (out x r); folding the delta into ``W`` gives the same layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clapsep_cli.network.swin import WindowAttention

LORA_A, LORA_B = ".lora_A", ".lora_B"


def lora_layers(state: dict[str, torch.Tensor]) -> list[str]:
    """Names (without suffix) of the layers that carry a LoRA pair."""
    return sorted(k[: -len(LORA_A)] for k in state if k.endswith(LORA_A))


def merge_lora(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Return ``state`` with every ``W`` replaced by ``W + B @ A * scaling`` and LoRA keys dropped.

    Raises ``KeyError`` naming the first layer whose pair or base weight is incomplete.
    """
    merged = {k: v for k, v in state.items() if not (k.endswith(LORA_A) or k.endswith(LORA_B))}
    for layer in lora_layers(state):
        for part in (LORA_B, ".weight"):
            if layer + part not in state:
                raise KeyError(layer + part)
        a, b, w = state[layer + LORA_A], state[layer + LORA_B], state[layer + ".weight"]
        delta = (b.double() @ a.double()) * scaling
        merged[layer + ".weight"] = (w.double() + delta).to(w.dtype)
    orphans = [k for k in state if k.endswith(LORA_B) and k[: -len(LORA_B)] + LORA_A not in state]
    if orphans:
        raise KeyError(orphans[0][: -len(LORA_B)] + LORA_A)
    return merged


class LoRALinear(nn.Module):
    """A ``Linear`` with a trainable low-rank delta, unmerged (for fine-tuning).

    Parameter names match the released checkpoint: ``weight``, ``bias``, ``lora_A``, ``lora_B``.
    ``lora_B`` starts at zero, so wrapping leaves the layer's output unchanged.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None,
                        device=self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scaling)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def attention_layers(encoder: nn.Module) -> list[tuple[nn.Module, str]]:
    """(window-attention module, attribute) for every qkv/proj projection of a Swin encoder."""
    return [(m, attr) for m in encoder.modules() if isinstance(m, WindowAttention) for attr in ("qkv", "proj")]


def attach(encoder: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap the encoder's attention projections in :class:`LoRALinear`; returns what to train
    (the LoRA pairs and those layers' biases, as the official recipe does)."""
    trainable = []
    for module, attr in attention_layers(encoder):
        layer = getattr(module, attr)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, rank, alpha)
            setattr(module, attr, layer)
        trainable += [layer.lora_A, layer.lora_B] + ([layer.bias] if layer.bias is not None else [])
    return trainable


def detach_merged(encoder: nn.Module) -> None:
    """Replace every :class:`LoRALinear` by a plain ``Linear`` with the delta merged."""
    for module, attr in attention_layers(encoder):
        layer = getattr(module, attr)
        if isinstance(layer, LoRALinear):
            setattr(module, attr, layer.merged())
