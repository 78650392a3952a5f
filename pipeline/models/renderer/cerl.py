"""CERL, correlation-embedded representation learning (TAVCE Eq. 5; method.md §4.2).

    g = Conv₁(Ĉ^a × Conv₂(f)) + f

f is the source's 2D appearance feature before warping (B, Cf, h, w), Cf = 512 at full size; Conv₂ is a 1x1 conv
Cf -> D (D = relation_dim, 128); Ĉ^a = C^a / ‖C^a‖_F is the audio relationship matrix (B, D, D) normalised per
sample; "×" is a matrix product over channels, (B, D, D) @ (B, D, h·w); Conv₁ is a 1x1 conv D -> Cf.

Two variants (``CERLConfig.mode``):
- ``matmul`` (the paper): as above.
- ``diag`` (the authors' release): only diag(Ĉ^a) is used, as a per-channel gate on Conv₂(f); Conv₁ (D -> Cf) is
  followed by one more 1x1 conv Cf -> Cf.

Initialisation (a decision of this project): the *last* convolution of the residual branch (Conv₁ in ``matmul``,
the extra Cf -> Cf conv in ``diag``) has no bias and starts at zero. CERL therefore starts as the identity: a
pretrained SadTalker renderer plus a fresh CERL reproduces SadTalker exactly, and a zero relation leaves f unchanged
at any point of training. In ``diag`` mode Conv₁ keeps PyTorch's default init: zeroing two stacked linear maps would
make both gradients zero forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NORM_EPS = 1e-12  # below this Frobenius norm the relation counts as zero (and stays zero)


@dataclass(frozen=True)
class CERLConfig:
    """CERL switches.

    Attributes:
        enabled: False for the "w/o CERL" ablation (the renderer then has no CERL module and ignores relations).
        mode: ``matmul`` (TAVCE Eq. 5) or ``diag`` (authors' release: diagonal gate + one more 1x1 conv).
        relation_dim: D, the side of the relationship matrix C^a (the TAVC embedding size, 128).
    """

    enabled: bool = True
    mode: Literal["matmul", "diag"] = "matmul"
    relation_dim: int = 128

    def validate(self) -> None:
        if self.mode not in ("matmul", "diag"):
            raise ValueError(f"cerl.mode must be 'matmul' or 'diag', got {self.mode!r}")
        if self.relation_dim < 1:
            raise ValueError(f"cerl.relation_dim must be >= 1, got {self.relation_dim}")


def normalise_relation(relation: torch.Tensor) -> torch.Tensor:
    """Ĉ = C / ‖C‖_F per sample; a (near-)zero matrix stays zero.

    Args:
        relation: (B, D, D).
    Returns:
        (B, D, D).
    """
    norm = relation.flatten(1).norm(dim=1).clamp_min(NORM_EPS)  # (B,)
    return relation / norm[:, None, None]  # (B, D, D)


class CERL(nn.Module):
    """Residual injection of the audio relationship into the source feature (TAVCE Eq. 5)."""

    def __init__(self, cfg: CERLConfig, feature_channels: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.feature_channels = feature_channels
        d = cfg.relation_dim
        self.conv2 = nn.Conv2d(feature_channels, d, kernel_size=1)  # Conv₂: Cf -> D
        self.conv1 = nn.Conv2d(d, feature_channels, kernel_size=1, bias=False)  # Conv₁: D -> Cf
        if cfg.mode == "diag":
            self.out = nn.Conv2d(feature_channels, feature_channels, kernel_size=1, bias=False)
            nn.init.zeros_(self.out.weight)  # last conv of the branch: zero (module docstring)
        else:
            self.out = None
            nn.init.zeros_(self.conv1.weight)  # last conv of the branch: zero (module docstring)

    def forward(self, f: torch.Tensor, relation: torch.Tensor | None) -> torch.Tensor:
        """Args:
            f: (B, Cf, h, w) appearance feature.
            relation: (B, D, D) audio relationship C^a, not yet normalised; None means zeros (g = f).
        Returns:
            g: (B, Cf, h, w).
        """
        b, c, h, w = f.shape
        d = self.cfg.relation_dim
        if c != self.feature_channels:
            raise ValueError(f"CERL: expected f with {self.feature_channels} channels, got {tuple(f.shape)}")
        if relation is None:
            relation = f.new_zeros(b, d, d)
        if relation.shape != (b, d, d):
            raise ValueError(f"CERL: relation must be (B, {d}, {d}) with B = {b}, got {tuple(relation.shape)}")
        rel = normalise_relation(relation.to(f.dtype))  # (B, D, D)
        z = self.conv2(f)  # (B, D, h, w)
        if self.cfg.mode == "matmul":
            mixed = torch.bmm(rel, z.flatten(2)).view(b, d, h, w)  # (B, D, D) @ (B, D, h*w) -> (B, D, h, w)
            return self.conv1(mixed) + f  # (B, Cf, h, w)
        gate = torch.diagonal(rel, dim1=1, dim2=2)[:, :, None, None]  # (B, D, 1, 1)
        return self.out(self.conv1(z * gate)) + f  # (B, Cf, h, w)
