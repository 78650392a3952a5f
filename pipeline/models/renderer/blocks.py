"""Building blocks shared by the face-vid2vid networks (appearance, keypoints, dense motion, generator,
discriminator), plus the two coordinate helpers every 3D warp relies on.

Submodule and parameter names follow SadTalker's ``src/facerender/modules/util.py`` (``conv``, ``norm``,
``conv1``/``norm1``, ``mlp_shared``, ...), so that SadTalker's public renderer checkpoint loads strictly after a
prefix mapping (see ``renderer.load_sadtalker_renderer``). BatchNorm stands in for SadTalker's synchronised
BatchNorm, which has the same state-dict keys.

Coordinates: a grid over a (D, H, W) volume holds normalised (x, y, z) = (width, height, depth) in [-1, 1], where
-1 and +1 are the centres of the first and last voxels (``make_coordinate_grid``). That is the convention of
``F.grid_sample(..., align_corners=True)``; SadTalker calls grid_sample with the default ``align_corners=False``
on the same grid, which slightly shrinks every warp. The renderer makes that a config switch
(``RendererConfig.align_corners``, default True = consistent; False = SadTalker parity for its weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------------
# Coordinates
# ----------------------------------------------------------------------------------------------------------------
def make_coordinate_grid(spatial_size: tuple[int, int, int], dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised voxel-centre coordinates of a (D, H, W) volume.

    Args:
        spatial_size: (D, H, W); a size of 1 gives the coordinate 0 along that axis.
        dtype, device: of the returned grid.
    Returns:
        (D, H, W, 3) grid whose last axis is (x, y, z) = (width, height, depth), each in [-1, 1].
    """
    def axis(n: int) -> torch.Tensor:
        if n == 1:
            return torch.zeros(1, dtype=dtype, device=device)
        return torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)

    d, h, w = spatial_size
    zz, yy, xx = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")  # (D, H, W) each
    return torch.stack([xx, yy, zz], dim=-1)  # (D, H, W, 3)


def kp2gaussian(kp: torch.Tensor, spatial_size: tuple[int, int, int], variance: float) -> torch.Tensor:
    """Isotropic Gaussian blob around each keypoint, evaluated on the voxel grid.

    Args:
        kp: (B, K, 3) keypoints in normalised (x, y, z).
        spatial_size: (D, H, W) of the volume.
        variance: of the Gaussian in normalised units (face-vid2vid: 0.01).
    Returns:
        (B, K, D, H, W) values exp(-|grid - kp|² / (2 variance)) in (0, 1].
    """
    grid = make_coordinate_grid(spatial_size, kp.dtype, kp.device)  # (D, H, W, 3)
    diff = grid[None, None] - kp[:, :, None, None, None, :]  # (B, K, D, H, W, 3)
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / variance)  # (B, K, D, H, W)


# ----------------------------------------------------------------------------------------------------------------
# 2D blocks
# ----------------------------------------------------------------------------------------------------------------
class SameBlock2d(nn.Module):
    """Conv -> BatchNorm -> ReLU (or LeakyReLU 0.01), resolution preserved."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1, lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))  # (B, Cout, H, W)


class DownBlock2d(nn.Module):
    """Conv -> BatchNorm -> ReLU -> 2x2 average pool: halves H and W."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))  # (B, Cout, H/2, W/2)


class ResBottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 stride s -> 1x1, channels /4 inside) with BatchNorm; a strided 1x1 skip when
    s != 1. Used by the head-pose/expression estimator."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"ResBottleneck needs channels divisible by 4, got {channels}")
        mid = channels // 4
        self.conv1 = nn.Conv2d(channels, mid, kernel_size=1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(mid, channels, kernel_size=1)
        self.norm1 = nn.BatchNorm2d(mid, affine=True)
        self.norm2 = nn.BatchNorm2d(mid, affine=True)
        self.norm3 = nn.BatchNorm2d(channels, affine=True)
        self.stride = stride
        if stride != 1:
            self.skip = nn.Conv2d(channels, channels, kernel_size=1, stride=stride)
            self.norm4 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))  # (B, C/4, H, W)
        out = F.relu(self.norm2(self.conv2(out)))  # (B, C/4, H/s, W/s)
        out = self.norm3(self.conv3(out))  # (B, C, H/s, W/s)
        if self.stride != 1:
            x = self.norm4(self.skip(x))  # (B, C, H/s, W/s)
        return F.relu(out + x)


