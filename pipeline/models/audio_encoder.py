"""Wav2Lip / SadTalker mel audio encoder: one 0.2 s mel window (1 x 80 x 16) -> a 512-d feature.

The layer list, its order and the module names are exactly those of Wav2Lip's ``audio_encoder`` (``models/wav2lip.py``
and ``models/syncnet.py``), which SadTalker copies into Audio2Exp (``audio2exp_models/networks.py``) and Audio2Pose
(``audio2pose_models/audio_encoder.py``). The state-dict keys of this module are therefore the ``audio_encoder.*``
keys of ``wav2lip.pth`` / ``lipsync_expert.pth`` / SadTalker's checkpoints with that prefix removed
(``0.conv_block.0.weight``, ``0.conv_block.1.running_mean``, ...), and a public checkpoint loads strictly
(see :func:`pipeline.models.tavc.load_pretrained`).

Used by the TAVC metric (method.md §3.1, ``E^a`` before its FC -> 128) and meant to be reused by Audio2Coeff /
ExpNet (method.md §5). A width multiplier scales every channel count for small CPU configurations; pretrained
weights need ``width = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.audio import MEL_WINDOW_FRAMES, N_MELS

# Wav2Lip's audio_encoder, layer by layer: (in channels, out channels, kernel, stride, padding, residual).
# Spatial size (mel bands x mel frames) after each stride: 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1.
WAV2LIP_AUDIO_LAYERS: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)
WAV2LIP_AUDIO_FEATURES = WAV2LIP_AUDIO_LAYERS[-1][1]  # 512


def scaled_channels(channels: int, width: float) -> int:
    """Channel count scaled by a width multiplier (at least 1); the input channel (1, a mel window) is never scaled."""
    return channels if channels == 1 else max(1, int(round(channels * width)))


class ConvBlock(nn.Module):
    """Wav2Lip's ``Conv2d`` block: ``conv_block`` = (Conv2d, BatchNorm2d), optional identity residual, then ReLU.

    Keeping the attribute name ``conv_block`` (a Sequential of conv 0 and batch norm 1) keeps the public keys.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False, use_act: bool = True) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise ValueError(f"a residual block needs cin == cout and stride 1, got {cin}->{cout}, stride {stride}")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual
        self.use_act = use_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out) if self.use_act else out


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Width of the Wav2Lip mel encoder.

    Attributes:
        width: multiplier of every channel count (1.0 = Wav2Lip, 512-d output; 0.25 = 128-d output).
    """

    width: float = 1.0

    def validate(self) -> None:
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")


class AudioEncoder(nn.Sequential):
    """Wav2Lip/SadTalker ``audio_encoder``: mel window (B, 1, 80, 16) -> feature (B, 512 * width).

    A subclass of ``nn.Sequential`` so that its keys are Wav2Lip's (``<layer>.conv_block.<0|1>.*``) with nothing in
    between; a parent module that names it ``audio_encoder`` has exactly the public checkpoints' keys.
    """

    def __init__(self, cfg: AudioEncoderConfig = AudioEncoderConfig()) -> None:
        cfg.validate()
        layers = [ConvBlock(scaled_channels(cin, cfg.width), scaled_channels(cout, cfg.width), k, s, p, residual=r)
                  for cin, cout, k, s, p, r in WAV2LIP_AUDIO_LAYERS]
        super().__init__(*layers)
        self.cfg = cfg
        self.out_features = scaled_channels(WAV2LIP_AUDIO_FEATURES, cfg.width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Args: mel (B, 1, 80, 16) windows of :func:`pipeline.audio.mel_windows`. Returns (B, out_features)."""
        if mel.ndim != 4 or tuple(mel.shape[1:]) != (1, N_MELS, MEL_WINDOW_FRAMES):
            raise ValueError(f"AudioEncoder expects mel windows (B, 1, {N_MELS}, {MEL_WINDOW_FRAMES}), "
                             f"got {tuple(mel.shape)}")
        x = super().forward(mel)  # (B, C, 1, 1)
        return x.flatten(1)  # (B, C)
