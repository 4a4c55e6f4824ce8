"""The U-Net denoiser shared by the diffusion and score families.

Ho et al. (2020) and seed 001 (Fig. 2): a convolutional encoder/decoder with
skip connections, residual blocks with group norm, a sinusoidal embedding of
the noise level added in every block, and self-attention at low resolution.
Down-sampling is a stride-2 convolution and up-sampling resizes to the size of
the matching skip, so any image size works (28x28 MNIST goes 28-14-7-4).

The network knows nothing about noise schedules: it maps (x, c) to a tensor
shaped like x, where c is a float per example (a time step, or log sigma);
a class-conditional U-Net also takes a class per example, embedded beside c.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a float per example (Vaswani et al.), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_module(m: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as the identity."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added in between as a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        self.norm1 = norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, head_dim: int = 32, groups: int = 8):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int | None = None, dim: int = 16,
                 dim_mults=(1, 2, 4, 8), num_res_blocks: int = 2, attn_levels: int = 2,
                 dropout: float = 0.0, groups: int = 8, num_classes: int = 0):
        """`attn_levels`: self-attention in that many of the lowest-resolution levels (and the middle).

        With `num_classes` K, a learned class embedding is added to the noise-level embedding; class K
        is "no class", the unconditional model of classifier-free guidance."""
        super().__init__()
        out_channels = out_channels or in_channels
        widths = [dim * m for m in dim_mults]
        emb_dim = 4 * dim
        self.dim, self.num_classes = dim, num_classes
        self.embed = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.init_conv = nn.Conv2d(in_channels, dim, 3, padding=1)
        n = len(widths)

        self.down = nn.ModuleList()
        skips, c = [dim], dim
        for level, w in enumerate(widths):
            attn = level >= n - attn_levels
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(c, w, emb_dim, dropout, groups),
                                                Attention(w, groups=groups) if attn else nn.Identity()]))
                c = w
                skips.append(c)
            if level < n - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)

        self.mid1 = ResBlock(c, c, emb_dim, dropout, groups)
        self.mid_attn = Attention(c, groups=groups) if attn_levels > 0 else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout, groups)

        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            attn = level >= n - attn_levels
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(c + skips.pop(), w, emb_dim, dropout, groups),
                                              Attention(w, groups=groups) if attn else nn.Identity()]))
                c = w
            if level > 0:
                self.up.append(nn.Conv2d(c, c, 3, padding=1))  # after a nearest resize to the skip's size

        self.out = nn.Sequential(norm(c, groups), nn.SiLU(), zero_module(nn.Conv2d(c, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); c: (B,) noise level (a time step or log sigma); y: (B,) classes (None: no class)."""
        emb = self.embed(timestep_embedding(c, self.dim))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(y)
        h = self.init_conv(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(h, emb))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.out(h)