class AntiAliasInterpolation2d(nn.Module):
    """Band-limited downsampling by 1/scale: depthwise Gaussian blur (sigma = (1/scale - 1)/2), then strided
    subsampling. The kernel is a buffer named ``weight`` (in SadTalker's state dict as ``down.weight``)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        if not 0 < scale <= 1 or abs(1 / scale - round(1 / scale)) > 1e-6:
            raise ValueError(f"AntiAliasInterpolation2d needs scale = 1/n for an integer n, got {scale}")
        self.scale = scale
        self.step = int(round(1 / scale))
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.ka = size // 2
        self.kb = self.ka - 1 if size % 2 == 0 else self.ka
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-coords**2 / (2 * sigma**2)) if sigma > 0 else (coords == 0).float()
        kernel = g[:, None] * g[None, :]  # (k, k)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel[None, None].repeat(channels, 1, 1, 1))  # (C, 1, k, k)
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step == 1:
            return x
        out = F.pad(x, (self.ka, self.kb, self.ka, self.kb))  # (B, C, H + k - 1, W + k - 1)
        out = F.conv2d(out, self.weight, groups=self.groups)  # (B, C, H, W)
        return out[:, :, ::self.step, ::self.step]  # (B, C, H*scale, W*scale)


# ----------------------------------------------------------------------------------------------------------------
# 3D blocks
# ----------------------------------------------------------------------------------------------------------------
class ResBlock3d(nn.Module):
    """Pre-activation residual block (BN -> ReLU -> conv, twice), resolution and channels preserved."""

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(channels, affine=True)
        self.norm2 = nn.BatchNorm3d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x  # (B, C, D, H, W)


class DownBlock3d(nn.Module):
    """Conv3d -> BatchNorm -> ReLU -> average pool (1, 2, 2): halves H and W, keeps D."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)
        self.pool = nn.AvgPool3d(kernel_size=(1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))  # (B, Cout, D, H/2, W/2)


class UpBlock3d(nn.Module):
    """Nearest upsampling (1, 2, 2) -> Conv3d -> BatchNorm -> ReLU: doubles H and W, keeps D."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(cout, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=(1, 2, 2))  # (B, Cin, D, 2H, 2W)
        return F.relu(self.norm(self.conv(out)))  # (B, Cout, D, 2H, 2W)


def hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channels at depth `level` of a face-vid2vid hourglass: min(max_features, block_expansion * 2**level)."""
    return min(max_features, block_expansion * 2**level)


class Encoder3d(nn.Module):
    """Hourglass encoder: `num_blocks` DownBlock3d; returns the input and every block's output (for skips)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else hourglass_width(block_expansion, max_features, i),
                        hourglass_width(block_expansion, max_features, i + 1))
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))  # (B, C_i, D, H/2^i, W/2^i)
        return outs


class Decoder3d(nn.Module):
    """Hourglass decoder: UpBlock3d + concatenated skip per level, then Conv3d -> BatchNorm -> ReLU.
    Output channels ``out_filters = block_expansion + in_features`` (the last skip is the hourglass input)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * hourglass_width(block_expansion, max_features, i + 1)
            blocks.append(UpBlock3d(cin, hourglass_width(block_expansion, max_features, i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = block(out)  # (B, C_i, D, 2h, 2w)
            out = torch.cat([out, skips.pop()], dim=1)  # (B, C_i + C_skip, D, 2h, 2w)
        return F.relu(self.norm(self.conv(out)))  # (B, out_filters, D, H, W)


class Hourglass3d(nn.Module):
    """U-Net over (D, H, W) volumes that pools only H and W (face-vid2vid's dense-motion hourglass)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = Encoder3d(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder3d(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, out_filters, D, H, W)


# ----------------------------------------------------------------------------------------------------------------
# SPADE
# ----------------------------------------------------------------------------------------------------------------
class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): parameter-free InstanceNorm of x, then a per-pixel
    scale (1 + gamma) and shift beta predicted from the conditioning map `seg` (resized to x by nearest)."""

    def __init__(self, channels: int, label_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)  # (B, C, H, W)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")  # (B, L, H, W)
        actv = self.mlp_shared(seg)  # (B, hidden, H, W)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)  # (B, C, H, W)


def _maybe_sn(conv: nn.Conv2d, use: bool) -> nn.Module:
    # The classic (hook-based) spectral norm keeps SadTalker's keys: weight_orig, weight_u, weight_v.
    return nn.utils.spectral_norm(conv) if use else conv


class SPADEResnetBlock(nn.Module):
    """SPADE residual block: two (SPADE -> LeakyReLU 0.2 -> 3x3 conv) steps, a learned 1x1 shortcut (SPADE ->
    conv, no bias) when the channel count changes; spectral norm on the convolutions."""

    def __init__(self, cin: int, cout: int, label_channels: int, hidden: int = 128,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        self.learned_shortcut = cin != cout
        mid = min(cin, cout)
        self.conv_0 = _maybe_sn(nn.Conv2d(cin, mid, kernel_size=3, padding=1), spectral_norm)
        self.conv_1 = _maybe_sn(nn.Conv2d(mid, cout, kernel_size=3, padding=1), spectral_norm)
        if self.learned_shortcut:
            self.conv_s = _maybe_sn(nn.Conv2d(cin, cout, kernel_size=1, bias=False), spectral_norm)
        self.norm_0 = SPADE(cin, label_channels, hidden)
        self.norm_1 = SPADE(mid, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, label_channels, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x  # (B, Cout, H, W)
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))  # (B, Cmid, H, W)
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))  # (B, Cout, H, W)
        return x_s + dx


def is_power_of_two_divisible(size: int, times: int) -> bool:
    """True when `size` can be halved `times` times without remainder (and stays >= 1)."""
    return times >= 0 and size >= 2**times and size % 2**times == 0


__all__ = [
    "AntiAliasInterpolation2d", "Decoder3d", "DownBlock2d", "DownBlock3d", "Encoder3d", "Hourglass3d", "ResBlock3d",
    "ResBottleneck", "SPADE", "SPADEResnetBlock", "SameBlock2d", "UpBlock3d", "hourglass_width",
    "is_power_of_two_divisible", "kp2gaussian", "make_coordinate_grid",
]
