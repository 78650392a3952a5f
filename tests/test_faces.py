"""Tests for pipeline.faces: mediapipe → iBUG-68 mapping, landmark backends, fixed crop, landmark 3DMM."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from pipeline.faces import coeffs as C
from pipeline.faces.crop import CropBox, apply_crop, fixed_crop, smooth_boxes, transform_landmarks
from pipeline.faces.landmarks import (
    FACE_ALIGNMENT_FILES_2D,
    FACE_ALIGNMENT_FILES_3D,
    MIRROR_68,
    FaceTrack,
    make_backend,
)
from pipeline.faces.mediapipe68 import MEDIAPIPE_TO_68, TEMPLATE_68, mediapipe_to_68
from pipeline.geometry import degrees, radians, rotation_matrix

# ----------------------------------------------------------------------------------------------------------------
# mediapipe -> 68 mapping and template


def test_mapping_table_shape_and_topology() -> None:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    assert len(MEDIAPIPE_TO_68) == 68
    assert all(1 <= len(v) <= 2 and all(0 <= i < 468 for i in v) for v in MEDIAPIPE_TO_68)

    def verts(edges: frozenset) -> set[int]:
        return {i for e in edges for i in e}

    on = {
        range(0, 17): verts(fmc.FACEMESH_FACE_OVAL),
        range(17, 22): verts(fmc.FACEMESH_RIGHT_EYEBROW),
        range(22, 27): verts(fmc.FACEMESH_LEFT_EYEBROW),
        range(27, 36): verts(fmc.FACEMESH_NOSE),
        range(36, 42): verts(fmc.FACEMESH_RIGHT_EYE),
        range(42, 48): verts(fmc.FACEMESH_LEFT_EYE),
        range(48, 68): verts(fmc.FACEMESH_LIPS),
    }
    for points, contour in on.items():
        for k in points:
            assert set(MEDIAPIPE_TO_68[k]) <= contour, f"iBUG point {k} is not on its mediapipe contour"


def test_template_is_symmetric_frontal_and_normalised() -> None:
    T = TEMPLATE_68
    assert T.shape == (68, 3) and not T.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(T[36] - T[45]), 1.0, atol=1e-6)
    np.testing.assert_allclose(T[17:48].mean(0), 0.0, atol=1e-5)
    # Mirror symmetry: flipping x and permuting with MIRROR_68 gives the template back.
    mirrored = T[list(MIRROR_68)] * [-1, 1, 1]
    np.testing.assert_allclose(mirrored, T, atol=1e-5)
    assert sorted(MIRROR_68) == list(range(68))
    # Image axes: x right, y down; the nose tip is closest to the camera (smallest z).
    assert T[36, 0] < T[39, 0] < T[42, 0] < T[45, 0]
    assert T[19, 1] < T[37, 1] < T[30, 1] < T[51, 1] < T[57, 1] < T[8, 1]
    assert T[30, 2] == T[:, 2].min()


def test_mediapipe_to_68_averages_pairs() -> None:
    mesh = np.random.default_rng(0).normal(size=(2, 478, 3))
    out = mediapipe_to_68(mesh)
    assert out.shape == (2, 68, 3)
    for k, verts in enumerate(MEDIAPIPE_TO_68):
        np.testing.assert_allclose(out[:, k], mesh[:, list(verts)].mean(1))


# ----------------------------------------------------------------------------------------------------------------
# mediapipe backend on a real portrait


@pytest.fixture(scope="module")
def astronaut_tracks() -> dict[str, FaceTrack]:
    """The astronaut as is, rotated 15° counter-clockwise on screen about the face, and mirrored."""
    img = skimage.data.astronaut()  # (512, 512, 3) RGB
    backend = make_backend("mediapipe")
    try:
        base = backend.process(img[None])
        centre = tuple(float(v) for v in np.nanmean(base.landmarks[0, 27:36, :2], 0))
        M = cv2.getRotationMatrix2D(centre, 15.0, 1.0)  # positive angle = counter-clockwise on screen
        rot = cv2.warpAffine(img, M, (512, 512), borderMode=cv2.BORDER_REFLECT)
        flip = np.ascontiguousarray(img[:, ::-1])
        return {"base": base, "rot": backend.process(rot[None]), "flip": backend.process(flip[None])}
    finally:
        backend.close()


def test_mediapipe_astronaut_landmarks(astronaut_tracks: dict[str, FaceTrack]) -> None:
    tr = astronaut_tracks["base"]
    assert tr.landmarks.shape == (1, 68, 3) and tr.landmarks.dtype == np.float32
    assert tr.num_faces[0] == 1 and tr.scores[0] > 0.8
    L = tr.landmarks[0]
    x0, y0, x1, y1 = tr.boxes[0]
    w, h = x1 - x0, y1 - y0
    # Inside the (tight) detection box, allowing 10 % for the jaw line and brows at its border.
    assert (L[:, 0] > x0 - 0.1 * w).all() and (L[:, 0] < x1 + 0.1 * w).all()
    assert (L[:, 1] > y0 - 0.1 * h).all() and (L[:, 1] < y1 + 0.1 * h).all()
    eyes_y, nose_y, mouth_y = L[36:48, 1].mean(), L[30, 1], L[48:68, 1].mean()
    assert L[17:27, 1].mean() < eyes_y < nose_y < mouth_y < L[8, 1]
    # Subject's right (iBUG 36, 48, 0) is on the image left.
    assert L[36, 0] < L[39, 0] < L[42, 0] < L[45, 0]
    assert L[48, 0] < L[51, 0] < L[54, 0] and L[0, 0] < L[8, 0] < L[16, 0] and L[31, 0] < L[35, 0]
    assert L[37, 1] < L[41, 1] and L[62, 1] <= L[66, 1]  # upper lid above lower lid, upper lip above lower


def test_mediapipe_in_plane_rotation_changes_roll(astronaut_tracks: dict[str, FaceTrack]) -> None:
    base = C.fit_pose(astronaut_tracks["base"].landmarks)
    rot = C.fit_pose(astronaut_tracks["rot"].landmarks)
    # Counter-clockwise on screen is negative roll (roll > 0 is clockwise with y pointing down).
    assert degrees(rot.roll[0] - base.roll[0]) == pytest.approx(-15.0, abs=2.0)
    assert degrees(abs(rot.yaw[0] - base.yaw[0])) < 3.0


def test_mediapipe_mirror_flips_yaw_and_roll(astronaut_tracks: dict[str, FaceTrack]) -> None:
    base = C.fit_pose(astronaut_tracks["base"].landmarks)
    flip = C.fit_pose(astronaut_tracks["flip"].landmarks)
    assert degrees(abs(flip.yaw[0] + base.yaw[0])) < 2.0
    assert np.sign(flip.yaw[0]) == -np.sign(base.yaw[0])
    assert degrees(abs(flip.roll[0] + base.roll[0])) < 1.0
    assert degrees(abs(flip.pitch[0] - base.pitch[0])) < 2.0


def test_mediapipe_wide_shot_small_face() -> None:
    """A ~80 px face in a 1280×720 frame: full-range detection + the region-of-interest mesh fallback."""
    rng = np.random.default_rng(0)
    frame = (90 + rng.integers(0, 40, (720, 1280, 3))).astype(np.uint8)
    frame[168:552, 426:810] = cv2.resize(skimage.data.astronaut(), (384, 384), interpolation=cv2.INTER_AREA)
    backend = make_backend("mediapipe")
    try:
        tr = backend.process(frame[None])
    finally:
        backend.close()
    assert tr.num_faces[0] == 1 and np.isfinite(tr.landmarks).all()
    L = tr.landmarks[0]
    # The astronaut's face sits at x ≈ 426 + 0.75 * (180..270), y ≈ 168 + 0.75 * (85..180) (from the 512 image).
    assert 540 < L[:, 0].min() and L[:, 0].max() < 640 and 220 < L[:, 1].min() and L[:, 1].max() < 320
    assert L[36, 0] < L[45, 0] and L[27, 1] < L[30, 1] < L[51, 1]


def test_mediapipe_no_face_gives_nan_rows() -> None:
    backend = make_backend("mediapipe")
    try:
        tr = backend.process(np.full((2, 64, 64, 3), 127, np.uint8))
    finally:
        backend.close()
    assert np.isnan(tr.landmarks).all() and np.isnan(tr.boxes).all()
    assert (tr.scores == 0).all() and (tr.num_faces == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# face_alignment backend


def test_face_alignment_missing_weights_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        make_backend("face_alignment", weights_dir=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and all(f in msg for f in FACE_ALIGNMENT_FILES_2D)
    with pytest.raises(FileNotFoundError) as err:
        make_backend("face_alignment", weights_dir=str(tmp_path), landmarks_type="3D")
    assert all(f in str(err.value) for f in FACE_ALIGNMENT_FILES_3D)
    with pytest.raises(FileNotFoundError, match="TORCH_HOME"):
        make_backend("face_alignment", weights_dir=None)


def _standin_weights(folder: Path, three_d: bool) -> dict[str, object]:
    """Random-init face_alignment networks saved the way face_alignment 1.5.0 loads them."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN, ResNetDepth

    torch.manual_seed(0)
    nets: dict[str, object] = {"s3fd": s3fd(), "fan": FAN(4)}
    files = FACE_ALIGNMENT_FILES_3D if three_d else FACE_ALIGNMENT_FILES_2D
    torch.save(nets["s3fd"].state_dict(), folder / files[0])  # type: ignore[attr-defined]
    torch.save(nets["fan"].state_dict(), folder / files[1])  # type: ignore[attr-defined]
    if three_d:
        nets["depth"] = ResNetDepth()
        # The published depth checkpoint is {'state_dict': ...} with DataParallel 'module.' prefixes.
        sd = {f"module.{k}": v for k, v in nets["depth"].state_dict().items()}  # type: ignore[attr-defined]
        torch.save({"state_dict": sd}, folder / files[2])
    return nets


