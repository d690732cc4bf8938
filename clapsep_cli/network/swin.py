"""Inference forward of laion-clap's Swin blocks, without the per-block attention maps.

laion-clap's ``SwinTransformerBlock.forward`` also returns its attention probabilities, and
``BasicLayer`` averages them for every call; inference needs neither. These functions run the
same parameters through the same arithmetic (window partition, relative position bias,
shifted-window mask, MLP) and let PyTorch's fused attention kernel do softmax(QK^T + bias) V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_bias(block: nn.Module) -> torch.Tensor:
    """Relative position bias plus shifted-window mask: (windows or 1, heads, N, N)."""
    attn = block.attn
    n = block.window_size * block.window_size
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    bias = bias.view(n, n, -1).permute(2, 0, 1)
    if block.attn_mask is not None:
        return bias.unsqueeze(0) + block.attn_mask.unsqueeze(1).to(bias.dtype)
    return bias.unsqueeze(0)


def window_attention(block: nn.Module, windows: torch.Tensor, batch: int) -> torch.Tensor:
    """Multi-head self-attention inside each window: (batch * windows, N, C) -> same shape."""
    attn = block.attn
    bw, n, c = windows.shape
    heads = attn.num_heads
    qkv = attn.qkv(windows).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = attention_bias(block).to(q.dtype)
    if bias.shape[0] > 1:  # one mask per window: repeat it for each batch item (4-D keeps the fused kernel)
        bias = bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(bw, heads, n, n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(bw, n, c)
    return attn.proj(out)


def swin_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One ``SwinTransformerBlock`` on tokens (B, H*W, C)."""
    h, w = block.input_resolution
    b, _, c = x.shape
    ws, shift = block.window_size, block.shift_size
    y = block.norm1(x).view(b, h, w, c)
    if shift:
        y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
    y = y.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    y = window_attention(block, y, b)
    y = y.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    if shift:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    x = x + block.drop_path(y.reshape(b, h * w, c))  # drop_path: identity except when training
    return x + block.drop_path(block.mlp(block.norm2(x)))


def swin_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = swin_block(block, x)
    return x
