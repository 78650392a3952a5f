"""Offset search between a video and an audio embedding stream: SyncNet's LSE-D / LSE-C / AV offset (method.md §6.1).

The protocol is syncnet_python's ``SyncNetInstance.evaluate`` + ``calc_pdist``:
- embeddings exist for windows k = 0..N-1 (video frames [k, k+5) and MFCC rows [4k, 4k+20));
- the audio embeddings are zero-padded by ``vshift`` windows at both ends; for each window k and each candidate
  shift d in -vshift..+vshift the L2 distance ``||v_k - a_{k+d} + 1e-6||`` (torch's ``pairwise_distance``) is taken,
  with a zero vector standing in for audio windows outside the clip;
- the distances are averaged over k per shift; **AV offset** = ``vshift - argmin`` (so a positive offset means the
  audio stream must be moved later: audio leads video), **LSE-D** = the minimum mean distance,
  **LSE-C** = median over shifts − minimum.

The same search serves MS-Sync's syncers (L2-normalised embeddings: L2 distance is monotone in the cosine score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SyncResult:
    """Outcome of the offset search for one clip.

    Attributes:
        offset: AV offset in windows (video frames at the finest scale); syncnet_python's sign convention.
        lse_d: minimum over shifts of the mean distance (lower = better synced).
        lse_c: median minus minimum of the mean distances (higher = more confident).
        mean_dist: (2*vshift+1,) mean distance per shift, index i <-> shift i - vshift.
    """

    offset: int
    lse_d: float
    lse_c: float
    mean_dist: np.ndarray


def shift_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> torch.Tensor:
    """Per-window distances for every shift (syncnet_python's ``calc_pdist``).

    Args:
        video_emb: (N, D) one embedding per video window.
        audio_emb: (N, D) one embedding per audio window (same windows).
        vshift: largest shift tried in each direction.

    Returns:
        (N, 2*vshift+1) distances; column i compares video window k with audio window k + i - vshift.
    """
    if video_emb.ndim != 2 or audio_emb.shape != video_emb.shape:
        raise ValueError(f"expected two (N, D) arrays of equal shape, got {tuple(video_emb.shape)} and "
                         f"{tuple(audio_emb.shape)}")
    n = video_emb.shape[0]
    win = 2 * vshift + 1
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))  # (N + 2 vshift, D), zero rows
    windows = padded.unfold(0, win, 1).transpose(1, 2)  # (N, win, D): rows k .. k + 2 vshift of the padded audio
    return torch.nn.functional.pairwise_distance(video_emb[:, None, :].expand(n, win, -1), windows, p=2.0, eps=1e-6)


def lse(video_emb: torch.Tensor | np.ndarray, audio_emb: torch.Tensor | np.ndarray, vshift: int = 15) -> SyncResult:
    """AV offset, LSE-D and LSE-C of one clip from its per-window embeddings (see the module docstring).

    Args:
        video_emb: (N, D) video embeddings, one per 5-frame window.
        audio_emb: (N, D) audio embeddings of the same windows.
        vshift: shifts -vshift..+vshift are searched (syncnet_python's run default: 15).
    """
    v = torch.as_tensor(video_emb, dtype=torch.float32)
    a = torch.as_tensor(audio_emb, dtype=torch.float32)
    with torch.no_grad():
        mdist = shift_distances(v, a, vshift).mean(dim=0)  # (2 vshift + 1,)
    minval, minidx = torch.min(mdist, 0)
    # torch.median returns the lower of the two middle values for an even count; the count is odd here.
    conf = torch.median(mdist) - minval
    return SyncResult(offset=int(vshift - int(minidx)), lse_d=float(minval), lse_c=float(conf),
                      mean_dist=mdist.numpy().copy())
