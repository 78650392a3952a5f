"""Occlusion-aware SPADE generator of face-vid2vid as used by SadTalker (method.md §4.1): the warping and decoding half.

    volume (B, C, D, h, w) --dense motion--> deformation, occlusion
    warped = grid_sample(volume, deformation)               (B, C, D, h, w)
    fold depth into channels                                (B, C*D, h, w)
    third (3x3 conv-BN-LeakyReLU) -> fourth (1x1)           (B, Cg, h, w),  Cg = block_expansion * 2^n
    × occlusion map
    SPADE decoder: fc -> G_middle_0..5 -> (upsample x2 -> up_i) x n -> LeakyReLU -> conv_img -> sigmoid
                                                            (B, 3, H, W) in [0, 1]

The encoding half (``first``, ``down_blocks``, ``second``, ``resblocks_3d``) is the AppearanceFeatureExtractor.
Module names follow SadTalker's ``OcclusionAwareSPADEGenerator`` / ``SPADEDecoder`` (``dense_motion_network``,
``third``, ``fourth``, ``decoder.fc``, ``decoder.G_middle_i``, ``decoder.up_i``, ``decoder.conv_img``), whose
decoder is hard-wired for 256 input channels, 64 output channels and two upsamplings; here those follow the
config (ic = block_expansion * 2^n, oc = block_expansion, n upsamplings), equal to SadTalker's at the defaults.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer.blocks import SameBlock2d, SPADEResnetBlock
from pipeline.models.renderer.dense_motion import DenseMotion, DenseMotionConfig, DenseMotionNetwork


@dataclass(frozen=True)
class GeneratorConfig:
    """Warping + SPADE decoder (defaults: SadTalker 256 config).

    Attributes:
        block_expansion: decoder output channels (oc); the decoder input is block_expansion * 2^n channels, n the
            appearance extractor's num_down_blocks (256 at full size).
        num_middle_blocks: SPADE residual blocks at the lowest resolution (6).
        spade_hidden: hidden channels of each SPADE's shared conv (128).
        spectral_norm: spectral norm on the SPADE blocks' convolutions (SadTalker: ``spadespectralinstance``).
        estimate_occlusion_map: predict and apply the occlusion map.
    """

    block_expansion: int = 64
    num_middle_blocks: int = 6
    spade_hidden: int = 128
    spectral_norm: bool = True
    estimate_occlusion_map: bool = True

    def validate(self) -> None:
        for name in ("block_expansion", "spade_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"generator.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_middle_blocks < 0:
            raise ValueError(f"generator.num_middle_blocks must be >= 0, got {self.num_middle_blocks}")



class SPADEDecoder(nn.Module):
    """SPADE decoder conditioned on its own input: (B, ic, h, w) -> (B, 3, h·2^n, w·2^n) in [0, 1]."""

    def __init__(self, cfg: GeneratorConfig, in_channels: int, num_up_blocks: int, image_channel: int = 3) -> None:
        super().__init__()
        ic, oc = in_channels, cfg.block_expansion
        hid, sn = cfg.spade_hidden, cfg.spectral_norm
        self.fc = nn.Conv2d(ic, 2 * ic, kernel_size=3, padding=1)
        self.num_middle_blocks = cfg.num_middle_blocks
        self.num_up_blocks = num_up_blocks
        for i in range(cfg.num_middle_blocks):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * ic, 2 * ic, ic, hid, sn))
        # Upsampling blocks halve the channels each time (2ic -> ic -> ...); the last one ends at oc.
        cin = 2 * ic
        for i in range(num_up_blocks):
            cout = oc if i == num_up_blocks - 1 else max(oc, cin // 2)
            self.add_module(f"up_{i}", SPADEResnetBlock(cin, cout, ic, hid, sn))
            cin = cout
        self.conv_img = nn.Conv2d(cin, image_channel, kernel_size=3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, ic, h, w) -> image (B, 3, H, W) in [0, 1]."""
        return torch.sigmoid(self.logits(feature))

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, ic, h, w) -> pre-sigmoid image (B, 3, H, W)."""
        seg = feature  # (B, ic, h, w): the SPADE condition
        x = self.fc(feature)  # (B, 2ic, h, w)
        for i in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, seg)  # (B, 2ic, h, w)
        for i in range(self.num_up_blocks):
            x = self.up(x)  # (B, C, 2h', 2w')
            x = getattr(self, f"up_{i}")(x, seg)  # (B, C', 2h', 2w')
        return self.conv_img(F.leaky_relu(x, 0.2))  # (B, 3, H, W)


class OcclusionAwareSPADEGenerator(nn.Module):
    """(volume, kp_source, kp_driving) -> image, deformation, occlusion and motion mask."""

    def __init__(self, cfg: GeneratorConfig, dense_motion: DenseMotionConfig, num_kp: int, feature_channel: int,
                 reshape_depth: int, num_up_blocks: int, image_channel: int = 3, align_corners: bool = True) -> None:
        """Args:
            cfg: this network's config.
            dense_motion: config of its dense motion network.
            num_kp: K.
            feature_channel, reshape_depth: C and D of the appearance volume.
            num_up_blocks: the appearance extractor's num_down_blocks (the decoder undoes them).
            image_channel: 3.
            align_corners: grid_sample convention (see blocks.py; True matches make_coordinate_grid).
        """
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.align_corners = align_corners
        self.motion_scale = dense_motion.scale_factor
        self.dense_motion_network = DenseMotionNetwork(dense_motion, num_kp, feature_channel, reshape_depth,
                                                       cfg.estimate_occlusion_map, align_corners)
        width = cfg.block_expansion * 2**num_up_blocks
        self.third = SameBlock2d(feature_channel * reshape_depth, width, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)
        self.decoder = SPADEDecoder(cfg, width, num_up_blocks, image_channel)

    def warp(self, volume: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Backward-warp the volume: (B, C, D, h, w) sampled at (B, D, h, w, 3) -> (B, C, D, h, w)."""
        if deformation.shape[1:4] != volume.shape[2:]:
            raise ValueError(f"warp: deformation {tuple(deformation.shape)} does not match volume "
                             f"{tuple(volume.shape)}")
        return F.grid_sample(volume, deformation, align_corners=self.align_corners)  # (B, C, D, h, w)

    def estimate_motion(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
                        ) -> DenseMotion:
        """Dense motion at the volume's resolution, estimated at ``dense_motion.scale_factor`` of it (see
        DenseMotionConfig) and upsampled back when that is below 1."""
        if self.motion_scale == 1:
            return self.dense_motion_network(volume, kp_source, kp_driving)
        _, _, d, h, w = volume.shape
        size = (d, max(1, round(h * self.motion_scale)), max(1, round(w * self.motion_scale)))
        small = F.interpolate(volume, size=size, mode="area")  # (B, C, D, h', w')
        m = self.dense_motion_network(small, kp_source, kp_driving)
        # The deformation is a smooth field of sampling coordinates: trilinear upsampling with the grid's corner
        # convention maps an identity grid to the identity grid exactly.
        deformation = F.interpolate(m.deformation.permute(0, 4, 1, 2, 3), size=(d, h, w), mode="trilinear",
                                    align_corners=self.align_corners).permute(0, 2, 3, 4, 1)  # (B, D, h, w, 3)
        mask = F.interpolate(m.mask, size=(d, h, w), mode="trilinear",
                             align_corners=self.align_corners)  # (B, K+1, D, h, w)
        occlusion = None if m.occlusion is None else F.interpolate(
            m.occlusion, size=(h, w), mode="bilinear", align_corners=self.align_corners)  # (B, 1, h, w)
        return dataclasses.replace(m, deformation=deformation, mask=mask, occlusion=occlusion)

    def forward(self, volume: torch.Tensor, kp_source: torch.Tensor,
                kp_driving: torch.Tensor) -> tuple[torch.Tensor, DenseMotion]:
        """Args:
            volume: (B, C, D, h, w) source feature volume.
            kp_source, kp_driving: (B, K, 3).
        Returns:
            (prediction (B, 3, H, W) in [0, 1], the DenseMotion).
        """
        motion = self.estimate_motion(volume, kp_source, kp_driving)
        out = self.warp(volume, motion.deformation)  # (B, C, D, h, w)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(b, c * d, h, w)))  # (B, Cg, h, w)
        if motion.occlusion is not None:
            out = out * motion.occlusion  # (B, Cg, h, w)
        return self.decoder(out), motion  # (B, 3, H, W)
