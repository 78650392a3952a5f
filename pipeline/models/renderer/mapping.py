"""MappingNet (SadTalker; method.md §5): a window of 3DMM-style coefficients -> the renderer's head motion.

Input: (B, 70, 27) = 64 expression + 3 rotation + 3 translation coefficients over 27 frames centred on the
target frame. Layout (names as SadTalker's ``mapping.py``, so its checkpoint's ``mapping`` dict loads strictly):

    first      Conv1d(70, 1024, k=7)                               (B, 1024, 21)
    encoder_i  LeakyReLU(0.1) -> Conv1d(1024, 1024, k=3, dil=3)    (B, 1024, T-6), plus the residual out[:, :, 3:-3]
               three times: 21 -> 15 -> 9 -> 3
    pooling    adaptive average over time                          (B, 1024)
    heads      fc_yaw / fc_pitch / fc_roll (66 bins each), fc_t (3), fc_exp (K*3)

SadTalker's MappingNet uses each angle head for the angle it is named after (unlike its HEEstimator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.models.renderer.keypoints import POSE_BINS, HeadMotion

RECEPTIVE_CROP = 3  # each dilated k=3 conv (dilation 3) shortens the sequence by 6 = 2 x 3


@dataclass(frozen=True)
class MappingConfig:
    """MappingNet (defaults: SadTalker's ``mapping_params``).

    Attributes:
        coeff_dim: input coefficients per frame (70).
        descriptor_dim: channels of the 1D convs (1024).
        num_layers: dilated residual layers after ``first`` (3).
        num_kp: K, for the expression head (15).
        num_bins: pose bins per angle (66).
        window: input frames (27); must be >= 7 + 6 * num_layers.
        zero_init_motion: start fc_t and fc_exp at zero (weights and bias), so a new MappingNet moves the keypoints
            only by its rotation until the reconstruction asks for more (as ``head_pose.zero_init_motion``;
            decisions.md "When and why the mask collapses"). SadTalker's weights overwrite it.
        translation: ``learned`` (SadTalker: fc_t) or ``zero`` (t = 0: the face crops of this pipeline follow the
            head, so the translation left inside a crop is under a pixel at 64 px, and an unanchored fc_t drifts by
            10+ px; decisions.md "Motion from coefficients"). fc_t exists either way, so checkpoints keep one layout.
    """

    coeff_dim: int = 70
    descriptor_dim: int = 1024
    num_layers: int = 3
    num_kp: int = 15
    num_bins: int = POSE_BINS
    window: int = 27
    zero_init_motion: bool = False
    translation: Literal["learned", "zero"] = "learned"

    def validate(self) -> None:
        if self.translation not in ("learned", "zero"):
            raise ValueError(f"mapping.translation must be 'learned' or 'zero', got {self.translation!r}")
        for name in ("coeff_dim", "descriptor_dim", "num_kp", "num_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"mapping.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"mapping.num_layers must be >= 0, got {self.num_layers}")
        if self.window < 7 + 2 * RECEPTIVE_CROP * self.num_layers:
            raise ValueError(f"mapping.window must be >= {7 + 2 * RECEPTIVE_CROP * self.num_layers} for "
                             f"{self.num_layers} layers, got {self.window}")


class MappingNet(nn.Module):
    """Coefficient window (B, 70, 27) -> HeadMotion (logits; exp (B, K, 3))."""

    def __init__(self, cfg: MappingConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.descriptor_dim
        self.first = nn.Sequential(nn.Conv1d(cfg.coeff_dim, d, kernel_size=7, padding=0))
        for i in range(cfg.num_layers):
            setattr(self, f"encoder{i}",
                    nn.Sequential(nn.LeakyReLU(0.1), nn.Conv1d(d, d, kernel_size=3, padding=0, dilation=3)))
        self.pooling = nn.AdaptiveAvgPool1d(1)
        self.fc_roll = nn.Linear(d, cfg.num_bins)
        self.fc_pitch = nn.Linear(d, cfg.num_bins)
        self.fc_yaw = nn.Linear(d, cfg.num_bins)
        self.fc_t = nn.Linear(d, 3)
        self.fc_exp = nn.Linear(d, 3 * cfg.num_kp)
        if cfg.zero_init_motion:
            for head in (self.fc_t, self.fc_exp):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, coeffs: torch.Tensor) -> HeadMotion:
        """Args:
            coeffs: (B, coeff_dim, window).
        Returns:
            HeadMotion: yaw/pitch/roll (B, bins) logits, t (B, 3), exp (B, K, 3).
        """
        if coeffs.dim() != 3 or coeffs.shape[1:] != (self.cfg.coeff_dim, self.cfg.window):
            raise ValueError(f"MappingNet: expected (B, {self.cfg.coeff_dim}, {self.cfg.window}) coefficients, "
                             f"got {tuple(coeffs.shape)}")
        out = self.first(coeffs)  # (B, Dm, T-6)
        c = RECEPTIVE_CROP
        for i in range(self.cfg.num_layers):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, c:-c]  # (B, Dm, T' - 6)
        out = self.pooling(out).flatten(1)  # (B, Dm)
        exp = self.fc_exp(out).view(out.shape[0], self.cfg.num_kp, 3)  # (B, K, 3)
        t = self.fc_t(out) if self.cfg.translation == "learned" else out.new_zeros(out.shape[0], 3)
        return HeadMotion(yaw=self.fc_yaw(out), pitch=self.fc_pitch(out), roll=self.fc_roll(out), t=t, exp=exp)
