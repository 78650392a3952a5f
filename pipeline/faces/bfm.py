"""Basel Face Model geometry as Deep3DFaceRecon and SadTalker use it: the 68 model landmarks, the camera, and the
5-point image alignment that prepares the reconstruction network's 224x224 input (issue 18).

Conventions (Deep3DFaceRecon's, which SadTalker's released networks were trained with):

- **Model space**: x right, y up, z towards the camera, decimetres (the BFM scaled by 1e-5). The mean shape is
  re-centred on the centroid of *all* model vertices (``recenter``), so only the 68 landmark rows are kept here.
- **Shape**: ``S = mean + idBase · α_id + exBase · α_exp`` (80 identity, 64 expression coefficients).
- **Rotation** from the three predicted angles (radians) ``(a_x, a_y, a_z)``: ``R = Rz(a_z) · Ry(a_y) · Rx(a_x)``
  acting on column vectors (Deep3DFaceRecon stores its transpose and multiplies row vectors: the same map).
  ``Rx`` tilts the head up/down (pitch), ``Ry`` turns it left/right (yaw), ``Rz`` rolls it in the image plane.
- **Camera**: the posed shape ``X = R·S + t`` is viewed by a pinhole camera on the z axis at ``CAMERA_DISTANCE``
  (10) looking towards −z: depth ``d = 10 − X_z``; image ``u = f·X_x/d + c``, ``v = f·X_y/d + c`` with focal
  ``f = 1015`` and centre ``c = 112`` of the 224-pixel input. ``v`` grows *upwards* (Deep3DFaceRecon's "y direction
  is opposite to v direction"). The 5-point alignment below works in the same y-up frame (image rows flipped as
  ``H − 1 − y``), so projected and aligned landmarks are directly comparable.
- **Alignment** (``align_image``): five points from the 68 (the two eye centres, the nose tip, the two mouth
  corners; `five_points`) are fitted to the standard 3D landmarks of ``similarity_Lm3D_all.mat`` with a
  least-squares affine camera (scale from the mean norm of its two rows, translation = where the standard face's
  origin lands), then the image is scaled by ``102 / s`` and a 224 square is cut around that translation. The
  parameters ``(W0, H0, s, tx, ty)`` are what SadTalker appends to its coefficients.

Files (read with scipy): ``BFM_model_front.mat`` (``meanshape`` (1, 3N), ``idBase`` (3N, 80), ``exBase`` (3N, 64),
``keypoints`` (1, 68), 1-based vertex indices, among others) and ``similarity_Lm3D_all.mat`` (``lm`` (68, 3)).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BFM_FILE = "BFM_model_front.mat"
STANDARD_LANDMARKS_FILE = "similarity_Lm3D_all.mat"

NUM_ID = 80
NUM_EXP = 64
NUM_LANDMARKS = 68
FOCAL = 1015.0  # pixels of the 224 input
CENTER = 112.0  # principal point (both axes)
CAMERA_DISTANCE = 10.0  # decimetres, along +z
RECON_SIZE = 224  # side of the reconstruction network's input
RESCALE_FACTOR = 102.0  # target scale of the 5-point fit: input pixels per unit of the standard landmarks

# 68-point indices (0-based) of the five alignment points: eye centres are means of the eye corners.
LEFT_EYE = (36, 39)  # the eye on the image's left (the subject's right)
RIGHT_EYE = (42, 45)
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54


class BFMFileError(FileNotFoundError):
    """A BFM file is missing or lacks a field; the message names the file (and the field)."""


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(68, C) landmarks -> (5, C): left-eye centre, right-eye centre, nose tip, left and right mouth corners."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[0] != NUM_LANDMARKS:
        raise ValueError(f"five_points expects (68, C) landmarks, got {lm.shape}")
    return np.stack([lm[list(LEFT_EYE)].mean(0), lm[list(RIGHT_EYE)].mean(0), lm[NOSE_TIP], lm[MOUTH_LEFT],
                     lm[MOUTH_RIGHT]])  # (5, C)


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise BFMFileError(f"{path}: file not found")
    try:
        data = loadmat(str(path))
    except (ValueError, OSError, TypeError) as err:
        raise BFMFileError(f"{path}: cannot read it as a .mat file ({err})") from err
    missing = [k for k in keys if k not in data]
    if missing:
        raise BFMFileError(f"{path}: no field(s) {', '.join(missing)}")
    return {k: np.asarray(data[k]) for k in keys}


def load_standard_landmarks(path: str | os.PathLike[str]) -> np.ndarray:
    """The five standard 3D points (5, 3) from ``similarity_Lm3D_all.mat`` (field ``lm``, 68 x 3)."""
    path = Path(path)
    lm = _loadmat(path, ("lm",))["lm"].astype(np.float64)
    if lm.shape != (NUM_LANDMARKS, 3):
        raise BFMFileError(f"{path}: field lm has shape {lm.shape}, expected (68, 3)")
    return five_points(lm)


@dataclass(frozen=True)
class BFMLandmarks:
    """The 68 landmark vertices of the BFM front model.

    Attributes:
        mean: (68, 3) mean shape at the landmarks, re-centred on the centroid of all vertices.
        id_base: (68, 3, 80) identity basis rows of the landmarks.
        exp_base: (68, 3, 64) expression basis rows.
    """

    mean: np.ndarray
    id_base: np.ndarray
    exp_base: np.ndarray

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BFMLandmarks:
        """Read ``BFM_model_front.mat``: meanshape, idBase, exBase, keypoints (1-based)."""
        path = Path(path)
        m = _loadmat(path, ("meanshape", "idBase", "exBase", "keypoints"))
        mean = m["meanshape"].astype(np.float64).reshape(-1, 3)  # (N, 3)
        n = len(mean)
        id_base, exp_base = m["idBase"].astype(np.float64), m["exBase"].astype(np.float64)
        if id_base.shape != (3 * n, NUM_ID) or exp_base.shape != (3 * n, NUM_EXP):
            raise BFMFileError(f"{path}: idBase {id_base.shape} / exBase {exp_base.shape} do not fit meanshape "
                               f"({n} vertices): expected ({3 * n}, {NUM_ID}) / ({3 * n}, {NUM_EXP})")
        kp = m["keypoints"].reshape(-1).astype(np.int64) - 1  # (68,) 0-based vertex indices
        if kp.shape != (NUM_LANDMARKS,) or kp.min() < 0 or kp.max() >= n:
            raise BFMFileError(f"{path}: keypoints must be 68 vertex indices in 1..{n}, got shape {kp.shape}")
        mean = mean - mean.mean(0, keepdims=True)  # recentre on all vertices, then keep the landmarks
        return cls(mean=mean[kp], id_base=id_base.reshape(n, 3, NUM_ID)[kp],
                   exp_base=exp_base.reshape(n, 3, NUM_EXP)[kp])

    def shape(self, id_coeffs: np.ndarray, exp_coeffs: np.ndarray) -> np.ndarray:
        """(B, 80), (B, 64) -> (B, 68, 3) model-space landmarks."""
        return (self.mean + np.einsum("kci,bi->bkc", self.id_base, np.asarray(id_coeffs, np.float64))
                + np.einsum("kce,be->bkc", self.exp_base, np.asarray(exp_coeffs, np.float64)))  # (B, 68, 3)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """(B, 3) angles (a_x, a_y, a_z) in radians -> (B, 3, 3) ``R = Rz · Ry · Rx`` (column vectors; module doc)."""
    a = np.asarray(angles, np.float64).reshape(-1, 3)
    cx, cy, cz = np.cos(a).T
    sx, sy, sz = np.sin(a).T
    one, zero = np.ones_like(cx), np.zeros_like(cx)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).reshape(-1, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return rz @ ry @ rx  # (B, 3, 3)


def project(points: np.ndarray, angles: np.ndarray, translation: np.ndarray, *, focal: float = FOCAL,
            center: float = CENTER, camera_distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """Pose and project model points: (B, K, 3), (B, 3), (B, 3) -> (B, K, 2) in the 224 frame, v upwards."""
    R = rotation_matrix(angles)  # (B, 3, 3)
    X = np.einsum("bij,bkj->bki", R, np.asarray(points, np.float64)) + np.asarray(translation, np.float64)[:, None]
    depth = camera_distance - X[..., 2]  # (B, K)
    return focal * X[..., :2] / depth[..., None] + center  # (B, K, 2)


def project_landmarks(model: BFMLandmarks, id_coeffs: np.ndarray, exp_coeffs: np.ndarray, angles: np.ndarray,
                      translation: np.ndarray) -> np.ndarray:
    """The 68 landmarks of BFM coefficients in the reconstruction input (B, 68, 2), v upwards."""
    return project(model.shape(id_coeffs, exp_coeffs), angles, translation)


# --------------------------------------------------------------------------------------------------------------
# 5-point alignment of the reconstruction input
# --------------------------------------------------------------------------------------------------------------
def fit_scale_translation(points2d: np.ndarray, points3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine camera ``p ≈ A·P + b`` (A: 2x3) of (K, 2) image points to (K, 3) model points.

    Returns:
        t = b (2,): where the model origin lands; s: the mean norm of A's two rows (the camera's scale).
    """
    P = np.asarray(points3d, np.float64)
    p = np.asarray(points2d, np.float64)
    M = np.concatenate([P, np.ones((len(P), 1))], 1)  # (K, 4)
    sol, *_ = np.linalg.lstsq(M, p, rcond=None)  # (4, 2): one column per image axis
    s = 0.5 * (np.linalg.norm(sol[:3, 0]) + np.linalg.norm(sol[:3, 1]))
    return sol[3], float(s)


