"""BFM geometry of the deep3d backend (pipeline/faces/bfm.py): the five points, Deep3DFaceRecon's rotation and camera
on known values, the landmark model read from a BFM-format file the test writes, and the 5-point alignment on known
points."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.io import savemat

from pipeline.faces import bfm
from tests.deep3d_files import standard_landmarks68, write_bfm, write_standard_landmarks


def test_five_points_are_eye_centres_nose_tip_and_mouth_corners() -> None:
    lm = np.zeros((68, 2))
    lm[36], lm[39] = (10, 20), (20, 22)  # left eye corners
    lm[42], lm[45] = (40, 20), (50, 24)
    lm[30], lm[48], lm[54] = (30, 40), (18, 60), (42, 62)
    np.testing.assert_array_equal(bfm.five_points(lm), [[15, 21], [45, 22], [30, 40], [18, 60], [42, 62]])
    with pytest.raises(ValueError, match="68"):
        bfm.five_points(np.zeros((5, 2)))


def test_rotation_is_rz_ry_rx_with_deep3d_signs() -> None:
    # Known values, written out from Deep3DFaceRecon's per-axis matrices (models/bfm.py compute_rotation).
    R = bfm.rotation_matrix(np.array([[0.0, math.pi / 2, 0.0]]))[0]
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 0, -1], atol=1e-12)  # yaw +90°: x axis -> -z
    R = bfm.rotation_matrix(np.array([[math.pi / 2, 0.0, 0.0]]))[0]
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, 1], atol=1e-12)  # x rotation: y axis -> +z
    R = bfm.rotation_matrix(np.array([[0.0, 0.0, math.pi / 2]]))[0]
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # z rotation: x axis -> +y
    a = np.array([[0.3, -0.2, 0.1]])
    one = [bfm.rotation_matrix(np.array([[a[0, 0], 0, 0]]))[0], bfm.rotation_matrix(np.array([[0, a[0, 1], 0]]))[0],
           bfm.rotation_matrix(np.array([[0, 0, a[0, 2]]]))[0]]
    R = bfm.rotation_matrix(a)[0]
    np.testing.assert_allclose(R, one[2] @ one[1] @ one[0], atol=1e-12)  # order: Rz Ry Rx
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_camera_known_values() -> None:
    pts = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5]]], np.float64)  # (1, 4, 3)
    uv = bfm.project(pts, np.zeros((1, 3)), np.zeros((1, 3)))[0]
    np.testing.assert_allclose(uv, [[112, 112], [112 + 101.5, 112], [112, 112 + 101.5], [112, 112]])
    uv = bfm.project(np.array([[[1.0, 0, 0]]]), np.zeros((1, 3)), np.array([[0, 0, 5.0]]))[0, 0]
    assert uv[0] == pytest.approx(112 + 1015 / 5)  # closer to the camera (depth 10 - 5): larger


def _expected_landmarks(mean_vertices, kp, id_base, exp_base, id_c, exp_c, angles, trans) -> np.ndarray:
    """Independent of the module: Deep3DFaceRecon's row-vector form on the full model, then the keypoints."""
    n = len(mean_vertices)
    shape = (mean_vertices - mean_vertices.mean(0)).reshape(-1) + id_base @ id_c + exp_base @ exp_c  # (3N,)
    shape = shape.reshape(n, 3)
    x, y, z = angles
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    posed = shape @ (rz @ ry @ rx).T + trans  # rows @ R^T
    posed[:, 2] = 10.0 - posed[:, 2]
    K = np.array([[1015.0, 0, 112.0], [0, 1015.0, 112.0], [0, 0, 1]])
    proj = posed @ K.T
    return (proj[:, :2] / proj[:, 2:])[kp]


