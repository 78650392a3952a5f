"""Multi-scale patch discriminator of face-vid2vid (method.md §4.1; hinge GAN + feature matching, losses elsewhere).

One Pix2Pix-style patch discriminator per scale (face-vid2vid 256 config: scale 1 only): ``num_blocks`` blocks of
4x4 conv (no padding, spectral norm) -> InstanceNorm (all but the first) -> LeakyReLU 0.2 -> 2x2 average pool (all
but the last), then a 1x1 conv to one logit per patch. For a scale s < 1 the image is first downsampled with the
anti-aliased interpolation face-vid2vid uses for its image pyramid. No keypoint conditioning.
Module names follow face-vid2vid (``discs.<scale>.down_blocks.i.conv``, ``discs.<scale>.conv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer.blocks import AntiAliasInterpolation2d


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale discriminator (defaults: face-vid2vid 256 config).

    Attributes:
        scales: image scales, each 1/n for an integer n ([1] at full size).
        block_expansion: channels of the first block; doubled per block up to max_features.
        max_features: channel cap.
        num_blocks: conv blocks per scale (the input side must be >= ~10 * 2^(num_blocks - 2) pixels).
        spectral_norm: spectral norm on every conv (face-vid2vid ``sn: True``).
    """

    scales: tuple[float, ...] = (1.0,)
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    spectral_norm: bool = True

    def validate(self) -> None:
        if not self.scales:
            raise ValueError("discriminator.scales must not be empty")
        for s in self.scales:
            if not 0 < s <= 1 or abs(1 / s - round(1 / s)) > 1e-6:
                raise ValueError(f"discriminator.scales: each scale must be 1/n for an integer n, got {s}")
        for name in ("block_expansion", "max_features", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"discriminator.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DiscriminatorOutput:
    """One scale's result: ``features`` (each block's output, for feature matching) and ``prediction``
    (B, 1, h, w) patch logits."""

    features: list[torch.Tensor] = field(default_factory=list)
    prediction: torch.Tensor | None = None


def scale_key(scale: float) -> str:
    """ModuleDict key of a scale: 1.0 -> '1', 0.5 -> '0-5' (face-vid2vid's naming)."""
    return f"{scale:g}".replace(".", "-")


class DiscriminatorBlock(nn.Module):
    """4x4 conv (no padding) -> optional InstanceNorm -> LeakyReLU 0.2 -> optional 2x2 average pool."""

    def __init__(self, cin: int, cout: int, norm: bool, pool: bool, spectral_norm: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel_size=4)
        self.conv = nn.utils.spectral_norm(conv) if spectral_norm else conv
        self.norm = nn.InstanceNorm2d(cout, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, Cout, H-3, W-3)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out  # (B, Cout, (H-3)/2, (W-3)/2)


class PatchDiscriminator(nn.Module):
    """Pix2Pix-like patch discriminator for one scale."""

    def __init__(self, cfg: DiscriminatorConfig, image_channel: int = 3) -> None:
        super().__init__()
        be, mf, n = cfg.block_expansion, cfg.max_features, cfg.num_blocks
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(image_channel if i == 0 else min(mf, be * 2**i), min(mf, be * 2 ** (i + 1)),
                               norm=i != 0, pool=i != n - 1, spectral_norm=cfg.spectral_norm)
            for i in range(n))
        conv = nn.Conv2d(min(mf, be * 2**n), 1, kernel_size=1)
        self.conv = nn.utils.spectral_norm(conv) if cfg.spectral_norm else conv

    def forward(self, image: torch.Tensor) -> DiscriminatorOutput:
        features = []
        out = image
        for block in self.down_blocks:
            out = block(out)  # (B, C_i, h_i, w_i)
            features.append(out)
        return DiscriminatorOutput(features=features, prediction=self.conv(out))  # (B, 1, h, w)


class MultiScaleDiscriminator(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> one DiscriminatorOutput per configured scale (in config order)."""

    def __init__(self, cfg: DiscriminatorConfig, image_channel: int = 3) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.image_channel = image_channel
        self.discs = nn.ModuleDict({scale_key(s): PatchDiscriminator(cfg, image_channel) for s in cfg.scales})
        self.down = nn.ModuleDict({scale_key(s): AntiAliasInterpolation2d(image_channel, s)
                                   for s in cfg.scales if s != 1})

    def forward(self, image: torch.Tensor) -> list[DiscriminatorOutput]:
        if image.dim() != 4 or image.shape[1] != self.image_channel:
            raise ValueError(f"MultiScaleDiscriminator: expected (B, {self.image_channel}, H, W), "
                             f"got {tuple(image.shape)}")
        outs = []
        for s in self.cfg.scales:
            key = scale_key(s)
            x = self.down[key](image) if key in self.down else image  # (B, 3, H*s, W*s)
            outs.append(self.discs[key](x))
        return outs
