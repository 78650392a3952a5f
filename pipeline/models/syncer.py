"""MS-Sync syncer S^i (MS-Sync §3.1, MS-Sync Eq. 3; method.md §6.2): audio and motion 1D-conv encoders, cosine score.

One syncer sees one window of one pyramid level: ``audio_rows`` = 4 x ``window`` log-filterbank rows
(26 bands) and ``window`` motion steps (landmark coordinates, see `pipeline.data.syncers.motion_features`).
Both encoders end in an L2 normalisation, so the score ``S(a, x) = e_a(a)^T e_x(x)`` is the cosine of
MS-Sync Eq. 3 and the L2 distance between embeddings (used by the offset search) is ``sqrt(2 - 2 S)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.audio import MFCC_ROWS_PER_VIDEO_FRAME, N_FILTERBANK
from pipeline.checkpoint import load_model
from pipeline.config import from_dict

CHECKPOINT_KIND = "syncers"  # one checkpoint holds every syncer of the train_syncers stage, by name


@dataclass(frozen=True)
class SyncerConfig:
    """Dimensions of one syncer.

    Attributes:
        motion_channels: C of the motion input, 2 x the number of landmarks (136 for all 68, 62 for the 31 rigid).
        audio_channels: log filterbank bands (26).
        window: motion steps per window (5 at every level).
        hidden: width of the first conv layer of each encoder (the later layers use 2 x hidden).
        embed_dim: size of the L2-normalised embeddings (MS-Sync: 512).
    """

    motion_channels: int
    audio_channels: int = N_FILTERBANK
    window: int = 5
    hidden: int = 64
    embed_dim: int = 64

    @property
    def audio_rows(self) -> int:
        return self.window * MFCC_ROWS_PER_VIDEO_FRAME  # 20 rows of 100 Hz features for 5 steps


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class AudioEncoder(nn.Module):
    """e_a: (B, 26, 20) log filterbank window -> (B, D) unit vector. Two stride-2 convs bring 20 rows to 5."""

    def __init__(self, cfg: SyncerConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.convs = nn.Sequential(
            _conv(cfg.audio_channels, h),  # (B, h, 20)
            _conv(h, h, stride=2),  # (B, h, 10)
            _conv(h, 2 * h, stride=2),  # (B, 2h, 5)
            _conv(2 * h, 2 * h),  # (B, 2h, 5)
        )
        steps = (cfg.audio_rows + 3) // 4
        self.proj = nn.Linear(2 * h * steps, cfg.embed_dim)
        self.cfg = cfg

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        assert audio.shape[1:] == (cfg.audio_channels, cfg.audio_rows), f"audio window {tuple(audio.shape)}"
        h = self.convs(audio).flatten(1)  # (B, 2h * 5)
        return F.normalize(self.proj(h), dim=-1)  # (B, D)


class MotionEncoder(nn.Module):
    """e_x: (B, C, 5) motion window -> (B, D) unit vector (three same-length convs, flatten, linear)."""

    def __init__(self, cfg: SyncerConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.convs = nn.Sequential(
            _conv(cfg.motion_channels, h),  # (B, h, 5)
            _conv(h, 2 * h),  # (B, 2h, 5)
            _conv(2 * h, 2 * h),  # (B, 2h, 5)
        )
        self.proj = nn.Linear(2 * h * cfg.window, cfg.embed_dim)
        self.cfg = cfg

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        assert motion.shape[1:] == (cfg.motion_channels, cfg.window), f"motion window {tuple(motion.shape)}"
        h = self.convs(motion).flatten(1)  # (B, 2h * 5)
        return F.normalize(self.proj(h), dim=-1)  # (B, D)


class Syncer(nn.Module):
    """Syncer S^i of MS-Sync: ``S(a, x) = cos(e_a(a), e_x(x))`` (MS-Sync Eq. 3) for one pyramid level."""

    def __init__(self, cfg: SyncerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg)
        self.motion = MotionEncoder(cfg)

    def forward(self, audio: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Scores of each audio window against K motion windows.

        Args:
            audio: (B, 26, 20) audio windows.
            motion: (B, K, C, 5) motion windows (K = 1 for plain pairs; 1 + N for InfoNCE, positive first).

        Returns:
            (B, K) cosine scores in [-1, 1].
        """
        b, k = motion.shape[:2]
        e_a = self.audio(audio)  # (B, D)
        e_x = self.motion(motion.flatten(0, 1)).view(b, k, -1)  # (B*K, C, 5) -> (B, K, D)
        return torch.einsum("bd,bkd->bk", e_a, e_x)  # (B, K)


def _build_syncers(state: Mapping[str, Any]) -> nn.ModuleDict:
    configs = state["extra"].get("syncers")
    if not configs:
        raise KeyError("extra.syncers (the per-syncer configs)")
    return nn.ModuleDict({name: Syncer(from_dict(SyncerConfig, c, f"syncers.{name}")) for name, c in configs.items()})


def load_syncers(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, Syncer]:
    """Every syncer of a ``syncers`` checkpoint (train_syncers stage) by name (``ms1..ms4``, ``rigid1..rigid3``),
    rebuilt from the configs stored beside the weights, frozen and in eval mode."""
    syncers = load_model(path, CHECKPOINT_KIND, _build_syncers, frozen=True, device=device)
    return dict(syncers.items())

