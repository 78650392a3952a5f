"""3D dense motion network of face-vid2vid with an occlusion map (method.md §4.1).

From the source feature volume and the source/driving keypoints it predicts, for every voxel of the *driving*
frame, where to sample the source volume (the deformation, a backward warp) and a 2D occlusion map:

1. sparse motions: K + 1 candidate warps, one per keypoint (translate by kp_source − kp_driving) plus the identity
   for the background;
2. the compressed source volume warped by each candidate (``grid_sample``), plus the Gaussian heatmap difference
   (driving − source) of each keypoint, concatenated per candidate as (1 + compress) channels;
3. a 3D hourglass -> ``mask``: softmax over the K + 1 candidates per voxel (weights < 1e-3 zeroed, as
   face-vid2vid); deformation = Σ mask · sparse motion;
4. ``occlusion``: the hourglass output folded to 2D (C·D channels) -> 7x7 conv -> sigmoid.

Module names follow SadTalker's ``DenseMotionNetwork`` (``hourglass``, ``mask``, ``compress``, ``norm``,
``occlusion``). The keypoint candidates are processed in one batched ``grid_sample`` over B·(K + 1) volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer.blocks import Hourglass3d, kp2gaussian, make_coordinate_grid

MASK_FLOOR = 1e-3  # mask weights below this are set to zero (face-vid2vid)


@dataclass(frozen=True)
class DenseMotionConfig:
    """Dense motion network (defaults: SadTalker 256 config ``dense_motion_params``).

    Attributes:
        block_expansion: channels of the hourglass's first level.
        max_features: hourglass channel cap.
        num_blocks: hourglass levels (each halves H and W of the volume: h must be divisible by 2^num_blocks).
        compress: channels the source volume is compressed to before warping (4).
        kp_variance: variance of the keypoint Gaussians in normalised units (0.01).
        scale_factor: spatial scale at which the motion is estimated (1.0: face-vid2vid, the volume's own
            resolution). Below 1 the generator averages the volume down by this factor before this network and
            upsamples the deformation, occlusion and mask back (FOMM's dense-motion ``scale_factor``): the cost
            falls with the square of the factor, which lets small CPU configs keep a full-resolution volume.
        mask_floor_gradient: how the floor that zeroes mask weights below 1e-3 (face-vid2vid) treats gradients in
            training. ``hard`` (face-vid2vid): a zeroed candidate gets no gradient at all, so once the identity
            candidate holds > 99.9 % of a voxel the keypoint candidates there can never come back (the collapse of
            docs/decisions.md, "Keypoints anchored to landmarks"). ``straight_through``: the same forward values, but
            the gradient flows as if the weight had not been zeroed, so Adam can still revive a candidate that would
            lower the loss. Outputs (and so pretrained weights) are identical either way.
        mask_logit_bound: 0 (face-vid2vid): plain softmax logits. c > 0: logits pass through ``c · tanh(x / c)``
            first, so no candidate can take more than ``e^c / (e^c + K e^-c)`` of a voxel (c = 3, K = 10: 97.6 %) and
            every keypoint candidate keeps at least ``e^-c / (e^c + K e^-c)`` (0.24 %, above the floor) and with it a
            gradient that says whether its motion would help. Changes the forward pass: pretrained weights
            need 0.
    The volume depth (SadTalker's ``reshape_depth``) and channels come from the appearance config.
    """

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    compress: int = 4
    kp_variance: float = 0.01
    scale_factor: float = 1.0
    mask_floor_gradient: Literal["hard", "straight_through"] = "hard"
    mask_logit_bound: float = 0.0

    def validate(self) -> None:
        if self.mask_floor_gradient not in ("hard", "straight_through"):
            raise ValueError(f"dense_motion.mask_floor_gradient must be 'hard' or 'straight_through', got "
                             f"{self.mask_floor_gradient!r}")
        if not self.mask_logit_bound >= 0:
            raise ValueError(f"dense_motion.mask_logit_bound must be >= 0 (0 = off), got {self.mask_logit_bound}")
        for name in ("block_expansion", "max_features", "num_blocks", "compress"):
            if getattr(self, name) < 1:
                raise ValueError(f"dense_motion.{name} must be >= 1, got {getattr(self, name)}")
        if not self.kp_variance > 0:
            raise ValueError(f"dense_motion.kp_variance must be > 0, got {self.kp_variance}")
        if not 0 < self.scale_factor <= 1:
            raise ValueError(f"dense_motion.scale_factor must be in (0, 1], got {self.scale_factor}")


@dataclass
class DenseMotion:
    """Output of the dense motion network.

    Attributes:
        mask: (B, K+1, D, h, w) softmax weights of the candidates (index 0 = background identity).
        deformation: (B, D, h, w, 3) source sampling coordinates (x, y, z) for every driving voxel.
        occlusion: (B, 1, h, w) in (0, 1), or None when not estimated.
    """

    mask: torch.Tensor
    deformation: torch.Tensor
    occlusion: torch.Tensor | None


class DenseMotionNetwork(nn.Module):
    """(volume, kp_source, kp_driving) -> DenseMotion."""

    def __init__(self, cfg: DenseMotionConfig, num_kp: int, feature_channel: int, reshape_depth: int,
                 estimate_occlusion_map: bool = True, align_corners: bool = True) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_kp = num_kp
        self.feature_channel = feature_channel
        self.reshape_depth = reshape_depth
        self.align_corners = align_corners
        self.hourglass = Hourglass3d(cfg.block_expansion, (num_kp + 1) * (cfg.compress + 1), cfg.num_blocks,
                                     cfg.max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress, affine=True)
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
        else:
            self.occlusion = None

    def sparse_motions(self, spatial: tuple[int, int, int], kp_source: torch.Tensor,
                       kp_driving: torch.Tensor) -> torch.Tensor:
        """Candidate backward warps: identity (background) and, per keypoint k, ``z - kp_driving_k + kp_source_k``.

        Returns:
            (B, K+1, D, h, w, 3).
        """
        b = kp_source.shape[0]
        grid = make_coordinate_grid(spatial, kp_source.dtype, kp_source.device)[None, None]  # (1, 1, D, h, w, 3)
        shift = (kp_source - kp_driving)[:, :, None, None, None, :]  # (B, K, 1, 1, 1, 3)
        per_kp = grid + shift  # (B, K, D, h, w, 3)
        return torch.cat([grid.expand(b, 1, *spatial, 3), per_kp], dim=1)  # (B, K+1, D, h, w, 3)

    def forward(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> DenseMotion:
        """Args:
            volume: (B, C, D, h, w) source feature volume.
            kp_source, kp_driving: (B, K, 3) keypoints in normalised (x, y, z).
        Returns:
            DenseMotion (mask, deformation, occlusion).
        """
        b, c, d, h, w = volume.shape
        k = self.num_kp
        if c != self.feature_channel or d != self.reshape_depth:
            raise ValueError(f"DenseMotionNetwork: expected a (B, {self.feature_channel}, {self.reshape_depth}, h, w) "
                             f"volume, got {tuple(volume.shape)}")
        for name, kp in (("kp_source", kp_source), ("kp_driving", kp_driving)):
            if kp.shape != (b, k, 3):
                raise ValueError(f"DenseMotionNetwork: {name} must be ({b}, {k}, 3), got {tuple(kp.shape)}")
        feature = F.relu(self.norm(self.compress(volume)))  # (B, c', D, h, w)
        motions = self.sparse_motions((d, h, w), kp_source, kp_driving)  # (B, K+1, D, h, w, 3)

        cc = feature.shape[1]
        repeated = feature[:, None].expand(b, k + 1, cc, d, h, w)  # (B, K+1, c', D, h, w)
        repeated = repeated.reshape(b * (k + 1), cc, d, h, w)  # (B(K+1), c', D, h, w)
        warped = F.grid_sample(repeated, motions.reshape(b * (k + 1), d, h, w, 3),
                               align_corners=self.align_corners)  # (B(K+1), c', D, h, w)
        warped = warped.view(b, k + 1, cc, d, h, w)  # (B, K+1, c', D, h, w)

        heat = (kp2gaussian(kp_driving, (d, h, w), self.cfg.kp_variance)
                - kp2gaussian(kp_source, (d, h, w), self.cfg.kp_variance))  # (B, K, D, h, w)
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1)[:, :, None]  # (B, K+1, 1, D, h, w)
        net_in = torch.cat([heat, warped], dim=2).view(b, (k + 1) * (cc + 1), d, h, w)  # (B, (K+1)(c'+1), D, h, w)

        prediction = self.hourglass(net_in)  # (B, Ch, D, h, w)
        logits = self.mask(prediction)  # (B, K+1, D, h, w)
        if self.cfg.mask_logit_bound > 0:
            c = self.cfg.mask_logit_bound
            logits = c * torch.tanh(logits / c)
        mask = torch.softmax(logits, dim=1)  # (B, K+1, D, h, w)
        weights = torch.where(mask < MASK_FLOOR, torch.zeros_like(mask), mask)  # (B, K+1, D, h, w)
        if self.cfg.mask_floor_gradient == "straight_through" and torch.is_grad_enabled():
            weights = mask + (weights - mask).detach()  # forward: floored; backward: d weights / d mask = 1
        deformation = torch.einsum("bkdhw,bkdhwc->bdhwc", weights, motions)  # (B, D, h, w, 3)

        occlusion = None
        if self.occlusion is not None:
            folded = prediction.reshape(b, -1, h, w)  # (B, Ch*D, h, w)
            occlusion = torch.sigmoid(self.occlusion(folded))  # (B, 1, h, w)
        return DenseMotion(mask=mask, deformation=deformation, occlusion=occlusion)
