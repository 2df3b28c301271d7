"""A time-conditioned UNet denoiser, in the shape of the DDPM paper's (Ho et al. 2020, appendix B).

Down path: per level, residual blocks at ``width * multiplier`` channels, self-attention at
the listed resolutions, then a strided convolution; a middle of residual-attention-residual;
an up path mirroring the down path, each block taking the matching skip connection.
Every residual block takes a projection of the timestep embedding between its convolutions: as a
per-channel scale and shift after its second GroupNorm (the default; Dhariwal & Nichol 2021), or as a
shift added before it (the DDPM paper's).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from aigc_kit.plugins.common import conditioned_on


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017): ``(n,) -> (n, dim)``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                                  device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class ResidualBlock(nn.Module):
    """GroupNorm, SiLU, conv; GroupNorm conditioned on the time embedding, SiLU, dropout, conv; plus the input.

    ``scale_shift``: the embedding gives each channel a scale and a shift applied after the second
    GroupNorm, h = norm(h) (1 + scale) + shift (Dhariwal & Nichol 2021, "adaptive group
    normalization"). Otherwise a shift is added before that GroupNorm, as in the DDPM paper, which
    subtracts each group's mean: with one channel per group it removes the shift entirely.
    """

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, dropout: float, groups: int,
                 scale_shift: bool = True) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_channels, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        embedding = self.time(F.silu(time))[:, :, None, None]
        if self.scale_shift:
            scale, shift = embedding.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + embedding)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(attended.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """``forward(x_t, t)`` -> a prediction of ``x_t``'s shape; ``t`` holds one integer timestep per sample.

    With ``classes``, ``forward(x_t, t, label)``: a learned class embedding is
    added to the time embedding. A label of -1 is "no class" (a learned null
    class), and in training each label becomes -1 with probability
    ``class_dropout``, so that one network is both conditional and
    unconditional, as classifier-free guidance needs (Ho & Salimans 2022).
    """

    def __init__(self, channels: int, resolution: int, width: int = 64, channel_multipliers: tuple[int, ...] = (1, 2, 2),
                 blocks_per_level: int = 2, attention_resolutions: tuple[int, ...] = (8,), attention_heads: int = 1,
                 dropout: float = 0.1, norm_groups: int = 32, classes: int = 0, class_dropout: float = 0.1,
                 scale_shift: bool = True) -> None:
        super().__init__()
        self.channels, self.resolution = channels, resolution
        time_channels = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels))
        self.classes, self.class_dropout = classes, class_dropout
        self.class_embedding = nn.Embedding(classes + 1, time_channels) if classes else None  # the last: no class
        self.input = nn.Conv2d(channels, width, 3, padding=1)

        def block(cin: int, cout: int) -> ResidualBlock:
            return ResidualBlock(cin, cout, time_channels, dropout, norm_groups, scale_shift)

        def attention(ch: int, size: int) -> nn.Module:
            return SelfAttention(ch, attention_heads, norm_groups) if size in attention_resolutions else nn.Identity()

        self.down = nn.ModuleList()
        skip_channels = [width]
        current, size = width, resolution
        for level, multiplier in enumerate(channel_multipliers):
            for _ in range(blocks_per_level):
                out = width * multiplier
                self.down.append(_Layer(block(current, out), attention(out, size)))
                current = out
                skip_channels.append(current)
            if level < len(channel_multipliers) - 1:
                self.down.append(_Layer(downsample=nn.Conv2d(current, current, 3, stride=2, padding=1)))
                size //= 2
                skip_channels.append(current)
        self.middle = nn.ModuleList([block(current, current), SelfAttention(current, attention_heads, norm_groups),
                                     block(current, current)])
        self.up = nn.ModuleList()
        for level, multiplier in reversed(list(enumerate(channel_multipliers))):
            for index in range(blocks_per_level + 1):
                out = width * multiplier
                upsample = None
                if level > 0 and index == blocks_per_level:
                    upsample = nn.Conv2d(out, out, 3, padding=1)
                self.up.append(_Layer(block(current + skip_channels.pop(), out), attention(out, size), upsample=upsample))
                current = out
            if level > 0:
                size *= 2
        self.output = nn.Sequential(nn.GroupNorm(norm_groups, current), nn.SiLU(), nn.Conv2d(current, channels, 3, padding=1))
        nn.init.zeros_(self.output[-1].weight)  # start as a denoiser predicting zero
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        time = self.time_mlp(timestep_embedding(timesteps, self.width))
        if self.class_embedding is not None:
            time = time + self.class_embedding(self._class_index(label, x))
        h = self.input(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, time)
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, time)), time)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), time)
        return self.output(h)

    def _class_index(self, label: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Each sample's row of the class embedding: its class, or the null class for -1 (and, in training, for a
        ``class_dropout`` share of the labels)."""
        label = conditioned_on(label, like)
        if self.training and self.class_dropout > 0:
            dropped = torch.rand(label.shape, device=label.device) < self.class_dropout
            label = torch.where(dropped, torch.full_like(label, -1), label)
        return torch.where(label < 0, torch.full_like(label, self.classes), label)


class _Layer(nn.Module):
    """One step of a path: a residual block and attention, or a resampling convolution."""

    def __init__(self, block: ResidualBlock | None = None, attention: nn.Module | None = None,
                 downsample: nn.Module | None = None, upsample: nn.Module | None = None) -> None:
        super().__init__()
        self.block, self.attention = block, attention
        self.downsample, self.upsample = downsample, upsample

    def forward(self, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(h)
        h = self.attention(self.block(h, time))
        if self.upsample is not None:
            h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h
