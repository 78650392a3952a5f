"""TAVC metric similarity ⟨C^a, C^v⟩ and the training loss of TAVCE Eq. 3/4 (TAVCE §III-B; method.md §3.3).

``⟨C, C'⟩`` is the cosine of the flattened 128 x 128 relationship matrices. With ``C = ½ Δ Δᵀ`` (TAVCE Eq. 2 as
resolved, Δ = f_i - f_j) it reduces to

    cos(vec C^a, vec C^v) = (Δaᵀ Δv)² / (|Δa|² |Δv|²) = cos²(Δa, Δv)  ∈ [0, 1],

so the metric never needs the matrices: :func:`tavc_similarity` computes the efficient form, and
:func:`matrix_cosine` over :func:`~pipeline.models.tavc.relationship` the explicit one (equal; see tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.tavc import relationship

EPS = 1e-8  # norm floor: a zero difference (identical windows/frames) gives similarity 0, not NaN


def matrix_cosine(c_1: torch.Tensor, c_2: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``⟨C, C'⟩``: cosine similarity of flattened matrices, (B, D, D) x (B, D, D) -> (B,)."""
    return F.cosine_similarity(c_1.flatten(1), c_2.flatten(1), dim=1, eps=eps)  # (B, D*D) -> (B,)


def tavc_similarity(fa_i: torch.Tensor, fa_j: torch.Tensor, fv_i: torch.Tensor, fv_j: torch.Tensor,
                    explicit: bool = False, eps: float = EPS) -> torch.Tensor:
    """``⟨C^a_{i,j}, C^v_{i,j}⟩`` of audio features (fa_i, fa_j) and visual features (fv_i, fv_j), each (B, D) -> (B,).

    Args:
        explicit: build the (B, D, D) matrices of TAVCE Eq. 2 and take their cosine (reference form) instead of the
            equal, cheaper ``cos²(Δa, Δv)``.
    """
    if explicit:
        return matrix_cosine(relationship(fa_i, fa_j), relationship(fv_i, fv_j), eps)
    d_a = F.normalize(fa_i - fa_j, dim=1, eps=eps)  # (B, D) unit Δa (0 when Δa = 0)
    d_v = F.normalize(fv_i - fv_j, dim=1, eps=eps)  # (B, D)
    return (d_a * d_v).sum(dim=1).square()  # (B,)


@dataclass(frozen=True)
class TAVCLossOutput:
    """Loss of one batch and the per-sample similarities it was computed from.

    Attributes:
        loss: scalar, mean over the batch of TAVCE Eq. 3.
        pos: (B,) ``⟨C^a_{i-1,i}, C^v_{i-1,i}⟩`` (positive pairs).
        neg: (B,) ``⟨C^a_{i-1,i}, C^v_{i-1,j}⟩`` (negative pairs, |j - i| >= τ).
    """

    loss: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


class TAVCLoss:
    """TAVCE Eq. 3/4: ``ℓ_i = [1 - ⟨C^a_{i-1,i}, C^v_{i-1,i}⟩] + α · max(0, ⟨C^a_{i-1,i}, C^v_{i-1,j}⟩)``, mean over
    the batch.

    The paper writes ``[1 + ⟨·⟩]`` for the negative term; the similarity is >= 0, so the hinge equals it up to the
    constant (method.md §3.3).

    Args:
        alpha: weight α of the negative term (method.md §3.3: 1).
        explicit: use the explicit 128 x 128 matrix form (for checking; same value, more memory).
    """

    def __init__(self, alpha: float = 1.0, explicit: bool = False) -> None:
        self.alpha = alpha
        self.explicit = explicit

    def __call__(self, fa_prev: torch.Tensor, fa_cur: torch.Tensor, fv_prev: torch.Tensor, fv_cur: torch.Tensor,
                 fv_neg: torch.Tensor) -> TAVCLossOutput:
        """Args: f^a_{i-1}, f^a_i, f^v_{i-1}, f^v_i, f^v_j, each (B, D)."""
        pos = tavc_similarity(fa_prev, fa_cur, fv_prev, fv_cur, self.explicit)  # (B,)
        neg = tavc_similarity(fa_prev, fa_cur, fv_prev, fv_neg, self.explicit)  # (B,)
        loss = ((1.0 - pos) + self.alpha * neg.clamp(min=0.0)).mean()
        return TAVCLossOutput(loss=loss, pos=pos, neg=neg)
