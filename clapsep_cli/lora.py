"""LoRA deltas of the separation encoder, merged into their base weights for inference.

loralib semantics: a LoRA ``Linear`` computes ``x W^T + b + (x A^T B^T) * alpha / r`` with
``A`` (r x in) and ``B`` (out x r); folding the delta into ``W`` gives the same layer.
"""

from __future__ import annotations

import torch

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
