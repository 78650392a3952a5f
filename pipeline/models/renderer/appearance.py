"""Appearance feature extractor of face-vid2vid (method.md §4.1): source image -> 2D feature f -> 3D feature volume.

It is the encoding half of SadTalker's ``OcclusionAwareSPADEGenerator`` (``first``, ``down_blocks``, ``second``,
``resblocks_3d``), split out because CERL (TAVCE Eq. 5) acts on the 2D feature f *between* ``second`` and the reshape:

    image (B, 3, H, W) -> first -> down_blocks -> second -> f (B, C*D, H/2^n, W/2^n)      [forward]
    f -> reshape (B, C, D, h, w) -> resblocks_3d -> volume (B, C, D, h, w)                  [to_volume]

At the full size f has 512 = 32 x 16 channels and h = w = 64 for a 256 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.renderer.blocks import DownBlock2d, ResBlock3d, SameBlock2d


@dataclass(frozen=True)
class AppearanceConfig:
    """Widths of the appearance feature extractor (defaults: SadTalker/face-vid2vid 256 config).

    Attributes:
        block_expansion: channels after ``first``; doubled by every down block.
        max_features: cap of the down blocks' channels.
        num_down_blocks: number of 2x downsamplings (f is H / 2^n).
        reshape_channel: C of the volume (face-vid2vid ``feature_channel``, 32).
        reshape_depth: D of the volume (16); f has C * D channels (512 at full size).
        num_resblocks: 3D residual blocks on the volume.
    """

    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6

    @property
    def feature_channels(self) -> int:
        """Channels of the 2D feature f (= reshape_channel * reshape_depth)."""
        return self.reshape_channel * self.reshape_depth

    def validate(self) -> None:
        for name in ("block_expansion", "max_features", "reshape_channel", "reshape_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"appearance.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_down_blocks < 0 or self.num_resblocks < 0:
            raise ValueError("appearance.num_down_blocks and appearance.num_resblocks must be >= 0")


class AppearanceFeatureExtractor(nn.Module):
    """Source image -> 2D appearance feature f (``forward``) -> 3D feature volume (``to_volume``)."""

    def __init__(self, cfg: AppearanceConfig, image_channel: int = 3) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        be, mf = cfg.block_expansion, cfg.max_features
        self.first = SameBlock2d(image_channel, be, kernel_size=3, padding=1)
        widths = [min(mf, be * 2**i) for i in range(cfg.num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(widths[i], widths[i + 1]) for i in range(cfg.num_down_blocks))
        self.second = nn.Conv2d(widths[-1], cfg.feature_channels, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))
        self.image_channel = image_channel

    @property
    def feature_channels(self) -> int:
        return self.cfg.feature_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Args:
            image: (B, 3, H, W) in [0, 1], H and W divisible by 2^num_down_blocks.
        Returns:
            f: (B, C*D, H / 2^n, W / 2^n).
        """
        if image.dim() != 4 or image.shape[1] != self.image_channel:
            raise ValueError(f"AppearanceFeatureExtractor: expected (B, {self.image_channel}, H, W) images, "
                             f"got {tuple(image.shape)}")
        out = self.first(image)  # (B, be, H, W)
        for block in self.down_blocks:
            out = block(out)  # (B, C_i, H/2^i, W/2^i)
        return self.second(out)  # (B, C*D, h, w)

    def to_volume(self, f: torch.Tensor) -> torch.Tensor:
        """Reshape f to the 3D volume and refine it with the 3D residual blocks.

        Args:
            f: (B, C*D, h, w) (after CERL when enabled).
        Returns:
            (B, C, D, h, w).
        """
        b, c, h, w = f.shape
        if c != self.cfg.feature_channels:
            raise ValueError(f"AppearanceFeatureExtractor.to_volume: expected {self.cfg.feature_channels} channels, "
                             f"got {tuple(f.shape)}")
        volume = f.view(b, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)  # (B, C, D, h, w)
        return self.resblocks_3d(volume)  # (B, C, D, h, w)
