"""LMD: landmark distance between generated and ground-truth frames (Chen et al. 2019; TAVCE's lip accuracy).

For every frame pair the mean Euclidean distance between corresponding landmarks is taken, then averaged over
frames. Mouth LMD uses the 20 mouth points 48-67 of the iBUG layout, full-face LMD all 68. Landmarks come from
dlib's 68-point predictor (``dlib_68_ibug``, :mod:`pipeline.metrics.dlib_face`) and are expressed in pixels of a
:data:`REFERENCE_SIDE`-px frame, so videos of different sizes are comparable.

``normalize``:
- ``none``: raw positions (head pose differences count as landmark error, as in the original LMD);
- ``rigid`` (frontalised): each generated landmark set is first mapped onto its ground-truth frame by the
  similarity transform (rotation, scale, translation; least squares, Umeyama) fitted on the rigid points 17-47
  (brows, nose, eyes), so a different head pose is removed and only the mouth's own shape and motion count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.metrics.dlib_face import LANDMARKS_NAME

MOUTH = slice(48, 68)
RIGID = slice(17, 48)
REFERENCE_SIDE = 256  # px: landmarks are rescaled to a frame of this side before distances are taken
Normalize = Literal["none", "rigid"]


@dataclass(frozen=True)
class LmdResult:
    """Mouth and full-face LMD of one clip (pixels of a 256-px frame).

    Attributes:
        mouth / face: mean landmark distance over the frames where both videos have a face.
        frames_scored: such frames; normalize: ``none`` | ``rigid``; extractor: the landmark detector.
    """

    mouth: float
    face: float
    frames_scored: int
    normalize: str
    extractor: str = LANDMARKS_NAME


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) mapping (P, 2) `src` onto `dst`: returns scale s, rotation R (2, 2)
    and translation t (2,) with ``dst ≈ s · src @ R.T + t``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)  # (2, 2)
    u, sv, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    R = u @ d @ vt
    var = (a ** 2).sum() / len(src)
    s = float((sv * np.diag(d)).sum() / var) if var > 0 else 1.0
    return s, R, mu_d - s * mu_s @ R.T


def align_rigid(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, 68, 2) generated landmarks mapped per frame onto the reference by the similarity of the rigid points."""
    out = np.empty_like(generated, dtype=np.float64)
    for t in range(len(generated)):
        s, R, tr = similarity_transform(generated[t, RIGID], reference[t, RIGID])
        out[t] = s * generated[t] @ R.T + tr
    return out


def landmark_distance(generated: np.ndarray, reference: np.ndarray, gen_side: float, ref_side: float,
                      normalize: Normalize = "none", extractor: str = LANDMARKS_NAME) -> LmdResult:
    """LMD of two (T, 68, 2) landmark tracks (NaN rows = no face), matched frame by frame over the shorter.

    Args:
        gen_side / ref_side: frame side (px) of each video, for the rescaling to :data:`REFERENCE_SIDE`.
    """
    if normalize not in ("none", "rigid"):
        raise ValueError(f"normalize must be none | rigid, got {normalize!r}")
    n = min(len(generated), len(reference))
    g = np.asarray(generated[:n], dtype=np.float64) * (REFERENCE_SIDE / gen_side)  # (T, 68, 2)
    r = np.asarray(reference[:n], dtype=np.float64) * (REFERENCE_SIDE / ref_side)
    ok = np.isfinite(g).all(axis=(1, 2)) & np.isfinite(r).all(axis=(1, 2))
    if not ok.any():
        raise ValueError(f"no frame with a face in both videos (of {n} compared)")
    g, r = g[ok], r[ok]
    if normalize == "rigid":
        g = align_rigid(g, r)
    dist = np.linalg.norm(g - r, axis=-1)  # (T', 68)
    return LmdResult(mouth=float(dist[:, MOUTH].mean()), face=float(dist.mean()), frames_scored=int(ok.sum()),
                     normalize=normalize, extractor=extractor)
