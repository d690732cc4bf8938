"""Swin Transformer blocks as HTS-AT (CLAP's audio encoder) and the CLAPSep decoder use them.

Module and parameter names are those of the released checkpoints (``norm1``, ``attn.qkv``,
``attn.relative_position_bias_table``, ``mlp.fc1``, ``downsample.reduction``...), and the
constructors create and initialise their parameters in the order laion-clap's do, so a seeded
random build gives the same weights.

A block has two forwards over the same parameters:

* :meth:`SwinBlock.forward`, for separation and training: PyTorch's fused attention kernel
  computes softmax(QK^T / sqrt(d) + bias) V without materialising the attention maps;
* :meth:`SwinBlock.forward_exact`, for CLAP's query embeddings: laion-clap's own order of
  operations (q scaled first, explicit softmax), so an audio query's embedding is the one
  laion-clap gives, bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The shifted-window mask's value for token pairs from different regions (laion-clap's).
_MASKED = -100.0


def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with N(0, std^2) values cut to [-2, 2], by the inverse CDF of a
    uniform draw, as laion-clap (after timm) initialises; torch's own ``trunc_normal_`` now
    rejection-samples, which draws other values from the same seed."""
    def cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        tensor.uniform_(2 * cdf(-2.0 / std) - 1, 2 * cdf(2.0 / std) - 1)
        tensor.erfinv_()
        tensor.mul_(std * math.sqrt(2.0))
        tensor.add_(0.0)  # the mean; it also turns -0.0 into 0.0, as laion-clap's does
        return tensor.clamp_(min=-2.0, max=2.0)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop the residual branch of whole samples with probability ``p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        kept = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * kept


class Mlp(nn.Module):
    """Linear -> GELU -> linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def relative_position_index(window: int) -> torch.Tensor:
    """For each pair of tokens in a ``window`` x ``window`` window, the row of the bias table
    holding their relative offset: (window^2, window^2), int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learnt relative position bias."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window = window
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        truncated_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) with N = window^2."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def qkv_heads(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (windows, heads, N, C / heads) of tokens (windows, N, C)."""
        bw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]


def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(windows, N, N): 0 between tokens of the same region of the rolled map, -100 otherwise."""
    h, w = resolution
    regions = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        regions[:, rows, cols, :] = i
    ids = window_partition(regions, window).view(-1, window * window)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, _MASKED).masked_fill(diff == 0, 0.0)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window, window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, H, W, C)."""
    b = windows.shape[0] // (h * w // window // window)
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class SwinBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each in a pre-norm residual branch, on tokens (B, H*W, C).

    Where the map is no larger than a window, the window shrinks to the map and nothing shifts.
    """

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, shift: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.input_resolution = resolution
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window_size, self.shift_size = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(resolution, window, shift) if shift else None)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, rolled tokens cut into windows: (B * windows, N, C)."""
        h, w = self.input_resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        return window_partition(y, self.window_size).view(-1, self.window_size * self.window_size, c)

    def _residuals(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Windows back into the map, unrolled, then both residual branches."""
        h, w = self.input_resolution
        b, _, c = x.shape
        y = window_reverse(attended.view(-1, self.window_size, self.window_size, c), self.window_size, h, w)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block with the fused attention kernel."""
        windows = self._windows(x)
        q, k, v = self.attn.qkv_heads(windows)
        bias = self.attn.position_bias().unsqueeze(0)
        if self.attn_mask is not None:  # one mask per window, repeated for each batch item (4-D keeps the fused kernel)
            bias = bias + self.attn_mask.unsqueeze(1).to(bias.dtype)
            bias = bias.repeat(x.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.attn.scale)
        return self._residuals(x, self.attn.proj(out.transpose(1, 2).reshape(windows.shape)))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """The block in laion-clap's order of operations (explicit softmax of the scaled scores)."""
        windows = self._windows(x)
        q, k, v = self.attn.qkv_heads(windows)
        scores = (q * self.attn.scale) @ k.transpose(-2, -1) + self.attn.position_bias().unsqueeze(0)
        if self.attn_mask is not None:
            n_windows, n = self.attn_mask.shape[:2]
            scores = scores.view(-1, n_windows, self.attn.num_heads, n, n) + self.attn_mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.attn.num_heads, n, n)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows.shape)
        return self._residuals(x, self.attn.proj(out))


class PatchMerging(nn.Module):
    """Halve the token map: each 2x2 neighbourhood's channels concatenated, normalised and
    projected to twice the width: (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def swin_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x
