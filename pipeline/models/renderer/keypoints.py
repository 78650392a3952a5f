"""Head motion and the face-vid2vid keypoint transformation (method.md §4.1): ``x = R(yaw, pitch, roll) · x_c + t + δ``.

The rotation comes from `pipeline.geometry.rotation_matrix` (the project's one rotation helper, R = Rx(pitch) ·
Ry(yaw) · Rz(roll), the order of SadTalker's ``get_rotation_matrix``); angles are converted with the exact π
(SadTalker's 3.14 is not reproduced).

Pose angles are predicted as 66-bin classifications (hopenet convention): bin i covers 3° centred on 3·i − 99°, and
the angle is the softmax expectation ``Σ softmax(logits)_i · (3 i − 99)``.

One documented difference from SadTalker: its inference-time ``keypoint_transformation`` zeroes t_x and t_z and
keeps only the vertical translation; face-vid2vid (training and inference) uses the full translation t. We follow
face-vid2vid (full t) everywhere; a caller that wants SadTalker's inference behaviour zeroes ``t[:, [0, 2]]``
before calling `transform_keypoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.geometry import radians, rotation_matrix

POSE_BINS = 66
BIN_WIDTH_DEG = 3.0  # hopenet: 66 bins of 3° over [-99°, +99°)


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Expected angle of binned pose logits: ``Σ softmax(logits)_i · (3 i − 3 ⌊n/2⌋)`` (n = 66: 3 i − 99).

    Args:
        logits: (B, n) bin logits (n = 66 for the hopenet convention).
    Returns:
        (B,) degrees.
    """
    if logits.dim() != 2:
        raise ValueError(f"bins_to_degrees expects (B, bins) logits, got shape {tuple(logits.shape)}")
    n = logits.shape[1]
    centres = BIN_WIDTH_DEG * (torch.arange(n, dtype=logits.dtype, device=logits.device) - n // 2)  # (n,)
    return torch.softmax(logits, dim=1) @ centres  # (B,)


@dataclass
class HeadMotion:
    """Motion of one frame per batch row: head pose, translation and expression deltas of the K keypoints.

    Attributes:
        yaw, pitch, roll: (B, bins) logits, or (B,) degrees when `in_degrees` is True.
        t: (B, 3) translation in normalised keypoint units, (x, y, z).
        exp: (B, K, 3) expression deltas δ.
        in_degrees: whether the angles are already degrees.
    """

    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    exp: torch.Tensor
    in_degrees: bool = False

    def degrees(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(yaw, pitch, roll) in degrees, (B,) each (the softmax expectation when the angles are logits)."""
        if self.in_degrees:
            return self.yaw, self.pitch, self.roll
        return bins_to_degrees(self.yaw), bins_to_degrees(self.pitch), bins_to_degrees(self.roll)

    def rotation(self) -> torch.Tensor:
        """(B, 3, 3) rotation matrices R = Rx(pitch) · Ry(yaw) · Rz(roll)."""
        yaw, pitch, roll = self.degrees()
        return rotation_matrix(radians(yaw), radians(pitch), radians(roll))  # (B, 3, 3)

    def split(self, sizes: list[int]) -> list["HeadMotion"]:
        """Split along the batch (sizes summing to B), e.g. the motions of one joint estimator call."""
        parts = [torch.split(x, sizes) for x in (self.yaw, self.pitch, self.roll, self.t, self.exp)]
        return [HeadMotion(*fields, in_degrees=self.in_degrees) for fields in zip(*parts)]

    def detach(self) -> "HeadMotion":
        return HeadMotion(self.yaw.detach(), self.pitch.detach(), self.roll.detach(), self.t.detach(),
                          self.exp.detach(), self.in_degrees)

    @staticmethod
    def identity(batch: int, num_kp: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> "HeadMotion":
        """Zero pose, zero translation, zero expression (degrees form)."""
        zeros = torch.zeros(batch, dtype=dtype, device=device)
        return HeadMotion(zeros, zeros.clone(), zeros.clone(), torch.zeros(batch, 3, dtype=dtype, device=device),
                          torch.zeros(batch, num_kp, 3, dtype=dtype, device=device), in_degrees=True)


def transform_keypoints(kp_canonical: torch.Tensor, motion: HeadMotion) -> torch.Tensor:
    """Driving keypoints ``x_k = R · x_c,k + t + δ_k`` (face-vid2vid §3.1, full translation; module docstring).

    Args:
        kp_canonical: (B, K, 3) canonical keypoints x_c.
        motion: the frame's HeadMotion (t (B, 3), exp (B, K, 3)).
    Returns:
        (B, K, 3) transformed keypoints.
    """
    if kp_canonical.dim() != 3 or kp_canonical.shape[2] != 3:
        raise ValueError(f"transform_keypoints: kp_canonical must be (B, K, 3), got {tuple(kp_canonical.shape)}")
    b, k, _ = kp_canonical.shape
    if motion.t.shape != (b, 3) or motion.exp.shape != (b, k, 3):
        raise ValueError(f"transform_keypoints: motion t {tuple(motion.t.shape)} / exp {tuple(motion.exp.shape)} "
                         f"do not fit keypoints {tuple(kp_canonical.shape)} (expected (B, 3) / (B, K, 3))")
    rot = motion.rotation().to(kp_canonical.dtype)  # (B, 3, 3)
    rotated = torch.einsum("bij,bkj->bki", rot, kp_canonical)  # (B, K, 3)
    return rotated + motion.t[:, None, :] + motion.exp  # (B, K, 3)
