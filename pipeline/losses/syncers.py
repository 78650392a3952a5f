"""Losses of the MS-Sync syncers (MS-Sync §3.1, §4.3; method.md §6.2–6.3).

- `InfoNCELoss` trains the syncer pyramid (MS-Sync Eq. 2, with the ``log`` that the printed MS-Sync Eq. 2 lacks,
  method.md §8).
- `TripletLoss` trains the rigid-motion syncers of the AV-offset metric (MS-Sync §4.3).
- `MultiScaleSyncLoss` is the frozen-syncer sync loss for motion generation (MS-Sync Eq. 6/7), differentiable in the
  motion.

Scores follow `pipeline.models.syncer.Syncer`: (B, 1 + N) cosines, the positive pair in column 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import WeightsError
from pipeline.models.syncer import Syncer, load_syncers
from pipeline.pyramid import build_pyramid, level_windows


class InfoNCELoss(nn.Module):
    """MS-Sync Eq. 2: ``L = -E_X log( e^{S(a,x)/tau} / (e^{S(a,x)/tau} + sum_n e^{S(a,x_n)/tau}) )``.

    Args:
        temperature: tau; the paper uses none (tau = 1). Cosines lie in [-1, 1], so with tau = 1 the best
            attainable loss is still log(1 + N e^{-2}); a smaller tau sharpens the softmax.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (B, 1 + N) with the positive first -> scalar mean loss."""
        return -F.log_softmax(scores / self.temperature, dim=1)[:, 0].mean()


class TripletLoss(nn.Module):
    """Triplet margin loss on the L2 distance of unit embeddings, ``d = sqrt(2 - 2 S)``:
    ``L = E max(0, margin + d(a, x+) - d(a, x-))``, averaged over every negative when there are several.

    Args:
        margin: required gap between the negative and the positive distance (distances lie in [0, 2]).
        reference: optional distance of one more, implicit negative for every anchor, adding
            ``E max(0, margin + d(a, x+) - reference)``. With ``reference = 1`` it stands for the zero vectors the
            offset search (`pipeline.metrics.lse`) compares with outside the clip (distance 1 from any unit
            vector). A plain triplet loss leaves the scale of the distances free; when in-sync distances exceed 1,
            the mostly padded extreme shifts win the search whatever the pair. With the reference the search
            instead leans towards small shifts for every pair, which the random-pair baseline shares, so the
            ground-truth vs random comparison stays fair. None = the plain triplet loss.
    """

    def __init__(self, margin: float = 0.2, reference: float | None = None) -> None:
        super().__init__()
        self.margin, self.reference = margin, reference

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (B, 1 + N) cosines, positive first -> scalar mean loss."""
        dist = distance_from_score(scores, eps=1e-8)  # (B, 1 + N)
        loss = F.relu(self.margin + dist[:, :1] - dist[:, 1:]).mean()
        if self.reference is not None:
            loss = loss + F.relu(self.margin + dist[:, 0] - self.reference).mean()
        return loss


def distance_from_score(scores: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """L2 distance ``sqrt(2 - 2 S)`` between unit embeddings with cosine `scores` (what the offset search compares);
    `eps` > 0 keeps the gradient finite at S = 1."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * scores, min=eps))


class MultiScaleSyncLoss(nn.Module):
    """Multi-scale AV sync loss, MS-Sync Eq. 6/7: ``L_AV^MS = sum_i -E_t S^i(a^i_t, x^i_t)``.

    The syncers are frozen (no gradient to their weights); the loss is differentiable with respect to the motion.
    Both inputs are pyramided with `pipeline.pyramid.build_pyramid` and every window (stride 1) of each level
    is scored.

    Args:
        syncers: S^1 .. S^L, one per level, finest first (e.g. from :func:`load_pyramid`).
        weights: optional per-level weights (default 1 each, as in MS-Sync Eq. 6).
    """

    def __init__(self, syncers: Sequence[Syncer], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not syncers:
            raise ValueError("MultiScaleSyncLoss needs at least one syncer")
        self.syncers = nn.ModuleList(syncers)
        for p in self.syncers.parameters():
            p.requires_grad_(False)
        self.syncers.eval()
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(syncers)
        if len(self.weights) != len(syncers):
            raise ValueError(f"{len(self.weights)} weights for {len(syncers)} syncers")

    def train(self, mode: bool = True) -> MultiScaleSyncLoss:
        super().train(mode)
        self.syncers.eval()  # frozen experts stay in eval mode
        return self

    def terms(self, audio: torch.Tensor, motion: torch.Tensor) -> list[torch.Tensor]:
        """Per-level ``L^i = -E_t S^i`` (MS-Sync Eq. 7).

        Args:
            audio: (B, Ta, 26) normalised log filterbank (`pipeline.data.syncers.audio_features`), 100 Hz.
            motion: (B, T, C) motion features (`pipeline.data.syncers.motion_features` layout), 25 fps,
                with Ta ~ 4 T. The coarsest level needs T >= 2^(L-1) (window - 1) + 1 frames (33 for L = 4).
        """
        if audio.ndim != 3 or motion.ndim != 3 or audio.shape[0] != motion.shape[0]:
            raise ValueError(f"expected audio (B, Ta, 26) and motion (B, T, C), got {tuple(audio.shape)} and "
                             f"{tuple(motion.shape)}")
        levels = len(self.syncers)
        a_pyr = build_pyramid(audio, levels, dim=1)
        x_pyr = build_pyramid(motion, levels, dim=1)
        out = []
        for i, (syncer, a, x) in enumerate(zip(self.syncers, a_pyr, x_pyr), start=1):
            window = syncer.cfg.window
            if x.shape[1] < window:
                raise ValueError(f"level {i}: {x.shape[1]} steps left of {motion.shape[1]} frames, fewer than "
                                 f"one window ({window})")
            a_win, x_win = level_windows(a, x, window)  # (B, N, 26, 20), (B, N, C, 5)
            b, n = x_win.shape[:2]
            scores = syncer(a_win.flatten(0, 1), x_win.flatten(0, 1)[:, None])  # (B*N, 1)
            out.append(-scores.view(b, n).mean())
        return out

    def forward(self, audio: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Scalar ``sum_i w_i L^i`` (see `terms`)."""
        return sum(w * t for w, t in zip(self.weights, self.terms(audio, motion)))


def load_pyramid(path: str | os.PathLike[str], *, device: str = "cpu") -> MultiScaleSyncLoss:
    """The multi-scale sync loss with the frozen ``ms1..msL`` syncers of a ``syncers`` checkpoint (train_syncers)."""
    syncers = load_syncers(path, device=device)
    names = sorted((n for n in syncers if n.startswith("ms")), key=lambda n: int(n[2:]))
    if not names:
        raise WeightsError(f"{path}: no ms* syncers")
    return MultiScaleSyncLoss([syncers[n] for n in names])
