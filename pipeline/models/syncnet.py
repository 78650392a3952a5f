"""SyncNet lip-sync expert (Chung & Zisserman 2016; thesis §2.3.1, Fig. 2.10; method.md §6.1).

Two streams map a 5-frame face window and the 20 MFCC rows of the same 0.2 s to one embedding space; the distance
``d = ||v - a||_2`` (thesis Eq. 2.15) is small for synchronised pairs. The layout is that of joonson/syncnet_python's
``SyncNetModel.S``: module names ``netcnnaud`` / ``netfcaud`` / ``netcnnlip`` / ``netfclip`` and the indices inside each
``nn.Sequential`` are kept, so the public ``syncnet_v2.model`` state dict loads strictly into
``SyncNet(SyncNetConfig.syncnet_v2())`` (:func:`load_syncnet_v2`).

Input conventions (syncnet_python's, for every config so that trained and public weights are used alike):
- video: ``(B, 3, 5, H, W)`` float **BGR** values in 0..255, no normalisation (cv2 images stacked along time);
- audio: ``(B, 1, 13, 20)`` psf MFCC of **int16-scale** PCM (13 cepstra x 20 rows of 10 ms), no normalisation.
  Feature files store float-scale MFCC; :func:`pipeline.data.syncnet.syncnet_audio` computes this input from the wav.

The small configs keep every layer and stride and shrink only channel widths and the input side; the last lip
convolution's kernel is derived from the input side so the lip stream always ends at 1x1 (224 -> 6, 64 -> 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.audio import MFCC_ROWS_PER_VIDEO_FRAME, MFCC_WINDOW_VIDEO_FRAMES, N_MFCC
from pipeline.checkpoint import WeightsError, load_model, load_state_strict, read_weight_file
from pipeline.config import from_dict

CHECKPOINT_KIND = "syncnet"  # checkpoints written by the train_syncnet stage

WINDOW_FRAMES = MFCC_WINDOW_VIDEO_FRAMES  # 5 video frames per window
MFCC_ROWS = MFCC_WINDOW_VIDEO_FRAMES * MFCC_ROWS_PER_VIDEO_FRAME  # 20 MFCC rows (100 Hz) per window
SYNCNET_V2_IMAGE_SIZE = 224  # side of syncnet_python's face crops


def _lip_spatial_sizes(image_size: int) -> list[int]:
    """Side of the lip stream's feature map after each spatial stage, before the last conv (see :class:`SyncNet`)."""
    def out(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1

    sizes = [image_size]
    sizes.append(out(sizes[-1], 7, 2, 0))  # conv 0
    sizes.append(out(sizes[-1], 3, 2, 0))  # pool 3
    sizes.append(out(sizes[-1], 5, 2, 1))  # conv 4
    sizes.append(out(sizes[-1], 3, 2, 1))  # pool 7 (convs 8, 11, 14 keep the size)
    sizes.append(out(sizes[-1], 3, 2, 0))  # pool 17
    return sizes


@dataclass(frozen=True)
class SyncNetConfig:
    """Model size and input of a SyncNet. Defaults are syncnet_v2's (`SyncNetConfig.syncnet_v2()`).

    Attributes:
        image_size: side of the square face input (syncnet_v2: 224; the last lip conv kernel follows from it).
        face_region: what the square shows: ``lower`` = lower half of the face crop (Wav2Lip's expert),
            ``full`` = the whole crop (syncnet_python feeds its whole face-track crop), ``mouth`` = a square
            centred on each frame's mouth landmarks, nose tip to chin (see :func:`pipeline.data.syncnet.face_region`).
        audio_channels: widths of the 6 convs of ``netcnnaud`` (syncnet_v2: 64, 192, 384, 256, 256, 512).
        lip_channels: widths of the 6 convs of ``netcnnlip`` (syncnet_v2: 96, 256, 256, 256, 256, 512).
        fc_hidden: hidden width of ``netfcaud`` / ``netfclip`` (syncnet_v2: 512).
        embed_dim: embedding size, the fc7 features a and v of thesis Eq. 2.15 (syncnet_v2: 1024).
    """

    image_size: int = SYNCNET_V2_IMAGE_SIZE
    face_region: Literal["lower", "full", "mouth"] = "full"
    audio_channels: tuple[int, ...] = (64, 192, 384, 256, 256, 512)
    lip_channels: tuple[int, ...] = (96, 256, 256, 256, 256, 512)
    fc_hidden: int = 512
    embed_dim: int = 1024

    @classmethod
    def syncnet_v2(cls) -> "SyncNetConfig":
        """The exact public syncnet_v2 layout."""
        return cls()

    @property
    def lip_last_kernel(self) -> int:
        """Spatial kernel of the last lip conv (index 18): the side of the map it sees (6 at 224, 1 at 64)."""
        return _lip_spatial_sizes(self.image_size)[-1]

    def validate(self) -> None:
        if len(self.audio_channels) != 6 or len(self.lip_channels) != 6:
            raise ValueError(f"audio_channels and lip_channels need 6 widths each (the 6 convs of each stream), got "
                             f"{len(self.audio_channels)} and {len(self.lip_channels)}")
        if min(self.audio_channels + self.lip_channels + (self.fc_hidden, self.embed_dim)) <= 0:
            raise ValueError("channel widths, fc_hidden and embed_dim must be positive")
        if any(n < 1 for n in _lip_spatial_sizes(self.image_size)):
            smallest = next(n for n in range(1, 1024) if min(_lip_spatial_sizes(n)) >= 1)
            raise ValueError(f"image_size {self.image_size} is too small for the lip stream (needs >= {smallest})")


@dataclass(frozen=True)
class SyncNetOutput:
    """Embeddings of a batch of windows: video v (B, D) and audio a (B, D) of thesis Eq. 2.15."""

    video: torch.Tensor
    audio: torch.Tensor


def _fc(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``netfcaud`` / ``netfclip``: 0 Linear, 1 BatchNorm1d, 2 ReLU, 3 Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class SyncNet(nn.Module):
    """Two-stream SyncNet; ``forward_lip`` / ``forward_aud`` give v and a of thesis Eq. 2.15.

    Audio stream (13 x 20 MFCC image): 3x3 convs with a (3, 3)/(1, 2) and a (3, 3)/(2, 2) max-pool, then a (5, 4)
    conv to 1x1. Lip stream: a (5, 7, 7) 3D conv collapses the 5 frames, then 2D-like (1, k, k) convs and pools.
    """

    def __init__(self, cfg: SyncNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c1, c2, c3, c4, c5, c6 = cfg.audio_channels
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),  # 0: (B, c1, 13, 20)
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # 3: identity, kept for the indices
            nn.Conv2d(c1, c2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),  # 4
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 7: (B, c2, 11, 9)
            nn.Conv2d(c2, c3, kernel_size=(3, 3), padding=(1, 1)),  # 8
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=(3, 3), padding=(1, 1)),  # 11
            nn.BatchNorm2d(c4),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=(3, 3), padding=(1, 1)),  # 14
            nn.BatchNorm2d(c5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17: (B, c5, 5, 4)
            nn.Conv2d(c5, c6, kernel_size=(5, 4), padding=(0, 0)),  # 18: (B, c6, 1, 1)
            nn.BatchNorm2d(c6),
            nn.ReLU(),
        )
        self.netfcaud = _fc(c6, cfg.fc_hidden, cfg.embed_dim)
        self.netfclip = _fc(cfg.lip_channels[-1], cfg.fc_hidden, cfg.embed_dim)
        l1, l2, l3, l4, l5, l6 = cfg.lip_channels
        k = cfg.lip_last_kernel
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, l1, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),  # 0: (B, l1, 1, 109, 109) at 224
            nn.BatchNorm3d(l1),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 3: (B, l1, 1, 54, 54)
            nn.Conv3d(l1, l2, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 4: (B, l2, 1, 26, 26)
            nn.BatchNorm3d(l2),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7: (B, l2, 1, 13, 13)
            nn.Conv3d(l2, l3, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 8
            nn.BatchNorm3d(l3),
            nn.ReLU(inplace=True),
            nn.Conv3d(l3, l4, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 11
            nn.BatchNorm3d(l4),
            nn.ReLU(inplace=True),
            nn.Conv3d(l4, l5, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 14
            nn.BatchNorm3d(l5),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 17: (B, l5, 1, 6, 6) at 224
            nn.Conv3d(l5, l6, kernel_size=(1, k, k), padding=0),  # 18: (B, l6, 1, 1, 1)
            nn.BatchNorm3d(l6),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio embedding a: (B, 1, 13, 20) int16-scale MFCC -> (B, D)."""
        if audio.ndim != 4 or tuple(audio.shape[1:]) != (1, N_MFCC, MFCC_ROWS):
            raise ValueError(f"SyncNet audio input must be (B, 1, {N_MFCC}, {MFCC_ROWS}), got {tuple(audio.shape)}")
        mid = self.netcnnaud(audio)  # (B, C, 1, 1)
        return self.netfcaud(mid.flatten(1))  # (B, C) -> (B, D)

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding v: (B, 3, 5, H, W) BGR 0..255 -> (B, D)."""
        s = self.cfg.image_size
        if video.ndim != 5 or tuple(video.shape[1:]) != (3, WINDOW_FRAMES, s, s):
            raise ValueError(f"SyncNet video input must be (B, 3, {WINDOW_FRAMES}, {s}, {s}), "
                             f"got {tuple(video.shape)}")
        mid = self.netcnnlip(video)  # (B, C, 1, 1, 1)
        return self.netfclip(mid.flatten(1))  # (B, C) -> (B, D)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> SyncNetOutput:
        return SyncNetOutput(video=self.forward_lip(video), audio=self.forward_aud(audio))


def load_syncnet_v2(path: str | os.PathLike[str]) -> SyncNet:
    """The public ``syncnet_v2.model`` (joonson/syncnet_python, ``download_model.sh``) as a :class:`SyncNet`.

    The file is a plain state dict of ``SyncNetModel.S`` with no prefix. It was written by a PyTorch older than 0.4.1,
    so it has no BatchNorm ``num_batches_tracked`` buffers: missing ones are filled with 0 (they only matter for
    BatchNorm's cumulative-average momentum mode, which SyncNet does not use). Every other key must match name and
    shape exactly.

    Raises:
        WeightsError: the file is missing/unreadable or does not fit the syncnet_v2 layout (keys are listed).
    """
    model = SyncNet(SyncNetConfig.syncnet_v2())
    state = read_weight_file(path, nested_keys=())
    own = model.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            prefix = key[: -len("num_batches_tracked")]
            if prefix + "running_mean" in state:  # fill only for BatchNorm layers the file has
                state[key] = torch.zeros_like(own[key])
    load_state_strict(model, state, f"{path} (syncnet_v2)")
    return model.eval()


def load_syncnet(path: str | os.PathLike[str], *, frozen: bool = True, device: str | torch.device = "cpu") -> SyncNet:
    """A SyncNet trained by the train_syncnet stage (``syncnet`` checkpoint), rebuilt from the
    :class:`SyncNetConfig` stored beside the weights (``config["model"]``), in eval mode."""
    return load_model(path, CHECKPOINT_KIND,
                      lambda state: SyncNet(from_dict(SyncNetConfig, state["config"]["model"], "model")),
                      frozen=frozen, device=device)


__all__ = ["CHECKPOINT_KIND", "SyncNet", "SyncNetConfig", "SyncNetOutput", "load_syncnet", "load_syncnet_v2",
           "WeightsError", "WINDOW_FRAMES", "MFCC_ROWS"]