@pytest.mark.parametrize("landmarks_type", ["2D", pytest.param("3D", marks=pytest.mark.slow)])
def test_face_alignment_loads_standin_weights(tmp_path: Path, landmarks_type: str) -> None:
    import torch

    three_d = landmarks_type == "3D"
    nets = _standin_weights(tmp_path, three_d)
    backend = make_backend("face_alignment", weights_dir=str(tmp_path), landmarks_type=landmarks_type)  # type: ignore[arg-type]
    try:
        fa = backend._fa  # type: ignore[attr-defined]
        # The weights really came from our files (random init would differ).
        for mine, loaded in [(nets["fan"], fa.face_alignment_net), (nets["s3fd"], fa.face_detector.face_detector)]:
            for (k, a), b in zip(mine.state_dict().items(), loaded.state_dict().values()):  # type: ignore[attr-defined]
                assert torch.equal(a, b), k
        if three_d:
            assert torch.equal(
                next(iter(nets["depth"].state_dict().values())),  # type: ignore[attr-defined]
                next(iter(fa.depth_prediciton_net.state_dict().values())),
            )
        # A random SFD fires on ~100 anchors (slow NMS and meaningless), so the detector is replaced by two fixed
        # boxes here; the FAN (and depth) forward passes with the loaded weights run for real.
        dets = [np.array([10.0, 12.0, 60.0, 70.0, 0.9]), np.array([5.0, 5.0, 90.0, 90.0, 0.3])]
        fa.face_detector.detect_from_image = lambda image: dets
        tr = backend.process(np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8))
        assert tr.landmarks.shape == (2, 68, 3) and tr.landmarks.dtype == np.float32
        np.testing.assert_allclose(tr.boxes, [[10, 12, 60, 70]] * 2)  # the 0.3 box is below min_confidence
        np.testing.assert_allclose(tr.scores, [0.9, 0.9], rtol=1e-6)
        assert (tr.num_faces == 1).all() and np.isfinite(tr.landmarks).all()
        if not three_d:
            assert (tr.landmarks[..., 2] == 0).all()  # 2D landmarks: z = 0
    finally:
        backend.close()


