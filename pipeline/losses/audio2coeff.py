"""Losses of Audio2Coeff and of the MS-Sync motion generator (method.md §5.1–5.4).

- `CoeffLandmarks`: the landmark 3DMM (method.md §2) in torch, coefficients -> 68 points. It is linear in the
  expression and smooth in the pose, so every landmark loss below is differentiable in the coefficients.
- `coefficient_loss` (expression distance), `landmark_loss` (frontalised 68-point distance), `lip_sync_loss`
  (a frozen lip-sync expert: ``1 - S`` of the 200 ms syncer of `train_syncers`), `kl_divergence` (PoseVAE),
  `pose_reconstruction_loss` (PoseVAE: L1, SadTalker's ``reg_criterion``; MS-Sync Eq. 14 is the L2 one,
  `mse`), the least-squares GAN terms of SadTalker's pose discriminator (`lsgan_generator_loss`,
  `lsgan_discriminator_loss`, SadTalker's ``gan_criterion = MSELoss``) and the geometric (hinge) GAN terms of
  MS-Sync Eq. 11–13 (`hinge_generator_loss`, `hinge_discriminator_loss`).
- The multi-scale sync loss itself is `pipeline.losses.syncers.MultiScaleSyncLoss` (MS-Sync Eq. 6–7), fed with
  `syncer_motion` of generated landmarks.

(The renderer's hinge losses in `pipeline.losses.renderer` work on lists of per-scale patch maps; the two lines of
MS-Sync Eq. 11–13 are kept here so that this family does not depend on the renderer's code.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.syncers import EYE_OUTER, MOTION_UNIT
from pipeline.faces.coeffs import ExpressionBasis
from pipeline.geometry import rotation_matrix

NUM_POINTS = 68


class CoeffLandmarks(nn.Module):
    """Landmark 3DMM in torch (method.md §2; inverse of `pipeline.faces.coeffs.fit_pose` + `ExpressionBasis.project`).

    ``aligned = identity + reshape(mean + e @ components)`` (template frame, inter-ocular distance 1), and in the
    crop, normalised by its side S: ``x = s R(yaw, pitch, roll) aligned + t + (1/2, 1/2, 0)`` with ``t`` =
    coefficients 67–69 and ``s`` = coefficient 70 (pixels = S x). Holds the basis as buffers (not trained).
    """

    def __init__(self, basis: ExpressionBasis) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(basis.mean, dtype=torch.float32))  # (204,)
        self.register_buffer("components", torch.as_tensor(basis.components, dtype=torch.float32))  # (C, 204)

    def aligned(self, expression: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """(..., C) expression, (..., 68, 3) identity (broadcast) -> (..., 68, 3) frontalised shapes."""
        res = expression @ self.components + self.mean  # (..., 204)
        return identity + res.reshape(*res.shape[:-1], NUM_POINTS, 3)

    def forward(self, coeffs: torch.Tensor, identity: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Landmarks in normalised crop coordinates.

        Args:
            coeffs: (B, T, 70) expression + yaw, pitch, roll + tx, ty, tz.
            identity: (B, 68, 3) the clip's identity shape (mean aligned shape).
            scale: (B, T) or (B, 1) coefficient 70.

        Returns:
            (B, T, 68, 3); multiply by the crop side for pixels.
        """
        c = self.components.shape[0]
        al = self.aligned(coeffs[..., :c], identity[:, None])  # (B, T, 68, 3)
        R = rotation_matrix(coeffs[..., c], coeffs[..., c + 1], coeffs[..., c + 2])  # (B, T, 3, 3)
        t = coeffs[..., c + 3:c + 6] + coeffs.new_tensor([0.5, 0.5, 0.0])  # (B, T, 3)
        return scale[..., None, None] * torch.einsum("btij,btkj->btki", R, al) + t[:, :, None]  # (B, T, 68, 3)


def syncer_motion(landmarks: torch.Tensor, point_mean: torch.Tensor, iod: torch.Tensor) -> torch.Tensor:
    """Torch twin of `pipeline.data.syncers.motion_features` for generated landmarks: ``(xy - clip mean) /
    (MOTION_UNIT iod)``, point-major channels.

    Args:
        landmarks: (B, T, 68, 2+) in any unit.
        point_mean: (B, 68, 2) the clip's mean point positions (same unit; from the true landmarks, so generated and
            true motion share the reference).
        iod: (B,) the clip's mean outer-eye-corner distance (same unit).

    Returns:
        (B, T, 136).
    """
    x = (landmarks[..., :2] - point_mean[:, None]) / (MOTION_UNIT * iod[:, None, None, None])  # (B, T, 68, 2)
    return x.flatten(2)  # (B, T, 136)


def interocular(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, T, 68, 2+) -> (B,) mean outer-eye-corner distance over T (the unit of `syncer_motion`)."""
    return (landmarks[..., EYE_OUTER[0], :2] - landmarks[..., EYE_OUTER[1], :2]).norm(dim=-1).mean(dim=1)


def coefficient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of expression coefficients."""
    return F.mse_loss(pred, target)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance of corresponding points, (..., P, 3) each (0 iff identical)."""
    return (pred - target).norm(dim=-1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) averaged over the batch and the latent dimensions:
    ``mean(-1/2 (1 + logvar - mu^2 - exp(logvar)))`` (per dimension, so its weight is comparable with per-element
    reconstruction terms)."""
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())).mean()


def pose_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 of pose residuals (SadTalker's ``reg_criterion``)."""
    return F.l1_loss(pred, target)


def lsgan_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN, generator: ``mean (D(fake) - 1)^2``."""
    return (fake - 1.0).pow(2).mean()


def lsgan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN, discriminator: ``mean (D(real) - 1)^2 + mean D(fake)^2`` (fake detached by the caller)."""
    return (real - 1.0).pow(2).mean() + fake.pow(2).mean()


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """MS-Sync Eq. 11/12: ``-E D(fake)`` (D_f: averaged over frames t >= 1 by the caller's tensor layout)."""
    return -fake.mean()


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """MS-Sync Eq. 13: ``E max(0, 1 + D(fake)) + E max(0, 1 - D(real))``."""
    return F.relu(1.0 + fake).mean() + F.relu(1.0 - real).mean()


def lip_sync_loss(expert: nn.Module, audio: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Lip-sync expert loss ``1 - E_t S(a_t, x_t)`` with a frozen single-level syncer wrapped in
    `pipeline.losses.syncers.MultiScaleSyncLoss` (which returns ``-E_t S``); 0 when every window is perfectly in sync.

    Args:
        expert: ``MultiScaleSyncLoss([syncer])``.
        audio: (B, 4T, 26) normalised log filterbank; motion: (B, T, 136) `syncer_motion`.
    """
    return 1.0 + expert(audio, motion)