def test_bfm_file_landmark_projection_known_values(tmp_path) -> None:
    f = write_bfm(tmp_path)
    model = bfm.BFMLandmarks.load(tmp_path / bfm.BFM_FILE)
    assert model.mean.shape == (68, 3) and model.id_base.shape == (68, 3, 80) and model.exp_base.shape == (68, 3, 64)
    # the landmark rows of the re-centred mean: the written standard face minus the centroid of all vertices
    np.testing.assert_allclose(model.mean, f["mean_vertices"][f["kp"]] - f["mean_vertices"].mean(0), atol=1e-12)
    rng = np.random.default_rng(1)
    id_c, exp_c = rng.normal(0, 1, 80), rng.normal(0, 1, 64)
    angles, trans = np.array([0.2, -0.35, 0.1]), np.array([0.05, -0.1, 0.3])
    got = bfm.project_landmarks(model, id_c[None], exp_c[None], angles[None], trans[None])[0]
    want = _expected_landmarks(f["mean_vertices"], f["kp"], f["idBase"], f["exBase"], id_c, exp_c, angles, trans)
    np.testing.assert_allclose(got, want, atol=1e-9)
    # frontal, centred: the eyes are level and symmetric about the principal point
    front = bfm.project(standard_landmarks68()[None], np.zeros((1, 3)), np.zeros((1, 3)))[0]
    assert front[36, 1] == pytest.approx(front[45, 1]) and front[36, 0] + front[45, 0] == pytest.approx(224)
    assert front[30, 1] < front[36, 1]  # y up: the nose tip is below the eyes, so a smaller v


def test_bfm_file_errors_name_the_file_and_field(tmp_path) -> None:
    with pytest.raises(bfm.BFMFileError, match="BFM_model_front.mat: file not found"):
        bfm.BFMLandmarks.load(tmp_path / "BFM_model_front.mat")
    savemat(tmp_path / "BFM_model_front.mat", {"meanshape": np.zeros((1, 6))})
    with pytest.raises(bfm.BFMFileError, match="idBase, exBase, keypoints"):
        bfm.BFMLandmarks.load(tmp_path / "BFM_model_front.mat")
    savemat(tmp_path / "similarity_Lm3D_all.mat", {"lm": np.zeros((5, 3))})
    with pytest.raises(bfm.BFMFileError, match=r"\(5, 3\), expected \(68, 3\)"):
        bfm.load_standard_landmarks(tmp_path / "similarity_Lm3D_all.mat")


def test_scale_translation_fit_recovers_a_known_camera() -> None:
    P = standard_landmarks68()
    std5 = bfm.five_points(P)
    t, s = bfm.fit_scale_translation(37.0 * std5[:, :2] + [120.0, 90.0], std5)
    np.testing.assert_allclose(t, [120, 90], atol=1e-9)
    assert s == pytest.approx(37.0)


def test_alignment_puts_the_five_points_on_the_standard_face(tmp_path) -> None:
    """Landmarks = a known scale and shift of the standard face (y down in the image): after alignment the five
    points sit at 102 x standard + 112 (within the integer rounding of the scaled size), and a marked pixel moves
    with them."""
    std = bfm.load_standard_landmarks(write_standard_landmarks(tmp_path))  # (5, 3)
    P = standard_landmarks68()
    H = W = 160
    scale, shift = 40.0, np.array([83.0, 71.0])  # y-up coordinates
    lm_up = scale * P[:, :2] + shift  # (68, 2)
    lm_down = np.stack([lm_up[:, 0], H - 1 - lm_up[:, 1]], 1)
    img = np.zeros((H, W, 3), np.uint8)
    nose = np.round(lm_down[30]).astype(int)
    img[nose[1] - 1:nose[1] + 2, nose[0] - 1:nose[0] + 2] = 255  # a 3x3 white mark on the nose tip
    al = bfm.align_image(img, lm_down, std)
    assert al.image.shape == (224, 224, 3)
    assert al.params[:2].tolist() == [W, H]
    s_img = al.params[2]
    five = bfm.five_points(al.landmarks)
    np.testing.assert_allclose(five, 102.0 * std[:, :2] + 112.0, atol=1.0 + s_img)
    # the mark: its column is u, its row 224 - v (the aligned landmarks are y up), within the resampling blur
    ys, xs = np.nonzero(al.image[..., 0] > 60)
    assert abs(xs.mean() - al.landmarks[30, 0]) < 1.5 + s_img
    assert abs(ys.mean() - (224 - al.landmarks[30, 1])) < 1.5 + s_img
