"""MS-Sync's multi-scale autoregressive motion generator and its two discriminators (MS-Sync §3.2–3.3, MS-Sync
Eq. 8–13; method.md §5.3), generating this project's head-pose coefficients instead of FOMM keypoints.

Generator (MS-Sync Fig. 3), on normalised poses ``x_t`` (6-d: yaw, pitch, roll, tx, ty, tz, each standardised
with the training set's mean and std; `pipeline.models.audio2coeff.Audio2Coeff` does the (un)normalisation):

- **residual autoregression**, MS-Sync Eq. 8–9: ``v_{t+1} = G(x_{0:t}, a_{t+1})``, ``x_{t+1} = x_t + v_{t+1}``;
- **temporal module**: a causal Transformer encoder over the embedded positions ``x_{0:t}`` (sinusoidal time
  encoding); ``h_t`` is its output at t (4 layers x 8 heads, 512-d at full size);
- **multi-scale module**: the FPN bottom-up path over the audio: per-frame mel windows -> Wav2Lip mel encoder ->
  ``a^1`` (T x d), then ``levels - 1`` stride-2 convs give ``a^2 .. a^L`` at the pyramid resolutions of the
  multi-scale sync loss, each interpolated back to T. Branch i maps ``[a^i_{t+1}; x_t; h_t]`` through its own
  MLP to a velocity ``v^i`` (6) and mask logits ``w^i`` (2: one for the rotation, one for the translation, shared by
  the group's 3 coordinates, as MS-Sync shares one mask value over a keypoint's 6 values);
- **merge**, MS-Sync Eq. 10: ``v = sum_i softmax_i(w^i) v^i`` (`merge_branches`).

Discriminators (geometric GAN, MS-Sync Eq. 11–13 in `pipeline.losses.audio2coeff`): `FrameDiscriminator` D_f (an
MLP on single poses) and `WindowDiscriminator` D_s (one LSTM per pyramid level of the pose sequence, scores
averaged: the "window-based multi-scale" discriminator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from pipeline.pyramid import build_pyramid

POSE_DIM = 6
GROUPS = (slice(0, 3), slice(3, 6))  # rotation, translation: one mask value each (MS-Sync Eq. 10)


@dataclass(frozen=True)
class MSSyncConfig:
    """Generator and discriminator sizes (defaults: MS-Sync §4.1, 512-d, 4 layers x 8 heads, 4 levels).

    Attributes:
        audio_width: channel multiplier of the Wav2Lip mel encoder of the audio path.
        d_model: width of the temporal module and of the audio feature maps.
        layers, heads: Transformer encoder layers and attention heads.
        levels: audio pyramid levels = branches (those of the multi-scale sync loss).
        branch_hidden: hidden width of each branch MLP.
        frame_disc_hidden: hidden width of D_f.
        window_disc_hidden: LSTM width of D_s.
    """

    audio_width: float = 1.0
    d_model: int = 512
    layers: int = 4
    heads: int = 8
    levels: int = 4
    branch_hidden: int = 512
    frame_disc_hidden: int = 512
    window_disc_hidden: int = 256

    def validate(self) -> None:
        AudioEncoderConfig(self.audio_width).validate()
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by heads {self.heads}")
        for name in ("d_model", "layers", "heads", "levels", "branch_hidden", "frame_disc_hidden",
                     "window_disc_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def time_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) sinusoidal encoding of positions 0..length-1 (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim, device=device)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return enc


def merge_branches(velocities: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """MS-Sync Eq. 10: ``v = sum_i (e^{w^i} / sum_j e^{w^j}) v^i``, one mask value per coordinate group.

    Args:
        velocities: (B, L, 6) branch velocities v^i.
        mask_logits: (B, L, G) mask logits w^i, one per group of `GROUPS`.

    Returns:
        (B, 6).
    """
    weights = torch.softmax(mask_logits, dim=1)  # (B, L, G), softmax over the branches
    per_coord = torch.cat([weights[..., g:g + 1].expand(-1, -1, s.stop - s.start) for g, s in enumerate(GROUPS)],
                          dim=-1)  # (B, L, 6)
    return (per_coord * velocities).sum(dim=1)  # (B, 6)


class MSSyncGenerator(nn.Module):
    """G of MS-Sync Eq. 8: the temporal (Transformer) and multi-scale (FPN branches) modules."""

    def __init__(self, cfg: MSSyncConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.audio_encoder = AudioEncoder(AudioEncoderConfig(cfg.audio_width))
        self.audio_proj = nn.Linear(self.audio_encoder.out_features, d)
        self.audio_down = nn.ModuleList([nn.Sequential(nn.Conv1d(d, d, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
                                         for _ in range(cfg.levels - 1)])
        self.pose_embed = nn.Linear(POSE_DIM, d)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.branches = nn.ModuleList([
            nn.Sequential(nn.Linear(2 * d + POSE_DIM, cfg.branch_hidden), nn.LeakyReLU(0.2),
                          nn.Linear(cfg.branch_hidden, POSE_DIM + len(GROUPS)))
            for _ in range(cfg.levels)])
        for branch in self.branches:  # start still: small velocities, equal masks
            nn.init.normal_(branch[-1].weight, std=1e-3)
            nn.init.zeros_(branch[-1].bias)

    def audio_pyramid(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, 1, 80, 16) mel windows -> (B, L, T, d): a^1..a^L, each interpolated back to T frames."""
        b, t = mel.shape[:2]
        a = self.audio_proj(self.audio_encoder(mel.flatten(0, 1))).view(b, t, -1).transpose(1, 2)  # (B, d, T)
        maps = [a]
        for down in self.audio_down:
            maps.append(down(maps[-1]))  # (B, d, ceil(T / 2^i))
        up = [m if m.shape[-1] == t else F.interpolate(m, size=t, mode="linear", align_corners=False) for m in maps]
        return torch.stack(up, dim=1).transpose(2, 3)  # (B, L, T, d)

    def forward(self, x0: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Free-running generation of T poses after x_0.

        Args:
            x0: (B, 6) normalised initial pose.
            mel: (B, T, 1, 80, 16) mel windows of frames 1..T.

        Returns:
            (B, T, 6) normalised poses x_1..x_T.
        """
        t = mel.shape[1]
        audio = self.audio_pyramid(mel)  # (B, L, T, d)
        enc = time_encoding(t + 1, self.cfg.d_model, mel.device)  # (T+1, d)
        causal = torch.triu(torch.full((t + 1, t + 1), float("-inf"), device=mel.device), diagonal=1)
        xs = [x0]
        tokens = [self.pose_embed(x0)]  # list of (B, d)
        for step in range(t):
            seq = torch.stack(tokens, dim=1) + enc[: step + 1]  # (B, step+1, d)
            h = self.temporal(seq, mask=causal[: step + 1, : step + 1])[:, -1]  # (B, d): h_t
            inp = [torch.cat([audio[:, i, step], xs[-1], h], dim=-1) for i in range(self.cfg.levels)]  # L x (B, 2d+6)
            out = torch.stack([branch(x) for branch, x in zip(self.branches, inp)], dim=1)  # (B, L, 6 + G)
            v = merge_branches(out[..., :POSE_DIM], out[..., POSE_DIM:])  # (B, 6), MS-Sync Eq. 10
            xs.append(xs[-1] + v)  # MS-Sync Eq. 9
            tokens.append(self.pose_embed(xs[-1]))
        return torch.stack(xs[1:], dim=1)  # (B, T, 6)


class FrameDiscriminator(nn.Module):
    """D_f: one pose (.., 6) -> a realism score (..,)."""

    def __init__(self, cfg: MSSyncConfig) -> None:
        super().__init__()
        h = cfg.frame_disc_hidden
        self.mlp = nn.Sequential(nn.Linear(POSE_DIM, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2),
                                 nn.Linear(h, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)[..., 0]


class WindowDiscriminator(nn.Module):
    """D_s: a pose sequence (B, T, 6) -> (B,) realism score, the mean of one LSTM critic per pyramid level
    (MS-Sync Eq. 5 pooling of the sequence, coarser levels judging slower motion)."""

    def __init__(self, cfg: MSSyncConfig) -> None:
        super().__init__()
        h = cfg.window_disc_hidden
        self.levels = cfg.levels
        self.lstms = nn.ModuleList([nn.LSTM(2 * POSE_DIM, h, batch_first=True) for _ in range(cfg.levels)])
        self.heads = nn.ModuleList([nn.Linear(h, 1) for _ in range(cfg.levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = []
        for lstm, head, xi in zip(self.lstms, self.heads, build_pyramid(x, self.levels, dim=1)):
            vel = torch.diff(xi, dim=1, prepend=xi[:, :1])  # (B, T_i, 6): positions and velocities
            out, _ = lstm(torch.cat([xi, vel], dim=-1))  # (B, T_i, h)
            scores.append(head(out[:, -1])[:, 0])  # (B,)
        return torch.stack(scores, 0).mean(0)  # (B,)


class MSSync(nn.Module):
    """The MS-Sync pose model: ``generator`` and the discriminators ``frame_disc`` (D_f), ``window_disc`` (D_s)."""

    def __init__(self, cfg: MSSyncConfig = MSSyncConfig()) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.generator = MSSyncGenerator(cfg)
        self.frame_disc = FrameDiscriminator(cfg)
        self.window_disc = WindowDiscriminator(cfg)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.frame_disc.parameters()) + list(self.window_disc.parameters())

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())