# ----------------------------------------------------------------------------------------------------------------
# crop


def _moving_boxes(T: int = 50) -> np.ndarray:
    t = np.arange(T)
    cx, cy = 300 + 40 * np.sin(t / 8), 200 + 10 * np.cos(t / 5)
    half = 60 + 5 * np.sin(t / 3)
    return np.stack([cx - half, cy - half, cx + half, cy + half], 1)  # (T, 4)


def test_smooth_boxes_fills_gaps_and_removes_spikes() -> None:
    boxes = _moving_boxes()
    noisy = boxes.copy()
    noisy[10:14] = np.nan
    noisy[30] += 200.0  # a one-frame detector glitch
    sm = smooth_boxes(noisy, window=5)
    assert np.isfinite(sm).all()
    assert np.abs(sm - boxes).max() < 15.0
    assert np.isnan(smooth_boxes(np.full((4, 4), np.nan))).all()


def test_fixed_crop_contains_boxes_square_and_fixed() -> None:
    boxes = _moving_boxes()
    crop = fixed_crop(boxes, (480, 640), scale=1.8)
    assert isinstance(crop, CropBox) and crop.x1 - crop.x0 == crop.y1 - crop.y0 == crop.size
    assert (boxes[:, 0] >= crop.x0).all() and (boxes[:, 1] >= crop.y0).all()
    assert (boxes[:, 2] <= crop.x1).all() and (boxes[:, 3] <= crop.y1).all()
    # A static face gets a crop `scale` times its box.
    static = np.tile([100.0, 100.0, 200.0, 200.0], (10, 1))
    c2 = fixed_crop(static, (480, 640), scale=1.5, shift_y=0.0)
    assert c2.size in (150, 151) and abs(c2.center[0] - 150) <= 1 and abs(c2.center[1] - 150) <= 1
    with pytest.raises(ValueError, match="no frame"):
        fixed_crop(np.full((3, 4), np.nan), (480, 640))


