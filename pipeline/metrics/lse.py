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
from typing import Literal

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


# ----------------------------------------------------------------------------------------------------------------
# Metric sanity: does the extractor recognise ground truth on this data?
# ----------------------------------------------------------------------------------------------------------------
GROUND_TRUTH_TOLERANCE = 1  # frames: the true audio of a ground-truth video must be found within ±1 frame ...
GROUND_TRUTH_MIN_FRACTION = 0.5  # ... for more than half of the clips ("most")


@dataclass(frozen=True)
class DomainCheck:
    """Whether a sync metric means anything on a data set: the rule every sync metric report follows (train_syncnet
    and train_syncers now; `evaluate` applies it to the generated videos' data set).

    The same extractor is run on the **ground-truth** videos of the same data with their own audio and with shuffled
    audio (another clip's). It is `out_of_domain` when it does not recognise ground truth: the true offset (0) is
    not found within ±:data:`GROUND_TRUTH_TOLERANCE` frames for more than half of the clips, or the ground truth's
    mean LSE-C is not above the shuffled audio's. A number from an extractor that fails on real videos says nothing
    about generated ones, so a report then carries ``status: out_of_domain`` beside its numbers.

    Attributes:
        status: ``in_domain`` | ``out_of_domain``.
        reasons: why it is out of domain (empty when in domain).
        ground_truth_offset_acc_pm1: fraction of ground-truth clips whose offset is within the tolerance.
        ground_truth_lse_c / shuffled_lse_c: mean LSE-C of the ground truth with its own / with shuffled audio.
        clips: ground-truth clips checked.
    """

    status: Literal["in_domain", "out_of_domain"]
    reasons: tuple[str, ...]
    ground_truth_offset_acc_pm1: float
    ground_truth_lse_c: float
    shuffled_lse_c: float
    clips: int

    @property
    def in_domain(self) -> bool:
        return self.status == "in_domain"

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "reasons": list(self.reasons), "clips": self.clips,
                "ground_truth_offset_acc_pm1": self.ground_truth_offset_acc_pm1,
                "ground_truth_lse_c": self.ground_truth_lse_c, "shuffled_lse_c": self.shuffled_lse_c}


def domain_check(ground_truth_offsets: np.ndarray | list[int], ground_truth_lse_c: np.ndarray | list[float],
                 shuffled_lse_c: np.ndarray | list[float]) -> DomainCheck:
    """:class:`DomainCheck` from the offset search on ground-truth clips (one value per clip).

    Args:
        ground_truth_offsets: (C,) AV offset found for each ground-truth clip with its own audio (truth: 0), in
            frames (or in steps of a syncer's level).
        ground_truth_lse_c: (C,) its LSE-C.
        shuffled_lse_c: (C',) LSE-C of the same videos with other clips' audio (one or several draws per clip).
    """
    offsets = np.asarray(ground_truth_offsets, dtype=np.float64)
    gt_c, sh_c = np.asarray(ground_truth_lse_c, dtype=np.float64), np.asarray(shuffled_lse_c, dtype=np.float64)
    if offsets.size == 0 or sh_c.size == 0 or offsets.shape != gt_c.shape:
        raise ValueError(f"need one offset and two LSE-C values per ground-truth clip, got {offsets.shape}, "
                         f"{gt_c.shape}, {sh_c.shape}")
    acc = float(np.mean(np.abs(offsets) <= GROUND_TRUTH_TOLERANCE))
    reasons = []
    if acc <= GROUND_TRUTH_MIN_FRACTION:
        reasons.append(f"the true offset of ground-truth videos is found within ±{GROUND_TRUTH_TOLERANCE} frame for "
                       f"{acc:.0%} of {offsets.size} clips (needs more than {GROUND_TRUTH_MIN_FRACTION:.0%})")
    if not gt_c.mean() > sh_c.mean():
        reasons.append(f"ground-truth LSE-C {gt_c.mean():.3f} is not above shuffled audio's {sh_c.mean():.3f}")
    return DomainCheck(status="out_of_domain" if reasons else "in_domain", reasons=tuple(reasons),
                       ground_truth_offset_acc_pm1=acc, ground_truth_lse_c=float(gt_c.mean()),
                       shuffled_lse_c=float(sh_c.mean()), clips=int(offsets.size))
