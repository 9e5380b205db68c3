"""Small convolutional encoder/decoder pair shared by the VQVAE and dVAE tokenizers.

Dimension key:
    B  batch
    C  image channels (3)
    H, W  image height and width
    h, w  code grid height and width (H / f, W / f)
    c  hidden channels at one resolution
    d  output channels of the encoder / input channels of the decoder

A level halves (encoder) or doubles (decoder) the resolution, so ``f = 2 ** len(channel_mult)``.
The VQGAN tokenizer uses taming-transformers' own Encoder/Decoder instead (attention blocks, the
published key layout); these are the lighter networks a CPU can train in minutes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm as taming does, but with a group count that divides small channel counts too.
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm → SiLU → conv3×3, twice, plus a (1×1 if needed) skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def levels_for(downsample: int) -> int:
    """Number of ×2 resolution levels for a downsampling factor (a power of two ≥ 2)."""
    if downsample < 2 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two ≥ 2 (4, 8, 16...), got {downsample}")
    return int(math.log2(downsample))


class ConvEncoder(nn.Module):
    """Images ``[B, C, H, W]`` → features ``[B, d, h, w]``.

    Args:
        out_channels: ``d``, channels of the output features.
        hidden: base channel count ``c``.
        channel_mult: channel multiplier per level; its length is ``log2(f)``.
        num_res_blocks: residual blocks per level.
        in_channels: image channels.
    """

    def __init__(
        self,
        out_channels: int,
        hidden: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        # Full resolution only gets the stem: the costly convolutions run after the first halving.
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        c = hidden
        for mult in channel_mult:
            layers.append(nn.Conv2d(c, hidden * mult, 4, stride=2, padding=1))  # halve H and W
            c = hidden * mult
            layers += [ResBlock(c, c) for _ in range(num_res_blocks)]
        layers += [ResBlock(c, c), _norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Features ``[B, d, h, w]`` → images ``[B, C, H, W]`` (unbounded; callers clamp for display).

    Mirrors :class:`ConvEncoder` (levels in reverse order, nearest-neighbour ×2 upsampling + conv,
    which avoids the checkerboard artefacts of transposed convolutions); full resolution has only
    the last upsampling conv (``hidden`` channels) and the output conv.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int = 1,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        c = hidden * channel_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1), ResBlock(c, c)]
        widths = [hidden * m for m in channel_mult]
        for level in reversed(range(len(channel_mult))):
            layers += [ResBlock(c, c) for _ in range(num_res_blocks)]
            c_next = widths[level - 1] if level > 0 else hidden
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_next, 3, padding=1)]
            c = c_next
        layers += [_norm(c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))
