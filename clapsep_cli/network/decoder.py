"""The CLAPSep separation decoder ("HTSAT_Decoder" in the official code).

It FiLM-conditions the deepest encoder feature on the query, climbs four Swin stages with
patch expansion and FiLM-conditioned skip connections, inverts the patch embedding back to a
(time, 64) map, joins it with the batch-normalised mixture magnitude and maps every STFT frame
through a small transformer to a sigmoid mask over the 513 bins. Parameter names mirror the
released checkpoint (``decoder_model.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from clapsep_cli.network.architecture import N_FFT, DecoderConfig, HTSATConfig
from clapsep_cli.network.swin import SwinBlock, swin_blocks


class FiLM(nn.Module):
    """Feature-wise affine modulation by the query: gamma(q) * h + beta(q)."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.beta = nn.Linear(cond_dim, dim)
        self.gamma = nn.Linear(cond_dim, dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = cond.unsqueeze(1)
        return self.gamma(cond) * h + self.beta(cond)


class SkipTrans(nn.Module):
    """Project an encoder feature, FiLM it by the query, add the decoder path and normalise."""

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int):
        super().__init__()
        # Named `skip_conv` although it is a FiLM layer: the released checkpoint's keys fix the name.
        self.skip_conv = FiLM(cond_dim, out_dim)
        self.feature_proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, skip: torch.Tensor, cond: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        out = self.skip_conv(self.feature_proj(skip), cond)
        return self.norm(out if h is None else out + h)


class PatchExpand(nn.Module):
    """Inverse of Swin's patch merging: (B, H*W, dim) -> (B, 2H*2W, dim/2).

    After a linear 2x channel expansion, the four channel blocks go to the 2x2 positions patch
    merging took them from: block k to (row k % 2, column k // 2).
    """

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        x = self.expand(x)
        b, _, c = x.shape
        x = x.view(b, h, w, 2, 2, c // 4)  # (..., column offset, row offset, channels)
        x = x.permute(0, 1, 4, 2, 3, 5).reshape(b, 4 * h * w, c // 4)
        return self.norm(x)


class DecoderStage(nn.Module):
    """Optional patch expansion, then Swin blocks at the stage's resolution."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, cfg: DecoderConfig,
                 drop_path: list[float], expand: bool):
        super().__init__()
        # Named `downsample` although it upsamples: the released checkpoint's keys fix the name.
        self.downsample = PatchExpand((resolution[0] // 2, resolution[1] // 2), dim * 2) if expand else None
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, cfg.window_size, 0 if i % 2 == 0 else cfg.window_size // 2,
                      mlp_ratio=cfg.mlp_ratio, drop_path=drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return swin_blocks(self.blocks, x)


class InversePatchEmbed(nn.Module):
    """Tokens (B, grid*grid, C) -> single-channel image (B, 1, spec, spec)."""

    def __init__(self, spec_size: int, patch: int, dim: int):
        super().__init__()
        self.grid = (spec_size // patch, spec_size // patch)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.ConvTranspose2d(dim, 1, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).transpose(1, 2).unflatten(2, self.grid)
        return self.proj(x)


class Decoder(nn.Module):
    """Mask estimator conditioned on the (positive, negative) CLAP query vector."""

    patch_size = 4

    def __init__(self, cfg: DecoderConfig, htsat: HTSATConfig, cond_dim: int, drop_path_rate: float = 0.1):
        super().__init__()
        self.mel_bins = htsat.mel_bins
        self.freq_ratio = htsat.spec_size // htsat.mel_bins
        stages = len(cfg.depths)
        self.inverse_patch_embed = InversePatchEmbed(htsat.spec_size, self.patch_size, cfg.embed_dim)
        grid = htsat.spec_size // self.patch_size
        rates = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        layers, skips = [], []
        for i in range(stages):
            dim = cfg.embed_dim * 2**i
            layers.append(DecoderStage(
                dim, (grid // 2**i, grid // 2**i), cfg.depths[i], cfg.num_heads[i], cfg,
                rates[sum(cfg.depths[:i]):sum(cfg.depths[: i + 1])], expand=i < stages - 1))
            skips.append(SkipTrans(cfg.encoder_embed_dim * 2**i, dim, cond_dim))
        # Deepest stage first, as in the released checkpoint.
        self.layers = nn.ModuleList(layers[::-1])
        self.skip = nn.ModuleList(skips[::-1])
        bins = N_FFT // 2 + 1
        self.spec_norm = nn.BatchNorm2d(bins, momentum=0.01)
        masker_layer = nn.TransformerEncoderLayer(
            d_model=cfg.d_attn, nhead=cfg.masker_heads, dim_feedforward=int(cfg.d_attn * cfg.mlp_ratio),
            batch_first=True, dropout=0.0)
        self.mask_net = nn.Sequential(
            nn.Linear(self.mel_bins + bins, cfg.d_attn),
            nn.LayerNorm(cfg.d_attn),
            nn.TransformerEncoder(masker_layer, num_layers=cfg.n_masker_layer, enable_nested_tensor=False),
            nn.Linear(cfg.d_attn, bins),
        )
        top = cfg.embed_dim * 2 ** (stages - 1)
        self.film = SkipTrans(cfg.encoder_embed_dim * 2 ** (stages - 1), top, cond_dim)
        self.apply(_init_weights)

    def forward(self, features: list[torch.Tensor], magnitude: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Mask (B, bins, frames) from encoder features and the mixture magnitude (B, bins, frames).

        ``features`` are the encoder's patch embedding and its four stage outputs, shallow first.
        """
        *skips, deepest = features
        h = self.film(deepest, cond)
        for stage, skip, feature in zip(self.layers, self.skip, skips[::-1]):
            h = skip(feature, cond, stage(h))
        frames = magnitude.shape[-1]
        image = self.inverse_patch_embed(h)
        h = self._image_to_frames(image)[:, :frames]
        spec = self.spec_norm(magnitude.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        mask = self.mask_net(torch.cat([spec, h], dim=-1))
        return torch.sigmoid(mask).transpose(1, 2)

    def _image_to_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Undo HTS-AT's fold of (1024 frames, 64 mels) into a 256x256 image: -> (B, 1024, 64)."""
        b, _, height, width = x.shape
        x = x.reshape(b, self.freq_ratio, height // self.freq_ratio, width)
        return x.permute(0, 2, 1, 3).reshape(b, height // self.freq_ratio, self.freq_ratio * width).transpose(1, 2)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
