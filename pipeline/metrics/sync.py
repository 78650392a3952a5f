"""LSE-D / LSE-C / AV offset of a video with its audio: SyncNet embeddings + the offset search of
:mod:`pipeline.metrics.lse` (Chung & Zisserman; the Wav2Lip/SadTalker evaluation protocol).

The SyncNet is either the public ``syncnet_v2`` (``weights.syncnet_v2``: the network of the published LSE numbers,
labelled ``syncnet_v2``) or this project's SyncNet trained by the ``train_syncnet`` stage (labelled
``syncnet_tavce``), each with the face region it was trained on (``mouth``: a square on the mouth landmarks of each
frame, so landmarks are needed; ``lower`` / ``full``: crop-relative).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.audio import syncnet_input_mfcc
from pipeline.data.syncnet import WINDOW, audio_input, audio_windows, face_region, video_input
from pipeline.metrics.lse import lse
from pipeline.models.syncnet import SyncNet, load_syncnet, load_syncnet_v2

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
SYNCNET_SELF = "syncnet_tavce"
SYNCNET_V2 = "syncnet_v2"


@dataclass(frozen=True)
class LseResult:
    """AV offset (frames; syncnet_python's sign), LSE-D, LSE-C of one clip, and the SyncNet that measured them."""

    offset: int
    lse_d: float
    lse_c: float
    extractor: str


class SyncNetScorer:
    """A frozen SyncNet and the input conventions it was trained with."""

    def __init__(self, model: SyncNet, name: str, vshift: int = 15, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.name = name
        self.vshift = vshift
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str] | None, syncnet_v2: str | os.PathLike[str] | None = None,
             **kwargs: object) -> "SyncNetScorer":
        """``syncnet_v2`` weights when given, else the project's SyncNet checkpoint."""
        if syncnet_v2 is not None:
            return cls(load_syncnet_v2(syncnet_v2), SYNCNET_V2, **kwargs)  # type: ignore[arg-type]
        if checkpoint is None:
            raise ValueError("need a SyncNet checkpoint (models/syncnet/checkpoint.pt) or syncnet_v2 weights")
        return cls(load_syncnet(checkpoint), SYNCNET_SELF, **kwargs)  # type: ignore[arg-type]

    @torch.no_grad()
    def score(self, frames: np.ndarray, wav: np.ndarray, landmarks: np.ndarray | None = None,
              name: str = "video") -> LseResult:
        """LSE of (T, H, W, 3) uint8 frames with their (S,) 16 kHz audio; `landmarks` (T, 68, 2+) in frame pixels
        are needed by the ``mouth`` region (frames without a face must be filled in before, e.g. interpolated)."""
        cfg = self.model.cfg
        length = min(len(frames), len(wav) // SAMPLES_PER_FRAME)
        n = length - WINDOW
        if n < 1:
            raise ValueError(f"{name}: {length} usable frames; LSE needs more than {WINDOW}")
        faces = face_region(frames[:length], cfg.face_region, cfg.image_size,
                            None if landmarks is None else landmarks[:length])  # (T, S, S, 3)
        mfcc = syncnet_input_mfcc(wav)  # (N, 13)
        v, a = [], []
        for i in range(0, n, self.batch_size):
            ks = range(i, min(n, i + self.batch_size))
            win = np.stack([faces[k:k + WINDOW] for k in ks])  # (b, 5, S, S, 3)
            v.append(self.model.forward_lip(video_input(win).to(self.device)).cpu())
            a.append(self.model.forward_aud(audio_input(audio_windows(mfcc, ks)).to(self.device)).cpu())
        r = lse(torch.cat(v), torch.cat(a), self.vshift)  # (N, D) each
        return LseResult(r.offset, r.lse_d, r.lse_c, self.name)
