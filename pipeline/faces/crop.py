"""Temporal box smoothing and the fixed per-clip face crop (FOMM / SadTalker style, method.md §2).

Coordinates are continuous pixel coordinates with the *corner* convention: pixel (i, j) covers
[j, j+1) × [i, i+1) in (x, y); x right, y down (the convention of `pipeline.geometry`). Detector boxes
(x0, y0, x1, y1) and landmarks (x, y, z) from `pipeline.faces.landmarks` use it.

The crop is one integer square for the whole clip (not re-centred per frame): it contains the union of the
smoothed face boxes, enlarged by a margin proportional to the typical face size so that the whole head (hair,
chin, some shoulder) is inside. It may extend outside the frame; `apply_crop` then pads by edge replication
(or a constant). Mapping into the crop is the similarity ``u = (x - x0) * out_size / size`` for x, y and z alike,
which is exactly the geometry of slicing + `cv2.resize` (corner-aligned, as INTER_AREA assumes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.ndimage import median_filter, uniform_filter1d


@dataclass(frozen=True)
class CropBox:
    """A square crop in source-frame pixels: x0, y0 (top-left corner, may be negative) and side `size`."""

    x0: int
    y0: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.size

    @property
    def y1(self) -> int:
        return self.y0 + self.size

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.size / 2.0, self.y0 + self.size / 2.0)


def interpolate_gaps(values: np.ndarray) -> np.ndarray:
    """Fill NaN rows of (T, C) by linear interpolation in time; leading/trailing gaps hold the nearest value."""
    out = values.astype(np.float64, copy=True)
    valid = np.isfinite(out).all(axis=1)  # (T,)
    if valid.all() or not valid.any():
        return out
    t = np.arange(len(out))
    for c in range(out.shape[1]):
        out[:, c] = np.interp(t, t[valid], out[valid, c])
    return out


def smooth_boxes(boxes: np.ndarray, *, window: int = 5, median_window: int | None = None) -> np.ndarray:
    """Gap-filled, temporally smoothed face boxes.

    Missing frames (NaN rows) are filled by linear interpolation between the neighbouring detections; then each
    coordinate gets a running median (removes single-frame detector glitches) followed by a moving average
    (removes jitter). Windows are in frames, odd, and shrink to the clip length; edges use the nearest value.

    Args:
        boxes: (T, 4) x0, y0, x1, y1 with NaN rows where no face was found.
        window: moving-average length in frames (1 disables it).
        median_window: running-median length in frames (default: `window`; 1 disables it).
    Returns:
        (T, 4) float64; all-NaN if no frame has a box.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"smooth_boxes expects (T, 4) boxes, got shape {boxes.shape}")
    mean_window = window
    if median_window is None:
        median_window = window
    if median_window < 1 or mean_window < 1:
        raise ValueError(f"filter windows must be >= 1, got median {median_window}, mean {mean_window}")
    filled = interpolate_gaps(boxes)  # (T, 4)
    if not np.isfinite(filled).all() or len(filled) == 0:
        return filled
    T = len(filled)
    med = min(median_window, T if T % 2 else T - 1)
    if med > 1:
        filled = median_filter(filled, size=(med, 1), mode="nearest")
    if min(mean_window, T) > 1:
        filled = uniform_filter1d(filled, size=min(mean_window, T), axis=0, mode="nearest")
    return filled


