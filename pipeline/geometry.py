"""Rotation geometry shared by the whole project (preprocessing in numpy, the face-vid2vid renderer in torch).

This is the project's single rotation helper (method.md §4.1: ``x_d = R_d · x_c + t_d + δ_d``), tested against known
values. The closed-form matrix is written once and evaluated with either numpy or torch, so the two can never disagree.

Coordinate convention (one for the whole project, consistent with image pixels and mediapipe's landmark z):

- x points **right** in the image, y points **down** in the image, z points **away from the camera** (into the
  scene). This is right-handed (x × y = z) and matches OpenCV's camera frame. mediapipe's landmark z ("smaller
  value = closer to the camera") and face_alignment's 3D depth use the same direction.
- Points are column vectors and rotate as ``x' = R · x`` (for row-stacked points ``P (K, 3)``: ``P @ R.T``).

Euler angles (radians) and axis order, face-vid2vid's (and SadTalker's ``get_rotation_matrix``):

    R = Rx(pitch) · Ry(yaw) · Rz(roll)

    Rx(a) = [[1, 0, 0], [0, c, -s], [0, s, c]]
    Ry(a) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    Rz(a) = [[c, -s, 0], [s, c, 0], [0, 0, 1]]

What the signs mean for a face looking at the camera (its nose points along −z):

- **yaw > 0**: ``Ry`` maps +x to −z (yaw +90° sends +x to (0, 0, −1)); the nose swings towards image-left (−x),
  i.e. the subject turns towards *their own* right.
- **pitch > 0**: ``Rx`` maps +y to +z; the nose moves down (+y): the subject looks down.
- **roll > 0**: ``Rz`` maps +x to +y; with y pointing down this is a *clockwise* in-plane rotation as seen in the
  image (the subject tilts the head towards their left shoulder, which is on image right).

``euler_from_matrix`` inverts ``rotation_matrix`` with yaw in [−π/2, π/2] and pitch, roll in (−π, π]. At the
gimbal lock (|yaw| = π/2) pitch and roll are not separable; roll is then reported as 0 and pitch carries the
combined in-plane angle (the returned angles still reproduce R).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, Union

import numpy as np
import torch

ArrayLike = Union[float, np.ndarray, torch.Tensor]
A = TypeVar("A", np.ndarray, torch.Tensor)

DEG_PER_RAD: float = 180.0 / math.pi
RAD_PER_DEG: float = math.pi / 180.0

# Below this |cos(yaw)| the decomposition is treated as gimbal-locked (yaw within ~1e-6 rad of ±90°).
_GIMBAL_EPS = 1e-6


def degrees(x: ArrayLike) -> ArrayLike:
    """Radians → degrees (scalar, numpy array or torch tensor; same kind out)."""
    return x * DEG_PER_RAD


def radians(x: ArrayLike) -> ArrayLike:
    """Degrees → radians (scalar, numpy array or torch tensor; same kind out)."""
    return x * RAD_PER_DEG


class _Ops:
    """The handful of array operations the formulas need, for numpy or torch."""

    def __init__(self, use_torch: bool) -> None:
        self.torch = use_torch
        if use_torch:
            self.sin, self.cos, self.stack = torch.sin, torch.cos, torch.stack
            self.atan2, self.asin, self.where = torch.atan2, torch.asin, torch.where
            self.clip = lambda x, lo, hi: torch.clamp(x, lo, hi)
            self.abs, self.zeros_like = torch.abs, torch.zeros_like
        else:
            self.sin, self.cos, self.stack = np.sin, np.cos, np.stack
            self.atan2, self.asin, self.where = np.arctan2, np.arcsin, np.where
            self.clip = np.clip
            self.abs, self.zeros_like = np.abs, np.zeros_like


def _as_arrays(*xs: Any) -> tuple[_Ops, list[Any]]:
    """Bring inputs to one kind: torch if any is a tensor (shared dtype/device), else float numpy arrays."""
    if any(isinstance(x, torch.Tensor) for x in xs):
        ref = next(x for x in xs if isinstance(x, torch.Tensor))
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        out = [torch.as_tensor(x, dtype=dtype, device=ref.device) for x in xs]
        return _Ops(True), list(torch.broadcast_tensors(*out))
    # Python scalars do not promote (NEP 50 style): float32 arrays with a literal 0.0 stay float32.
    typed = [np.asarray(x).dtype for x in xs if not isinstance(x, (int, float))]
    dtype = np.result_type(*typed, np.float32) if typed else np.dtype(np.float64)
    out = [np.asarray(x, dtype=dtype) for x in xs]
    return _Ops(False), list(np.broadcast_arrays(*out))


def rotation_matrix(yaw: ArrayLike, pitch: ArrayLike, roll: ArrayLike) -> np.ndarray | torch.Tensor:
    """R = Rx(pitch) · Ry(yaw) · Rz(roll) (face-vid2vid's order), angles in radians.

    Args:
        yaw, pitch, roll: scalars, numpy arrays or torch tensors of broadcastable batch shape (...).
    Returns:
        (..., 3, 3) rotation matrices; a torch tensor if any input is a tensor (its dtype and device, differentiable),
        else a numpy array (float64 for Python floats/float64 input, float32 for float32 input).
    """
    ops, (y, p, r) = _as_arrays(yaw, pitch, roll)
    cy, sy = ops.cos(y), ops.sin(y)
    cp, sp = ops.cos(p), ops.sin(p)
    cr, sr = ops.cos(r), ops.sin(r)
    # The product Rx(p) Ry(y) Rz(r) multiplied out (see the module docstring for the factors).
    rows = [
        [cy * cr, -cy * sr, sy],
        [cp * sr + sp * sy * cr, cp * cr - sp * sy * sr, -sp * cy],
        [sp * sr - cp * sy * cr, sp * cr + cp * sy * sr, cp * cy],
    ]
    m = ops.stack([ops.stack(row, -1) for row in rows], -2)  # (..., 3, 3)
    return m


def euler_from_matrix(R: A) -> tuple[A, A, A]:
    """Inverse of `rotation_matrix`: (yaw, pitch, roll) in radians from (..., 3, 3) rotation matrices.

    Ranges: yaw ∈ [−π/2, π/2] (from asin of R[0, 2]), pitch and roll ∈ (−π, π]. Each rotation has two Euler
    triples in this order; the one with |yaw| ≤ π/2 is returned. At the gimbal lock (|yaw| = π/2, cos yaw < 1e-6)
    roll is set to 0 and pitch takes the combined angle, so that `rotation_matrix(*euler_from_matrix(R)) == R`.

    Args:
        R: numpy array or torch tensor (..., 3, 3).
    Returns:
        (yaw, pitch, roll), each of shape (...) and the same kind as R.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"euler_from_matrix expects (..., 3, 3) matrices, got shape {tuple(R.shape)}")
    ops = _Ops(isinstance(R, torch.Tensor))
    if not ops.torch:
        R = np.asarray(R, dtype=np.result_type(R.dtype, np.float32))
    yaw = ops.asin(ops.clip(R[..., 0, 2], -1.0, 1.0))
    cos_yaw = ops.cos(yaw)
    locked = ops.abs(cos_yaw) < _GIMBAL_EPS
    pitch = ops.where(locked, ops.atan2(R[..., 2, 1], R[..., 1, 1]), ops.atan2(-R[..., 1, 2], R[..., 2, 2]))
    roll = ops.where(locked, ops.zeros_like(yaw), ops.atan2(-R[..., 0, 1], R[..., 0, 0]))
    return yaw, pitch, roll