def test_apply_crop_pads_outside_and_matches_transform_landmarks() -> None:
    H, W = 120, 160
    frames = np.zeros((2, H, W, 3), np.uint8)
    frames[:, 50:54, 80:84] = 255  # a bright 4×4 square, centre (82, 52) in corner coordinates
    frames[:, :, 0] = [10, 20, 30]  # left column: edge replication shows this colour
    crop = CropBox(x0=-40, y0=10, size=160)  # extends 40 px beyond the left edge
    out = apply_crop(frames, crop, 80)
    assert out.shape == (2, 80, 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 40, 5], [10, 20, 30])
    p = transform_landmarks(np.array([[[82.0, 52.0, 8.0]]]), crop, 80)
    np.testing.assert_allclose(p, [[[61.0, 21.0, 4.0]]])
    u, v = int(p[0, 0, 0]), int(p[0, 0, 1])
    assert out[0, v, u].min() > 200 and out[0, v - 5, u - 5].max() < 50
    assert apply_crop(frames[0], crop, 80).shape == (80, 80, 3)


# ----------------------------------------------------------------------------------------------------------------
# landmark 3DMM: pose


def _posed(yaw: float, pitch: float, roll: float, s: float = 90.0, t=(130.0, 110.0, 7.0), shape=TEMPLATE_68):
    R = rotation_matrix(radians(yaw), radians(pitch), radians(roll))
    return s * shape @ R.T + np.asarray(t)  # (68, 3)


def test_pose_recovers_known_similarity() -> None:
    X = _posed(20.0, -10.0, 5.0)
    p = C.fit_pose(X[None].astype(np.float32))
    assert not p.weak_perspective
    np.testing.assert_allclose(degrees(np.array([p.yaw[0], p.pitch[0], p.roll[0]])), [20, -10, 5], atol=0.5)
    np.testing.assert_allclose(p.scale[0], 90.0, rtol=1e-4)
    np.testing.assert_allclose(p.translation[0], [130, 110, 7], atol=1e-2)
    np.testing.assert_allclose(p.aligned[0], TEMPLATE_68, atol=1e-4)  # frontalised shape = template
    # Normalised to a 256 crop.
    q = C.fit_pose(X[None], image_size=256)
    np.testing.assert_allclose(q.translation[0], [(130 - 128) / 256, (110 - 128) / 256, 7 / 256], atol=1e-6)
    np.testing.assert_allclose(q.scale[0], 90 / 256, rtol=1e-6)


def test_pose_ignores_open_mouth_and_measures_it() -> None:
    shape = TEMPLATE_68.copy()
    shape[list(range(56, 59)) + list(range(65, 68)) + list(range(5, 12))] += [0, 0.25, 0]  # jaw drops
    shape[[48, 54, 60, 64]] += [[-0.05, 0, 0], [0.05, 0, 0], [-0.05, 0, 0], [0.05, 0, 0]]  # corners widen
    X = _posed(20.0, -10.0, 5.0, shape=shape)
    p = C.fit_pose(X[None])
    np.testing.assert_allclose(degrees(np.array([p.yaw[0], p.pitch[0], p.roll[0]])), [20, -10, 5], atol=1.0)
    closed = C.mouth_opening(TEMPLATE_68[None])[0]
    assert C.mouth_opening(p.aligned)[0] == pytest.approx(closed + 0.25, abs=0.02)