def fixed_crop(
    boxes: np.ndarray,
    frame_size: tuple[int, int],
    *,
    scale: float = 1.8,
    shift_y: float = -0.1,
    quantile: float = 1.0,
) -> CropBox:
    """One square crop for a whole clip that keeps the head motion inside (FOMM `crop-video.py` / SadTalker).

    The crop centre is the centre of the union of the (smoothed) boxes, moved by ``shift_y`` times the median face
    size (negative = up: detector boxes start at the brows, the head extends further up than down). Its side is the
    larger extent of the union plus ``(scale - 1)`` times the median face size, so a static face gets a crop
    ``scale`` times its box and a moving one additionally covers the whole motion range.

    Args:
        boxes: (T, 4) x0, y0, x1, y1, ideally from `smooth_boxes`; NaN rows are ignored.
        frame_size: (H, W) of the source frames; used only for validation (the crop may extend outside the frame).
        scale: head-plus-margin enlargement relative to the face box (1.8 ≈ VoxCeleb/FOMM framing for tight boxes).
        shift_y: vertical offset of the centre in units of the median face size.
        quantile: 1.0 takes the full union; e.g. 0.98 ignores the outermost 2 % of box edges (outlier detections).
    Returns:
        The integer `CropBox`.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"fixed_crop expects (T, 4) boxes, got shape {boxes.shape}")
    valid = boxes[np.isfinite(boxes).all(axis=1)]  # (T', 4)
    if len(valid) == 0:
        raise ValueError("fixed_crop: no frame has a face box; cannot place a crop")
    if not 0.5 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0.5, 1], got {quantile}")
    if scale < 1.0:
        raise ValueError(f"scale must be >= 1 (the crop must contain the boxes), got {scale}")
    H, W = frame_size
    ux0 = np.quantile(valid[:, 0], 1.0 - quantile)
    uy0 = np.quantile(valid[:, 1], 1.0 - quantile)
    ux1 = np.quantile(valid[:, 2], quantile)
    uy1 = np.quantile(valid[:, 3], quantile)
    face = float(np.median(np.maximum(valid[:, 2] - valid[:, 0], valid[:, 3] - valid[:, 1])))
    cx = (ux0 + ux1) / 2.0
    cy = (uy0 + uy1) / 2.0 + shift_y * face
    # The shift must not push the union out of the crop: grow the side by twice the shift.
    side = max(ux1 - ux0, uy1 - uy0) + (scale - 1.0) * face + 2.0 * abs(shift_y) * face
    size = int(np.ceil(side))
    x0 = int(np.floor(cx - size / 2.0))
    y0 = int(np.floor(cy - size / 2.0))
    # floor() of the corner can leave the far edge half a pixel short of the union: grow by one if needed.
    if x0 + size < ux1 or y0 + size < uy1:
        size += 1
    if x0 + size <= 0 or y0 + size <= 0 or x0 >= W or y0 >= H:
        raise ValueError(f"fixed_crop: crop {x0, y0, size} lies outside the {W}x{H} frame")
    return CropBox(x0=x0, y0=y0, size=size)


def apply_crop(
    frames: np.ndarray,
    crop: CropBox,
    out_size: int,
    *,
    pad: Literal["edge", "constant"] = "edge",
    pad_value: int = 0,
) -> np.ndarray:
    """Cut the fixed square `crop` out of every frame and resize it to out_size × out_size.

    Parts of the crop outside the frame are filled by edge replication (``pad="edge"``) or ``pad_value``.
    Downscaling uses INTER_AREA (anti-aliased), upscaling INTER_CUBIC.

    Args:
        frames: (T, H, W, C) uint8 (or (H, W, C) for a single frame).
        crop: from `fixed_crop`.
        out_size: output side S in pixels.
    Returns:
        (T, S, S, C) (or (S, S, C)), same dtype as frames.
    """
    single = frames.ndim == 3
    batch = frames[None] if single else frames  # (T, H, W, C)
    if batch.ndim != 4:
        raise ValueError(f"apply_crop expects (T, H, W, C) frames, got shape {frames.shape}")
    T, H, W, C = batch.shape
    sx0, sy0 = max(crop.x0, 0), max(crop.y0, 0)
    sx1, sy1 = min(crop.x1, W), min(crop.y1, H)
    if sx1 <= sx0 or sy1 <= sy0:
        raise ValueError(f"apply_crop: crop {crop} does not overlap the {W}x{H} frame")
    top, left = sy0 - crop.y0, sx0 - crop.x0
    bottom, right = crop.y1 - sy1, crop.x1 - sx1
    border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
    interp = cv2.INTER_AREA if crop.size >= out_size else cv2.INTER_CUBIC
    out = np.empty((T, out_size, out_size, C), dtype=batch.dtype)  # (T, S, S, C)
    for t in range(T):
        region = np.ascontiguousarray(batch[t, sy0:sy1, sx0:sx1])  # (h, w, C)
        if top or bottom or left or right:
            region = cv2.copyMakeBorder(region, top, bottom, left, right, border, value=[pad_value] * C)
        resized = cv2.resize(region, (out_size, out_size), interpolation=interp)
        out[t] = resized.reshape(out_size, out_size, C)  # cv2 drops a singleton channel axis
    return out[0] if single else out


def transform_landmarks(landmarks: np.ndarray, crop: CropBox, out_size: int) -> np.ndarray:
    """Map source-frame landmarks (..., K, 2 or 3) into crop pixel coordinates of an out_size crop.

    x, y are shifted by the crop corner and scaled by out_size / size; z (if present) is scaled by the same
    factor, so 3D shapes stay similar. NaN rows stay NaN.
    """
    pts = np.asarray(landmarks)
    if pts.shape[-1] not in (2, 3):
        raise ValueError(f"transform_landmarks expects (..., K, 2|3) points, got shape {pts.shape}")
    s = out_size / crop.size
    out = pts.astype(np.float32 if pts.dtype == np.float32 else np.float64, copy=True) * s
    out[..., 0] -= crop.x0 * s
    out[..., 1] -= crop.y0 * s
    return out
