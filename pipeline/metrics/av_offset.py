"""MS-Sync's rigid-motion AV offset (Airale et al., Table 2): how far the head motion of a video is from being in
sync with its audio, measured by the triplet syncers of the ``train_syncers`` stage on the 31 rigid landmarks 17-47
(``rigid1..rigid3``: 200 / 400 / 800 ms windows; labelled ``ms_sync_rigid_tavce``).

For each scale the whole clip's landmark motion (:func:`pipeline.data.syncers.motion_features`) and log filterbank
(:func:`pipeline.data.syncers.audio_features`) are pooled to that pyramid level, every window is embedded, and the
offset search of :mod:`pipeline.metrics.lse` gives the offset in steps of the level; |AV-Off| is reported in steps
(frames at 200 ms). Ground truth should score lower than randomly re-paired audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.audio import log_filterbank
from pipeline.data.corpus import RIGID
from pipeline.data.syncers import audio_features, motion_features
from pipeline.metrics.lse import lse
from pipeline.models.syncer import Syncer
from pipeline.pyramid import build_pyramid, level_windows

MS_SYNC_NAME = "ms_sync_rigid_tavce"
WINDOW_MS = 200  # level-1 window (5 frames at 25 fps); level i spans 200 * 2^(i-1) ms


@dataclass(frozen=True)
class AvOffsetResult:
    """|AV-Off| per scale (``{"200ms": steps, ...}``), the offsets with sign, and the syncers' name."""

    abs_offset: dict[str, int]
    offset: dict[str, int]
    extractor: str = MS_SYNC_NAME


def rigid_syncers(syncers: dict[str, Syncer]) -> list[Syncer]:
    """``rigid1``, ``rigid2``, ... of a loaded syncers checkpoint, in level order."""
    names = sorted((k for k in syncers if k.startswith("rigid")), key=lambda k: int(k[5:]))
    if not names:
        raise KeyError(f"no rigid syncers in the checkpoint (has {sorted(syncers)})")
    return [syncers[k] for k in names]


@torch.no_grad()
def rigid_av_offset(syncers: list[Syncer], landmarks: np.ndarray, wav: np.ndarray, vshift: int = 15
                    ) -> AvOffsetResult:
    """|AV-Off| at every scale of one clip from its (T, 68, 2+) landmarks (no NaN) and (S,) 16 kHz audio."""
    motion = build_pyramid(motion_features(landmarks, RIGID), len(syncers))  # [(T_i, 62)]
    audio = build_pyramid(audio_features(log_filterbank(wav)), len(syncers))  # [(4 T_i, 26)]
    out, signed = {}, {}
    for i, syncer in enumerate(syncers):
        scale = f"{WINDOW_MS * 2 ** i}ms"
        try:
            a_win, x_win = level_windows(audio[i], motion[i], syncer.cfg.window)  # (N, 26, 20), (N, 62, 5)
        except ValueError:
            continue  # clip too short for this scale
        e_a = syncer.audio(torch.from_numpy(a_win))  # (N, D)
        e_x = syncer.motion(torch.from_numpy(x_win))  # (N, D)
        r = lse(e_x, e_a, vshift=vshift)
        out[scale], signed[scale] = abs(r.offset), r.offset
    if not out:
        raise ValueError(f"a clip of {len(landmarks)} frames is too short for every syncer scale")
    return AvOffsetResult(out, signed)