@dataclass(frozen=True)
class Alignment:
    """The reconstruction input of one image.

    Attributes:
        image: (224, 224, 3) uint8.
        landmarks: (68, 2) the landmarks in that image, v upwards (Deep3DFaceRecon's frame).
        params: (5,) ``(W0, H0, s, tx, ty)``: input size, the image scale applied, and the 5-point fit's translation
            (input pixels, y upwards). SadTalker stores ``params[2:]`` beside its coefficients.
    """

    image: np.ndarray
    landmarks: np.ndarray
    params: np.ndarray


def align_image(image: np.ndarray, landmarks: np.ndarray, standard: np.ndarray, *,
                target_size: int = RECON_SIZE, rescale_factor: float = RESCALE_FACTOR) -> Alignment:
    """Scale and crop an image for the reconstruction network (SadTalker's and Deep3DFaceRecon's alignment).

    Args:
        image: (H, W, 3) uint8 RGB.
        landmarks: (68, 2) pixel landmarks, x right, **y down** (image rows); flipped to y-up here.
        standard: (5, 3) standard 3D points (`load_standard_landmarks`).
    """
    from PIL import Image

    h0, w0 = image.shape[:2]
    lm = np.asarray(landmarks, np.float64)[:, :2].copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]  # y up
    t, s = fit_scale_translation(five_points(lm), standard)
    s = rescale_factor / s
    w, h = int(w0 * s), int(h0 * s)  # the scaled image
    left = int(w / 2 - target_size / 2 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - target_size / 2 + (h0 / 2 - t[1]) * s)
    pil = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), resample=Image.BICUBIC)
    crop = np.asarray(pil.crop((left, up, left + target_size, up + target_size)))  # (224, 224, 3), zeros outside
    lm_new = (lm - t + [w0 / 2, h0 / 2]) * s - [w / 2 - target_size / 2, h / 2 - target_size / 2]  # (68, 2)
    return Alignment(crop, lm_new, np.array([w0, h0, s, t[0], t[1]], np.float64))