def test_weak_perspective_fit_from_2d_landmarks() -> None:
    rng = np.random.default_rng(3)
    for yaw, pitch, roll in [(25.0, -10.0, 5.0), (-35.0, 12.0, -8.0), (0.0, 0.0, 0.0)]:
        X = _posed(yaw, pitch, roll)
        X[:, 2] = 0.0  # a 2D backend
        X[:, :2] += rng.normal(0, 0.5, (68, 2))  # ~0.5 px annotation noise on a 90 px face
        p = C.fit_pose(X[None])
        assert p.weak_perspective
        got = degrees(np.array([p.yaw[0], p.pitch[0], p.roll[0]]))
        np.testing.assert_allclose(got, [yaw, pitch, roll], atol=2.0)


def test_fit_pose_nan_frames() -> None:
    X = np.stack([_posed(5, 0, 0), np.full((68, 3), np.nan), _posed(-5, 0, 0)])
    p = C.fit_pose(X)
    assert np.isnan(p.yaw[1]) and np.isnan(p.aligned[1]).all() and np.isfinite(p.yaw[[0, 2]]).all()


# ----------------------------------------------------------------------------------------------------------------
# landmark 3DMM: expression basis and coefficients


def _residual_data(n: int, rng: np.random.Generator) -> np.ndarray:
    basis = np.linalg.qr(rng.normal(size=(204, 10)))[0].T  # (10, 204) orthonormal
    return (rng.normal(size=(n, 10)) * np.linspace(3, 0.3, 10)) @ basis  # (n, 204) rank 10


def test_expression_basis_round_trip_and_determinism(tmp_path: Path, rng: np.random.Generator) -> None:
    X = _residual_data(300, rng)
    with pytest.warns(UserWarning, match="only 10 non-degenerate"):
        basis = C.ExpressionBasis.fit(X, n_components=64, seed=0)
    assert basis.components.shape == (64, 204) and basis.n_effective == 10
    assert not basis.components[10:].any() and not basis.explained_variance[10:].any()
    coeffs = basis.project(X)
    assert coeffs.shape == (300, 64)
    np.testing.assert_allclose(basis.reconstruct(coeffs), X, atol=1e-9)
    np.testing.assert_allclose(basis.components[:10] @ basis.components[:10].T, np.eye(10), atol=1e-9)
    assert (np.diff(basis.explained_variance[:10]) <= 0).all()
    # Sign convention: the largest-magnitude entry of every component is positive.
    big = np.abs(basis.components[:10]).argmax(1)
    assert (basis.components[np.arange(10), big] > 0).all()
    # Deterministic: same data in another order (and with flipped signs of the data generator) → same basis.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = C.ExpressionBasis.fit(X[rng.permutation(300)], n_components=64, seed=0)
    np.testing.assert_allclose(again.components, basis.components, atol=1e-9)
    # save / load (atomic: no temporary files left)
    path = tmp_path / "sub" / "basis.npz"
    basis.save(path)
    assert sorted(os.listdir(path.parent)) == ["basis.npz"]
    loaded = C.ExpressionBasis.load(path)
    np.testing.assert_array_equal(loaded.components, basis.components)
    assert (loaded.n_samples, loaded.n_effective, loaded.seed) == (300, 10, 0)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz"):
        C.ExpressionBasis.load(tmp_path / "bad.npz")


def test_expression_basis_full_rank_no_warning(rng: np.random.Generator) -> None:
    X = rng.normal(size=(500, 204))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basis = C.ExpressionBasis.fit(X, n_components=64, seed=1)
    assert basis.n_effective == 64


