"""TAVC similarity of a generated video (TAVCE §III-B, Eq. 2-3; the paper's own audio-visual metric): for every
pair of consecutive frames (i-1, i), ``⟨C^a_{i-1,i}, C^v_{i-1,i}⟩`` between the relationship matrices of the audio
features of their mel windows and of the visual features of their mouth ROIs, with the TAVC networks trained by the
``train_tavc`` stage (labelled ``tavc_tavce``), averaged over the clip. A frozen mouth has no visual change, hence
similarity 0; lips that move with the speech score high (paper, ground truth: 0.507 vs 0.158 for mismatched frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.audio import mel_windows, wav2lip_mel
from pipeline.data.corpus import mouth_roi, to_unit_range
from pipeline.losses.tavc import tavc_similarity
from pipeline.models.tavc import TAVC

TAVC_NAME = "tavc_tavce"


@dataclass(frozen=True)
class TavcResult:
    similarity: float
    pairs: int
    extractor: str = TAVC_NAME


@torch.no_grad()
def tavc_video_similarity(model: TAVC, frames: np.ndarray, wav: np.ndarray, landmarks: np.ndarray,
                          batch_size: int = 64) -> TavcResult:
    """Mean TAVC similarity of consecutive frames of (T, H, W, 3) uint8 `frames` with their (S,) 16 kHz audio;
    `landmarks` (T, 68, 2+) in frame pixels place the mouth ROIs."""
    model = model.eval()
    T = min(len(frames), len(landmarks))
    if T < 2:
        raise ValueError(f"TAVC similarity needs at least 2 frames, got {T}")
    mel = mel_windows(wav2lip_mel(wav), range(T))[:, None]  # (T, 1, 80, 16)
    rois = np.stack([mouth_roi(frames[t], landmarks[t]) for t in range(T)])  # (T, 112, 112, 3)
    f_a, f_v = [], []
    for s in range(0, T, batch_size):
        fa, fv = model(torch.from_numpy(mel[s:s + batch_size]).float(),
                       torch.from_numpy(to_unit_range(rois[s:s + batch_size])))  # (b, D), (b, D)
        f_a.append(fa)
        f_v.append(fv)
    fa, fv = torch.cat(f_a), torch.cat(f_v)  # (T, D)
    sim = tavc_similarity(fa[:-1], fa[1:], fv[:-1], fv[1:])  # (T-1,)
    return TavcResult(float(sim.mean()), T - 1)
