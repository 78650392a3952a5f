"""Canonical 3D keypoint detector of face-vid2vid (method.md §4.1): image -> K canonical keypoints x_c (B, K, 3).

Layout (names as SadTalker's ``KPDetector`` / ``KPHourglass``): an anti-aliased downsample of the input
(``down``, scale_factor 0.25), a 2D encoder (``predictor.down_blocks.down{i}``), a 1x1 conv to C·D channels
reshaped into a (C, D, h, w) volume (``predictor.conv``), a 3D decoder (``predictor.up_blocks.up{i}``), and a 3x3x3
conv to K heatmaps (``kp``). Keypoints are the softmax(heatmap / temperature) expectation of the voxel coordinates
(normalised (x, y, z), see ``blocks.make_coordinate_grid``).

Not implemented: face-vid2vid's optional Jacobians (``estimate_jacobian``); SadTalker's renderer runs without them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.renderer.blocks import (AntiAliasInterpolation2d, DownBlock2d, UpBlock3d, hourglass_width,
                                             make_coordinate_grid)


@dataclass(frozen=True)
class KeypointDetectorConfig:
    """Canonical keypoint detector (defaults: SadTalker 256 config).

    Attributes:
        block_expansion: channels of the first 2D block; doubled per block up to max_features.
        max_features: channel cap.
        num_blocks: 2D down blocks = 3D up blocks.
        reshape_depth: D of the keypoint volume (16). The 1x1 conv before the reshape has
            ``min(max_features, block_expansion * 2**num_blocks) * reshape_depth`` outputs (SadTalker's
            ``reshape_channel``, 16384 = 1024 x 16 at full size; derived, not a field).
        temperature: of the heatmap softmax (0.1).
        scale_factor: input downsampling before the network (0.25: a 256 image is read at 64x64).
    """

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    temperature: float = 0.1
    scale_factor: float = 0.25

    @property
    def reshape_channel(self) -> int:
        return hourglass_width(self.block_expansion, self.max_features, self.num_blocks) * self.reshape_depth

    def validate(self) -> None:
        for name in ("block_expansion", "max_features", "num_blocks", "reshape_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"keypoints.{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"keypoints.temperature must be > 0, got {self.temperature}")
        if not 0 < self.scale_factor <= 1 or abs(1 / self.scale_factor - round(1 / self.scale_factor)) > 1e-6:
            raise ValueError(f"keypoints.scale_factor must be 1/n for an integer n, got {self.scale_factor}")


class KPHourglass(nn.Module):
    """2D encoder -> reshape to a 3D volume -> 3D decoder (no skips)."""

    def __init__(self, cfg: KeypointDetectorConfig, image_channel: int) -> None:
        super().__init__()
        be, mf, n = cfg.block_expansion, cfg.max_features, cfg.num_blocks
        self.down_blocks = nn.Sequential()
        for i in range(n):
            cin = image_channel if i == 0 else hourglass_width(be, mf, i)
            self.down_blocks.add_module(f"down{i}", DownBlock2d(cin, hourglass_width(be, mf, i + 1)))
        self.conv = nn.Conv2d(hourglass_width(be, mf, n), cfg.reshape_channel, kernel_size=1)
        self.up_blocks = nn.Sequential()
        for i in range(n):
            self.up_blocks.add_module(f"up{i}", UpBlock3d(hourglass_width(be, mf, n - i),
                                                          hourglass_width(be, mf, n - i - 1)))
        self.reshape_depth = cfg.reshape_depth
        self.out_filters = hourglass_width(be, mf, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_blocks(x)  # (B, C_n, H/2^n, W/2^n)
        out = self.conv(out)  # (B, C_n * D, h, w)
        b, c, h, w = out.shape
        out = out.view(b, c // self.reshape_depth, self.reshape_depth, h, w)  # (B, C_n, D, h, w)
        return self.up_blocks(out)  # (B, be, D, H, W)


class CanonicalKeypointDetector(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> canonical keypoints (B, K, 3) in [-1, 1]."""

    def __init__(self, cfg: KeypointDetectorConfig, num_kp: int = 15, image_channel: int = 3) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_kp = num_kp
        self.image_channel = image_channel
        self.predictor = KPHourglass(cfg, image_channel)
        self.kp = nn.Conv3d(self.predictor.out_filters, num_kp, kernel_size=3, padding=1)
        self.temperature = cfg.temperature
        if cfg.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(image_channel, cfg.scale_factor)

    def heatmaps(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised keypoint heatmaps (B, K, D, h, w), each summing to 1."""
        if image.dim() != 4 or image.shape[1] != self.image_channel:
            raise ValueError(f"CanonicalKeypointDetector: expected (B, {self.image_channel}, H, W), "
                             f"got {tuple(image.shape)}")
        x = self.down(image) if self.cfg.scale_factor != 1 else image  # (B, 3, H*s, W*s)
        prediction = self.kp(self.predictor(x))  # (B, K, D, h, w)
        shape = prediction.shape
        heat = torch.softmax(prediction.flatten(2) / self.temperature, dim=2)  # (B, K, D*h*w)
        return heat.view(shape)  # (B, K, D, h, w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Args:
            image: (B, 3, H, W) in [0, 1].
        Returns:
            (B, K, 3) canonical keypoints (x, y, z).
        """
        heat = self.heatmaps(image)  # (B, K, D, h, w)
        grid = make_coordinate_grid(tuple(heat.shape[2:]), heat.dtype, heat.device)  # (D, h, w, 3)
        return torch.einsum("bkn,nc->bkc", heat.flatten(2), grid.view(-1, 3))  # (B, K, 3)