def test_identity_residuals_and_coefficients_layout() -> None:
    frames = np.stack([_posed(y, 0.0, 0.0, s=60.0, t=(128.0, 128.0, 0.0)) for y in (-10.0, 0.0, 10.0, 20.0)])
    frames[2, 62:68, 1] += 3.0  # mouth opens in frame 2
    pose = C.fit_pose(frames, image_size=256)
    identity = C.identity_shape(pose.aligned)
    res = C.expression_residuals(pose.aligned)
    assert identity.shape == (68, 3) and res.shape == (4, 204)
    np.testing.assert_allclose(res.mean(0), 0.0, atol=1e-12)
    with pytest.warns(UserWarning):
        basis = C.ExpressionBasis.fit(res, n_components=64, seed=0)
    out = C.coefficients(basis.project(res), pose.rotation, pose.translation, pose.scale, crop_center=(0.5, 0.4))
    assert out.shape == (4, C.COEFF_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(degrees(out[:, C.ROTATION][:, 0]), [-10, 0, 10, 20], atol=0.5)
    np.testing.assert_allclose(out[:, C.TRANSLATION], 0.0, atol=0.02)
    np.testing.assert_allclose(out[:, 70], 60 / 256, rtol=0.02)
    np.testing.assert_allclose(out[:, 71:73], [[0.5, 0.4]] * 4)
    assert np.abs(out[2, C.EXPRESSION]).sum() > np.abs(out[1, C.EXPRESSION]).sum()


# ----------------------------------------------------------------------------------------------------------------
# mediapipe tracking mode (issue 16 item 4)


def _moving_astronaut(T: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The astronaut with a known small in-plane head motion (rotation ±6°, scale ±5 %, shifts ±12 px): (T, 512,
    512, 3) frames and the (2, 3) affine of each frame."""
    img = skimage.data.astronaut()
    t = np.arange(T) / 25.0
    frames, affines = [], []
    for k in range(T):
        M = cv2.getRotationMatrix2D((235.0, 150.0), 6.0 * np.sin(2 * np.pi * 0.4 * t[k]),
                                    1.0 + 0.05 * np.sin(2 * np.pi * 0.25 * t[k]))
        M[:, 2] += (12 * np.sin(2 * np.pi * 0.3 * t[k]), 8 * np.cos(2 * np.pi * 0.2 * t[k]))
        affines.append(M)
        frames.append(cv2.warpAffine(img, M, (512, 512), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames), affines


def _count_detections(backend: object, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    detect = backend._detect  # type: ignore[attr-defined]

    def counted(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return detect(frame)

    monkeypatch.setattr(backend, "_detect", counted)
    return calls


def test_mediapipe_tracking_matches_per_frame_with_fewer_detections(monkeypatch: pytest.MonkeyPatch) -> None:
    frames, _ = _moving_astronaut(30)
    tracks, calls = {}, {}
    for mode in ("per_frame", "tracking"):
        backend = make_backend("mediapipe", mode=mode, detect_interval=10)
        calls[mode] = _count_detections(backend, monkeypatch)
        try:
            tracks[mode] = backend.process_stream([frames[:13], frames[13:]])  # tracking goes on across chunks
        finally:
            backend.close()
    a, b = tracks["per_frame"], tracks["tracking"]
    assert len(calls["per_frame"]) == 30 and len(calls["tracking"]) == 3  # frames 0, 10, 20
    assert b.has_landmarks.all() and (b.scores > 0.8).all() and (b.num_faces == 1).all()
    iod = np.linalg.norm(a.landmarks[0, 45, :2] - a.landmarks[0, 36, :2])
    assert np.abs(a.landmarks - b.landmarks).max() < 0.01 * iod  # same mesh track
    np.testing.assert_array_equal(a.boxes[[0, 10, 20]], b.boxes[[0, 10, 20]])  # detection frames
    side = a.boxes[:, 2] - a.boxes[:, 0]
    assert (np.abs(a.boxes - b.boxes).max(axis=1) < 0.06 * side).all()  # carried boxes follow the face


def test_mediapipe_tracking_redetects_when_the_face_jumps_or_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    frames, _ = _moving_astronaut(12)
    shifted = np.roll(frames, (0, 200), axis=(1, 2))  # a cut: the face jumps 200 px to the right
    blank = np.full_like(frames[:3], 127)
    clip = np.concatenate([frames[:5], shifted[5:9], blank, frames[:4]])  # (16, 512, 512, 3)
    backend = make_backend("mediapipe", mode="tracking", detect_interval=100)
    calls = _count_detections(backend, monkeypatch)
    try:
        tr = backend.process(clip)
    finally:
        backend.close()
    ref = make_backend("mediapipe")
    try:
        want = ref.process(clip)
    finally:
        ref.close()
    assert len(calls) < 16  # the face is tracked between the events below
    np.testing.assert_array_equal(tr.scores[9:12], 0)  # no face: nothing carried over
    assert np.isnan(tr.landmarks[9:12]).all() and np.isnan(tr.boxes[9:12]).all()
    for t in (0, 5, 12):  # detected again at the start, after the jump and when the face comes back
        np.testing.assert_array_equal(tr.boxes[t], want.boxes[t])
    assert np.abs(tr.landmarks[5:9, :, 0].mean() - want.landmarks[5:9, :, 0].mean()) < 2.0


def test_mediapipe_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="mode"):
        make_backend("mediapipe", mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detect_interval"):
        make_backend("mediapipe", mode="tracking", detect_interval=0)
