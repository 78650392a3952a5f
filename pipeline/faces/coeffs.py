"""Landmark 3DMM: rigid pose + PCA expression coefficients from 68-point landmarks (method.md §2, *resolved*).

BFM / Deep3DFaceRecon cannot be used here, so the 3DMM-style coefficients come from landmarks alone:

1. **Rigid pose per frame** (`fit_pose`): similarity Procrustes (Umeyama 1991) of the observed landmarks to
   `TEMPLATE_68`, ``x_obs ≈ s · R · x_template + t``, fitted on the *rigid* points only — brows 17–26, nose 27–35
   and the four eye corners 36, 39, 42, 45. The jaw and the lips move with speech and the eyelids with blinks, so
   they are left out: opening the mouth must not tilt the head. Landmarks with z ≡ 0 (2D backends such as 2DFAN4)
   get a **weak-perspective** fit instead: ``x_obs[:, :2] ≈ s · R[:2] · x_template + t[:2]``, solved by
   alternating between completing the unseen depths from the current fit and a 3D Umeyama step (each step lowers
   the 2D error), started from the orthonormalised least-squares affine camera.
   Angles: ``(yaw, pitch, roll) = pipeline.geometry.euler_from_matrix(R)`` (R = Rx(pitch)·Ry(yaw)·Rz(roll);
   yaw > 0 turns the subject to their right, pitch > 0 looks down, roll > 0 is clockwise in the image).
2. **Aligned shape**: all 68 observed points mapped back into the template frame, ``R^T (x_obs − t) / s``
   (template units: outer-eye-corner distance 1). For weak perspective the depth is the completed one.
3. **Identity** = the clip's mean aligned shape; **expression residual** = aligned − identity, flattened (T, 204).
4. **Expression basis** (`ExpressionBasis`): PCA of residuals of the training split, 64 components, a versioned
   artifact (npz). Coefficients = projection of a residual on the basis.

The per-frame coefficient vector (`coefficients`, 73 values, method.md §1 layout; MappingNet uses the first 70):

====== ========================= =========================================================================
index  name                      definition
====== ========================= =========================================================================
0–63   expression                PCA coefficients of the expression residual (template units)
64     yaw                       radians, `pipeline.geometry` convention
65     pitch                     radians
66     roll                      radians
67     tx                        template origin (rigid-point centroid) in the crop, x − S/2, divided by S
68     ty                        same for y (S = crop side in pixels: `fit_pose(..., image_size=S)`)
69     tz                        depth offset of the fit divided by S (mediapipe: ≈ 0, its z is head-centred;
                                 weak perspective: 0)
70     scale                     Procrustes scale / S = outer-eye-corner distance of the frontalised face as a
                                 fraction of the crop side
71     crop_cx                   centre x of the fixed clip crop in the source frame / source width
72     crop_cy                   centre y of the fixed clip crop in the source frame / source height
====== ========================= =========================================================================

Frames without landmarks (NaN rows) give NaN pose, residual and coefficient rows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.faces.mediapipe68 import NUM_POINTS_68, TEMPLATE_68
from pipeline.geometry import euler_from_matrix
from pipeline.io import save_npz

# Rigid points for the pose fit: brows, nose, eye corners (no eyelids, lips or jaw; see module docstring).
POSE_POINTS: tuple[int, ...] = tuple(range(17, 36)) + (36, 39, 42, 45)

NUM_EXPRESSION = 64
COEFF_DIM = 73
EXPRESSION = slice(0, 64)
ROTATION = slice(64, 67)  # yaw, pitch, roll
TRANSLATION = slice(67, 70)
CROP_SCALE = slice(70, 73)  # scale, crop_cx, crop_cy
MOTION = slice(0, 70)  # expression + rotation + translation: what Audio2Coeff generates and MappingNet reads
RESIDUAL_DIM = NUM_POINTS_68 * 3  # 204

TEMPLATE_IOD: float = float(np.linalg.norm(TEMPLATE_68[36] - TEMPLATE_68[45]))  # = 1 by construction

BASIS_FORMAT_VERSION = 1


@dataclass
class PoseFit:
    """Per-frame rigid pose of a clip (similarity x_obs ≈ s·R·x_template + t) and the frontalised shapes.

    Attributes:
        yaw, pitch, roll: (T,) radians.
        rotation: (T, 3, 3).
        translation: (T, 3) where the template origin lands, in the landmarks' pixel frame (normalised to the
            crop when `fit_pose` got `image_size`).
        scale: (T,) pixels per template unit (divided by the crop side with `image_size`).
        aligned: (T, 68, 3) landmarks mapped back into the template frame.
        rms: (T,) RMS residual of the pose points in template units (fit quality).
        weak_perspective: True if the 2D weak-perspective fit was used.
    """

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    scale: np.ndarray
    aligned: np.ndarray
    rms: np.ndarray
    weak_perspective: bool


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transform dst ≈ s · R · src + t minimising the squared error (Umeyama 1991), batched.

    Args:
        src: (K, 3) model points.
        dst: (T, K, 3) observed points (no NaNs).
    Returns:
        s (T,), R (T, 3, 3) proper rotations, t (T, 3).
    """
    mu_s = src.mean(0)  # (3,)
    mu_d = dst.mean(1)  # (T, 3)
    s0 = src - mu_s  # (K, 3)
    d0 = dst - mu_d[:, None]  # (T, K, 3)
    cov = np.einsum("tki,kj->tij", d0, s0) / len(src)  # (T, 3, 3)
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))  # (T,) reflection guard
    d[d == 0] = 1.0
    D = np.ones((len(dst), 3))
    D[:, 2] = d
    R = (U * D[:, None, :]) @ Vt  # (T, 3, 3) = U diag(D) Vt
    var_s = (s0**2).sum() / len(src)
    s = (S * D).sum(1) / var_s  # (T,)
    t = mu_d - s[:, None] * np.einsum("tij,j->ti", R, mu_s)  # (T, 3)
    return s, R, t


