"""SyncNet's contrastive margin loss (Chung & Zisserman 2016; thesis §2.3.1, thesis Eq. 2.14-2.15)."""

from __future__ import annotations

import torch
from torch import nn


def pair_distance(v: torch.Tensor, a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """thesis Eq. 2.15, ``d_n = ||v_n - a_n||_2`` for (B, D) embeddings -> (B,).

    `eps` inside the square root keeps the gradient finite at d = 0 (a perfect positive).
    """
    if v.shape != a.shape or v.ndim != 2:
        raise ValueError(f"expected two (B, D) embeddings of equal shape, got {tuple(v.shape)} and {tuple(a.shape)}")
    return torch.sqrt(((v - a) ** 2).sum(dim=1) + eps)  # (B,)


class ContrastiveMarginLoss(nn.Module):
    """thesis Eq. 2.14: ``E = 1/(2N) sum_n [ y_n d_n^2 + (1 - y_n) max(T_m - d_n, 0)^2 ]``.

    y = 1 for a synchronised (positive) pair, 0 for a shifted-audio (negative) pair; T_m is the margin. N is the
    number of pairs in the batch (positives and negatives together), so E is half the mean over the batch.
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = float(margin)

    def forward(self, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Args: d (B,) distances of thesis Eq. 2.15; y (B,) labels in {0, 1}. Returns the scalar E."""
        if d.shape != y.shape or d.ndim != 1:
            raise ValueError(f"expected (B,) distances and labels, got {tuple(d.shape)} and {tuple(y.shape)}")
        y = y.to(d.dtype)
        pos = y * d**2
        neg = (1.0 - y) * torch.clamp(self.margin - d, min=0.0) ** 2
        return 0.5 * (pos + neg).mean()
