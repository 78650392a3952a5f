"""TAVC similarity of a generated video (TAVCE §III-B, Eq. 2-3; the paper's own audio-visual metric): for every
pair of consecutive frames (i-1, i), ``⟨C^a_{i-1,i}, C^v_{i-1,i}⟩`` between the relationship matrices of the audio
features of their mel windows and of the visual features of their mouth ROIs, with the TAVC networks trained by the
``train_tavc`` stage (labelled ``tavc_tavce``), averaged over the clip. A frozen mouth has no visual change, hence
similarity 0; lips that move with the speech score high (paper, ground truth: 0.507 vs 0.158 for mismatched frames).

Both mouth ROIs of a pair are cut at the same place, the mean of the two frames' landmarks: the similarity is a
squared cosine, blind to the size of the visual change, so ROIs placed by each frame's own landmarks would turn a
tracker's sub-pixel jitter on a still video into a full-size "change" (a static video then scored 0.45 here instead
of 0). With a shared crop only what changes in the image counts.
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
    mel = torch.from_numpy(mel_windows(wav2lip_mel(wav), range(T))[:, None]).float()  # (T, 1, 80, 16)
    lm = np.asarray(landmarks[:T], dtype=np.float64)
    f_a, f_prev, f_cur = [], [], []
    for s in range(0, T, batch_size):
        f_a.append(model.encode_audio(mel[s:s + batch_size]))  # (b, D)
    for s in range(1, T, batch_size):
        idx = range(s, min(T, s + batch_size))
        mid = [(lm[i - 1] + lm[i]) / 2 for i in idx]  # one crop per pair
        prev = np.stack([mouth_roi(frames[i - 1], m) for i, m in zip(idx, mid)])  # (b, 112, 112, 3)
        cur = np.stack([mouth_roi(frames[i], m) for i, m in zip(idx, mid)])
        f_prev.append(model.encode_visual(torch.from_numpy(to_unit_range(prev))))  # (b, D)
        f_cur.append(model.encode_visual(torch.from_numpy(to_unit_range(cur))))
    fa = torch.cat(f_a)  # (T, D)
    sim = tavc_similarity(fa[:-1], fa[1:], torch.cat(f_prev), torch.cat(f_cur))  # (T-1,)
    return TavcResult(float(sim.mean()), T - 1)
