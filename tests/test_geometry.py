"""Known-value tests for pipeline.geometry (the project's single rotation helper)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.geometry import DEG_PER_RAD, degrees, euler_from_matrix, radians, rotation_matrix


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_degree_constants() -> None:
    assert degrees(math.pi) == pytest.approx(180.0, abs=1e-12)
    assert radians(180.0) == pytest.approx(math.pi, abs=1e-15)
    assert DEG_PER_RAD == 180.0 / math.pi
    np.testing.assert_allclose(degrees(np.array([math.pi / 2])), [90.0])
    assert torch.allclose(radians(torch.tensor([90.0], dtype=torch.float64)), torch.tensor([math.pi / 2], dtype=torch.float64))


def test_yaw_plus_90_maps_x_to_minus_z() -> None:
    R = rotation_matrix(radians(90.0), 0.0, 0.0)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 0, -1], atol=1e-12)
    # The nose (pointing at the camera, -z) swings to image-left (-x) for positive yaw.
    np.testing.assert_allclose(R @ [0, 0, -1], [-1, 0, 0], atol=1e-12)


def test_pitch_plus_90_maps_y_to_z_and_roll_is_clockwise_in_image() -> None:
    np.testing.assert_allclose(rotation_matrix(0.0, radians(90.0), 0.0) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    # Positive pitch: the nose (-z) moves down (+y) - looking down.
    np.testing.assert_allclose(rotation_matrix(0.0, radians(90.0), 0.0) @ [0, 0, -1], [0, 1, 0], atol=1e-12)
    # Positive roll: +x (image right) goes to +y (image down): clockwise on screen.
    np.testing.assert_allclose(rotation_matrix(0.0, 0.0, radians(90.0)) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_composition_order_is_rx_ry_rz() -> None:
    y, p, r = 0.3, -0.7, 1.1
    np.testing.assert_allclose(rotation_matrix(y, p, r), _rx(p) @ _ry(y) @ _rz(r), atol=1e-12)
    # ... and not another order (the angles are chosen so the orders differ).
    assert not np.allclose(rotation_matrix(y, p, r), _rz(r) @ _ry(y) @ _rx(p), atol=1e-3)


def test_is_rotation_and_batch_shapes() -> None:
    rng = np.random.default_rng(0)
    ang = rng.uniform(-math.pi, math.pi, size=(3, 4, 5, 3))
    R = rotation_matrix(ang[..., 0], ang[..., 1], ang[..., 2])
    assert R.shape == (3, 4, 5, 3, 3)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # Broadcasting a scalar against a batch.
    assert rotation_matrix(ang[..., 0], 0.0, 0.0).shape == (3, 4, 5, 3, 3)
    assert rotation_matrix(0.1, 0.2, 0.3).shape == (3, 3)


def test_round_trip_random_angles() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    yaw = rng.uniform(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3, n)
    pitch = rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n)
    roll = rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n)
    y2, p2, r2 = euler_from_matrix(rotation_matrix(yaw, pitch, roll))
    np.testing.assert_allclose(y2, yaw, atol=1e-9)
    np.testing.assert_allclose(p2, pitch, atol=1e-9)
    np.testing.assert_allclose(r2, roll, atol=1e-9)


def test_gimbal_lock_reproduces_matrix() -> None:
    for yaw in (math.pi / 2, -math.pi / 2):
        R = rotation_matrix(yaw, 0.4, -0.25)
        y2, p2, r2 = euler_from_matrix(R)
        assert float(r2) == 0.0
        np.testing.assert_allclose(rotation_matrix(y2, p2, r2), R, atol=1e-9)


def test_numpy_and_torch_agree_and_torch_is_differentiable() -> None:
    rng = np.random.default_rng(2)
    ang = rng.uniform(-1.5, 1.5, size=(7, 3))
    R_np = rotation_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    t = torch.tensor(ang, dtype=torch.float64, requires_grad=True)
    R_t = rotation_matrix(t[:, 0], t[:, 1], t[:, 2])
    assert isinstance(R_t, torch.Tensor) and R_t.dtype == torch.float64 and R_t.shape == (7, 3, 3)
    np.testing.assert_allclose(R_t.detach().numpy(), R_np, atol=1e-12)
    R_t.sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    y, p, r = euler_from_matrix(R_t.detach())
    np.testing.assert_allclose(torch.stack([y, p, r], -1).numpy(), ang, atol=1e-9)
    # float32 stays float32 (renderer batches).
    R32 = rotation_matrix(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, 5))
    assert R32.dtype == torch.float32 and R32.shape == (2, 5, 3, 3)
    assert rotation_matrix(np.zeros(4, np.float32), 0.0, 0.0).dtype == np.float32


def test_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="3, 3"):
        euler_from_matrix(np.zeros((4, 3)))