def _weak_perspective(src: np.ndarray, dst2: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weak-perspective similarity fit dst2 ≈ (s · R · src + t)[:, :2], batched over T (see module docstring)."""
    T = len(dst2)
    mu_s = src.mean(0)
    s0 = src - mu_s  # (K, 3)
    d0 = dst2 - dst2.mean(1, keepdims=True)  # (T, K, 2)
    # Affine camera M (T, 2, 3) by least squares, then the nearest scaled rotation rows.
    M = np.einsum("tki,kj->tij", d0, s0) @ np.linalg.inv(s0.T @ s0)  # (T, 2, 3)
    U, S, Vt = np.linalg.svd(M, full_matrices=False)  # U (T,2,2), S (T,2), Vt (T,2,3)
    rows = U @ Vt  # (T, 2, 3) orthonormal rows
    R = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)  # (T, 3, 3)
    s = S.mean(1)  # (T,)
    t = np.concatenate([dst2.mean(1) - s[:, None] * np.einsum("tij,j->ti", R[:, :2], mu_s), np.zeros((T, 1))], 1)
    for _ in range(iters):
        z = s[:, None] * np.einsum("tj,kj->tk", R[:, 2], src) + t[:, 2:3]  # (T, K) depths implied by the fit
        s, R, t = umeyama(src, np.concatenate([dst2, z[..., None]], axis=2))
    return s, R, t


def fit_pose(
    landmarks: np.ndarray,
    *,
    template: np.ndarray = TEMPLATE_68,
    pose_points: Sequence[int] = POSE_POINTS,
    weak_perspective: bool | None = None,
    iters: int = 30,
    image_size: float | None = None,
) -> PoseFit:
    """Per-frame rigid pose and frontalised shape of 68-point landmarks (module docstring, steps 1–2).

    Args:
        landmarks: (T, 68, 3) in pixels (x right, y down, z away); NaN rows for frames without a face.
        template: (68, 3) mean shape in the template frame.
        pose_points: indices used for the pose (rigid points).
        weak_perspective: force the 2D fit (True) or the 3D fit (False); None: 2D iff every z is 0.
        iters: alternation steps of the weak-perspective fit.
        image_size: side S of the (square crop) coordinate frame. If given, the returned translation is
            ``((tx − S/2)/S, (ty − S/2)/S, tz/S)`` and the scale ``s/S`` (the method.md §1 coefficient fields 67–70);
            otherwise both are in pixels. `aligned` and the angles do not depend on it.
    Returns:
        `PoseFit` (NaN rows where landmarks are missing).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (NUM_POINTS_68, 3):
        raise ValueError(f"fit_pose expects (T, 68, 3) landmarks, got shape {lm.shape}")
    T = len(lm)
    valid = np.isfinite(lm).all(axis=(1, 2))  # (T,)
    if weak_perspective is None:
        weak_perspective = bool(valid.any()) and bool(np.all(lm[valid, :, 2] == 0))
    idx = np.asarray(pose_points)
    src = np.asarray(template, np.float64)[idx]  # (K, 3)
    obs = lm[valid]  # (T', 68, 3)

    s = np.full(T, np.nan)
    R = np.full((T, 3, 3), np.nan)
    t = np.full((T, 3), np.nan)
    aligned = np.full((T, NUM_POINTS_68, 3), np.nan)
    rms = np.full(T, np.nan)
    if len(obs):
        if weak_perspective:
            sv, Rv, tv = _weak_perspective(src, obs[:, idx, :2], iters)
            # Complete the depth of all 68 points from the fitted template, then frontalise.
            full = np.asarray(template, np.float64)  # (68, 3)
            z = sv[:, None] * np.einsum("tj,kj->tk", Rv[:, 2], full) + tv[:, 2:3]  # (T', 68)
            obs = np.concatenate([obs[..., :2], z[..., None]], axis=2)  # (T', 68, 3)
        else:
            sv, Rv, tv = umeyama(src, obs[:, idx])
        al = np.einsum("tji,tkj->tki", Rv, obs - tv[:, None]) / sv[:, None, None]  # (T', 68, 3) = R^T(x - t)/s
        if weak_perspective:
            res = (al[:, idx] - src)[..., :2]  # only x, y were observed; measure in the template frame
        else:
            res = al[:, idx] - src
        s[valid], R[valid], t[valid], aligned[valid] = sv, Rv, tv, al
        rms[valid] = np.sqrt((res**2).sum(-1).mean(-1))
    if image_size is not None:
        t = (t - [image_size / 2.0, image_size / 2.0, 0.0]) / image_size
        s = s / image_size
    yaw, pitch, roll = euler_from_matrix(R)
    return PoseFit(yaw, pitch, roll, R, t, s, aligned, rms, weak_perspective)


def identity_shape(aligned: np.ndarray) -> np.ndarray:
    """The clip's identity: mean aligned shape (68, 3) over frames with landmarks."""
    aligned = np.asarray(aligned, np.float64)
    valid = np.isfinite(aligned).all(axis=(1, 2))
    if not valid.any():
        raise ValueError("identity_shape: no frame of the clip has landmarks")
    return aligned[valid].mean(0)


def expression_residuals(aligned: np.ndarray, identity: np.ndarray | None = None) -> np.ndarray:
    """Per-frame expression residual, aligned − identity, flattened: (T, 68, 3) → (T, 204)."""
    aligned = np.asarray(aligned, np.float64)
    if identity is None:
        identity = identity_shape(aligned)
    return (aligned - identity).reshape(len(aligned), RESIDUAL_DIM)  # (T, 68*3)


def mouth_opening(aligned: np.ndarray) -> np.ndarray:
    """Inner-lip gap |p62 − p66| of aligned shapes (T, 68, 3) → (T,), in template inter-ocular units."""
    aligned = np.asarray(aligned)
    return np.linalg.norm(aligned[:, 62] - aligned[:, 66], axis=-1) / TEMPLATE_IOD


@dataclass
class ExpressionBasis:
    """PCA basis of expression residuals (the "expression" part of the landmark 3DMM; method.md §2).

    Attributes:
        mean: (204,) mean residual of the fitting set.
        components: (C, 204) orthonormal rows, by decreasing variance; rows beyond `n_effective` are zero.
        explained_variance: (C,) variance along each component (0 for padded ones).
        n_samples: frames the basis was fitted on.
        n_effective: non-degenerate components (< C when there were too few samples).
        seed: subsampling seed used by `fit`.

    Sign convention (deterministic): every component's entry of largest magnitude is positive.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    n_samples: int
    n_effective: int
    seed: int

    @property
    def n_components(self) -> int:
        return len(self.components)

    @classmethod
    def fit(
        cls,
        residuals: np.ndarray,
        n_components: int = NUM_EXPRESSION,
        seed: int = 0,
        *,
        max_samples: int | None = 200_000,
    ) -> ExpressionBasis:
        """PCA of (N, 204) residuals (NaN rows ignored), via the eigendecomposition of the covariance.

        More than `max_samples` rows are subsampled with `seed`. With fewer usable directions than
        `n_components` (rank ≤ N − 1), the remaining components are zero rows and a warning says so.
        """
        X = np.asarray(residuals, np.float64)
        if X.ndim != 2 or X.shape[1] != RESIDUAL_DIM:
            raise ValueError(f"ExpressionBasis.fit expects (N, {RESIDUAL_DIM}) residuals, got {X.shape}")
        X = X[np.isfinite(X).all(1)]
        if len(X) < 2:
            raise ValueError(f"ExpressionBasis.fit needs at least 2 frames with landmarks, got {len(X)}")
        if max_samples is not None and len(X) > max_samples:
            X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))]
        n = len(X)
        mean = X.mean(0)
        Xc = X - mean  # (N, 204)
        cov = Xc.T @ Xc / (n - 1)  # (204, 204)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order].T  # rows = components
        tol = max(evals[0], 1e-300) * 1e-10
        n_eff = int(min(n_components, n - 1, (evals > tol).sum()))
        comps = np.zeros((n_components, RESIDUAL_DIM))
        var = np.zeros(n_components)
        comps[:n_eff], var[:n_eff] = evecs[:n_eff], evals[:n_eff]
        # Deterministic signs: largest-magnitude entry positive.
        big = np.argmax(np.abs(comps[:n_eff]), axis=1)
        comps[:n_eff] *= np.sign(comps[np.arange(n_eff), big])[:, None]
        if n_eff < n_components:
            warnings.warn(
                f"ExpressionBasis.fit: only {n_eff} non-degenerate components from {n} samples; "
                f"components {n_eff}..{n_components - 1} are zero (padding)",
                stacklevel=2,
            )
        return cls(mean, comps, var, n, n_eff, seed)

    def project(self, residuals: np.ndarray) -> np.ndarray:
        """(T, 204) residuals → (T, C) coefficients (NaN rows stay NaN)."""
        return (np.asarray(residuals, np.float64) - self.mean) @ self.components.T  # (T, C)

    def reconstruct(self, coeffs: np.ndarray) -> np.ndarray:
        """(T, C) coefficients → (T, 204) residuals."""
        return np.asarray(coeffs, np.float64) @ self.components + self.mean

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an npz atomically and byte-reproducibly (`pipeline.io.save_npz`)."""
        save_npz(path, format_version=np.array(BASIS_FORMAT_VERSION), mean=self.mean, components=self.components,
                 explained_variance=self.explained_variance, n_samples=np.array(self.n_samples),
                 n_effective=np.array(self.n_effective), seed=np.array(self.seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExpressionBasis:
        """Read a basis written by `save`; errors name the file and the problem."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != BASIS_FORMAT_VERSION:
                    raise ValueError(f"format_version {version}, expected {BASIS_FORMAT_VERSION}")
                basis = cls(
                    mean=z["mean"],
                    components=z["components"],
                    explained_variance=z["explained_variance"],
                    n_samples=int(z["n_samples"]),
                    n_effective=int(z["n_effective"]),
                    seed=int(z["seed"]),
                )
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"cannot load expression basis {path}: {err}") from err
        C = len(basis.components)
        if basis.components.shape != (C, RESIDUAL_DIM) or basis.mean.shape != (RESIDUAL_DIM,):
            raise ValueError(f"expression basis {path}: bad shapes {basis.components.shape}, {basis.mean.shape}")
        return basis


def coefficients(
    expression: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    scale: np.ndarray,
    *,
    crop_center: tuple[float, float],
) -> np.ndarray:
    """Assemble the per-frame 73-d coefficient vectors (layout in the module docstring).

    Args:
        expression: (T, 64) from `ExpressionBasis.project`.
        rotation, translation, scale: (T, 3, 3), (T, 3), (T,) from `fit_pose(..., image_size=S)` on landmarks in
            crop pixel coordinates (`crop.transform_landmarks`), i.e. already normalised by the crop side S.
        crop_center: the fixed crop's centre in the source frame divided by the source (width, height).
    Returns:
        (T, 73) float32.
    """
    expression = np.asarray(expression, np.float64)
    T = len(expression)
    rotation = np.asarray(rotation, np.float64)
    if (
        expression.shape != (T, NUM_EXPRESSION)
        or rotation.shape != (T, 3, 3)
        or np.shape(translation) != (T, 3)
        or np.shape(scale) != (T,)
    ):
        raise ValueError(
            f"coefficients: expression {expression.shape} must be (T, {NUM_EXPRESSION}), rotation {rotation.shape} "
            f"(T, 3, 3), translation {np.shape(translation)} (T, 3), scale {np.shape(scale)} (T,)"
        )
    yaw, pitch, roll = euler_from_matrix(rotation)
    out = np.empty((T, COEFF_DIM), np.float64)
    out[:, EXPRESSION] = expression
    out[:, ROTATION] = np.stack([yaw, pitch, roll], axis=1)  # (T, 3)
    out[:, TRANSLATION] = translation
    out[:, 70] = scale
    out[:, 71], out[:, 72] = crop_center
    return out.astype(np.float32)


def coefficient_windows(coeffs: np.ndarray, centres: Sequence[int] | np.ndarray, window: int) -> np.ndarray:
    """MappingNet inputs: the `window` frames of motion coefficients centred on each frame, edge-clamped.

    Args:
        coeffs: (T, >= 70) per-frame coefficients of one clip (preprocessing's 73-d layout; the first 70 are used).
        centres: frame indices.
        window: frames per window (odd: centre ± window // 2; even: one more frame before the centre than after).
    Returns:
        (len(centres), 70, window) float32.
    """
    t = len(coeffs)
    offsets = np.arange(window) - window // 2  # (W,)
    rows = np.clip(np.asarray(centres, np.int64)[:, None] + offsets[None], 0, t - 1)  # (N, W)
    return np.ascontiguousarray(np.asarray(coeffs, np.float32)[rows][..., MOTION].transpose(0, 2, 1))
