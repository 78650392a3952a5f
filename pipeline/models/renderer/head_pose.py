"""Head-pose and expression estimator of face-vid2vid (method.md §4.1), used for video-driven training: a driving frame
-> its HeadMotion (yaw/pitch/roll as 66-bin logits, translation t, expression deltas δ of the K keypoints).

A ResNet-50-like trunk of bottleneck blocks (names as SadTalker's ``HEEstimator``: conv1..conv5, norm1..norm5,
block1..block7 with children ``b1_i``, ``b3_i``, ``b5_i``, ``b7_i``), global average pooling, then linear heads
``fc_yaw``, ``fc_pitch``, ``fc_roll``, ``fc_t``, ``fc_exp``. Stage widths are max_features / 8, / 4, / 2, / 1
(256, 512, 1024, 2048 at full size).

Naming note: SadTalker's HEEstimator returns ``yaw = fc_roll(out)`` and ``roll = fc_yaw(out)``. Here each head
computes the angle it is named after; `renderer.load_sadtalker_renderer` swaps the two heads' weights so a
SadTalker checkpoint keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.renderer.blocks import ResBottleneck
from pipeline.models.renderer.keypoints import POSE_BINS, HeadMotion


@dataclass(frozen=True)
class HeadPoseConfig:
    """Head-pose/expression estimator widths (defaults: SadTalker 256 config).

    Attributes:
        block_expansion: channels of the 7x7 stem conv.
        max_features: width of the last stage (2048); earlier stages are /8, /4, /2.
        num_bins: pose bins per angle (66, hopenet).
        zero_init_motion: start the translation and expression heads (``fc_t``, ``fc_exp``) at zero, so that a new
            estimator's keypoints move only by the head rotation until training asks for more (this project's
            addition; False = face-vid2vid's default init). With the default init and BatchNorm in training mode,
            two frames of one clip get t and δ that differ by 17-18 px at 64 px from the first step (the true motion
            is 2-3 px): every keypoint warp is then worse than the identity and the dense-motion mask learns to
            drop them (docs/decisions.md, "mask collapse"). Pretrained weights overwrite it.
    """

    block_expansion: int = 64
    max_features: int = 2048
    num_bins: int = POSE_BINS
    zero_init_motion: bool = False

    def validate(self) -> None:
        if self.block_expansion < 1:
            raise ValueError(f"head_pose.block_expansion must be >= 1, got {self.block_expansion}")
        if self.max_features < 32 or self.max_features % 32:
            raise ValueError(f"head_pose.max_features must be a positive multiple of 32, got {self.max_features}")
        if self.num_bins < 2:
            raise ValueError(f"head_pose.num_bins must be >= 2, got {self.num_bins}")


class HeadPoseExpressionEstimator(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> HeadMotion in logits form (exp (B, K, 3))."""

    def __init__(self, cfg: HeadPoseConfig, num_kp: int = 15, image_channel: int = 3) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_kp = num_kp
        self.image_channel = image_channel
        w1, w2, w3, w4 = (cfg.max_features // 8, cfg.max_features // 4, cfg.max_features // 2, cfg.max_features)
        be = cfg.block_expansion
        self.conv1 = nn.Conv2d(image_channel, be, kernel_size=7, padding=3, stride=2)
        self.norm1 = nn.BatchNorm2d(be, affine=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(be, w1, kernel_size=1)
        self.norm2 = nn.BatchNorm2d(w1, affine=True)
        self.block1 = self._stack("b1", w1, 3)
        self.conv3 = nn.Conv2d(w1, w2, kernel_size=1)
        self.norm3 = nn.BatchNorm2d(w2, affine=True)
        self.block2 = ResBottleneck(w2, stride=2)
        self.block3 = self._stack("b3", w2, 3)
        self.conv4 = nn.Conv2d(w2, w3, kernel_size=1)
        self.norm4 = nn.BatchNorm2d(w3, affine=True)
        self.block4 = ResBottleneck(w3, stride=2)
        self.block5 = self._stack("b5", w3, 5)
        self.conv5 = nn.Conv2d(w3, w4, kernel_size=1)
        self.norm5 = nn.BatchNorm2d(w4, affine=True)
        self.block6 = ResBottleneck(w4, stride=2)
        self.block7 = self._stack("b7", w4, 2)
        self.fc_roll = nn.Linear(w4, cfg.num_bins)
        self.fc_pitch = nn.Linear(w4, cfg.num_bins)
        self.fc_yaw = nn.Linear(w4, cfg.num_bins)
        self.fc_t = nn.Linear(w4, 3)
        self.fc_exp = nn.Linear(w4, 3 * num_kp)
        if cfg.zero_init_motion:
            for head in (self.fc_t, self.fc_exp):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    @staticmethod
    def _stack(prefix: str, channels: int, n: int) -> nn.Sequential:
        seq = nn.Sequential()
        for i in range(n):
            seq.add_module(f"{prefix}_{i}", ResBottleneck(channels, stride=1))
        return seq

    def forward(self, image: torch.Tensor) -> HeadMotion:
        """Args:
            image: (B, 3, H, W) in [0, 1] (H, W >= 32).
        Returns:
            HeadMotion with yaw/pitch/roll (B, bins) logits, t (B, 3), exp (B, K, 3).
        """
        if image.dim() != 4 or image.shape[1] != self.image_channel:
            raise ValueError(f"HeadPoseExpressionEstimator: expected (B, {self.image_channel}, H, W), "
                             f"got {tuple(image.shape)}")
        out = self.maxpool(F.relu(self.norm1(self.conv1(image))))  # (B, be, H/4, W/4)
        out = self.block1(F.relu(self.norm2(self.conv2(out))))  # (B, w1, H/4, W/4)
        out = self.block2(F.relu(self.norm3(self.conv3(out))))  # (B, w2, H/8, W/8)
        out = self.block3(out)
        out = self.block4(F.relu(self.norm4(self.conv4(out))))  # (B, w3, H/16, W/16)
        out = self.block5(out)
        out = self.block6(F.relu(self.norm5(self.conv5(out))))  # (B, w4, H/32, W/32)
        out = self.block7(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, w4)
        exp = self.fc_exp(out).view(out.shape[0], self.num_kp, 3)  # (B, K, 3)
        return HeadMotion(yaw=self.fc_yaw(out), pitch=self.fc_pitch(out), roll=self.fc_roll(out),
                          t=self.fc_t(out), exp=exp)
