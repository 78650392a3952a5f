"""A small 3D face renderer for the synthetic corpus (per-pixel ray casting of ellipsoids + projected features).

Geometry lives in a head-fixed *model frame* with the project's axes (``pipeline.geometry``: x right, y down,
z away from the camera; the face looks along −z) in units of the head's half-height. The head is a union of
ellipsoids (cranium, jaw, nose, ears, hair shells) ray-cast per pixel with Lambert + specular shading; facial
features (eyes with white/iris/pupil/lids, brows, lips with a dark mouth interior, teeth and tongue, nostrils) are
3D polylines on the head surface. Everything rotates with ``R = rotation_matrix(yaw, pitch, roll)`` about a pivot
near the top of the neck and is projected orthographically (weak perspective), so yaw is a true 3D rotation.
Silhouette pixels are supersampled adaptively; features are anti-aliased sub-pixel polygons (cv2.LINE_AA).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from pipeline.geometry import rotation_matrix

# Model-frame layout (head half-height = 1). Values that vary per speaker are in `Appearance`.
PIVOT = np.array([0.0, 0.55, 0.15])  # rotation centre: top of the neck
# Head depth (z semi-axis of the cranium; the jaw and the hair shells follow it). Pose is recovered from pixels by
# mediapipe, which reads a face through a human shape prior, so the head's depth *relative to its eye spacing* must
# be human: under yaw the features slide across the face towards the side contour by (depth of the face front in
# front of that contour) · sin(yaw), and mediapipe converts that slide into an angle with human proportions. The
# first version (depth 0.92, eye centres ±0.30) put the nose root ≈ 1.07 outer-eye-corner distances (IOD) in front
# of the side contour, where TEMPLATE_68 (mediapipe's canonical face) has ≈ 0.8–0.85 (nose root 27 vs contour
# points 0/16, 1/15), and every recovered yaw came out ≈ 1.18× too large — the whole mesh, all point subsets, the
# 3D fit and the x/y-only fit alike, so neither our fit nor mediapipe's z scale was at fault; nose protrusion
# (×0.6…×1.5) moved it by < 0.01. Depth 0.86 together with wider-set eyes (`sample_appearance`: centres ±0.32…0.40,
# eyes 10 % larger, outer-corner distance ≈ 1.0) gives ≈ 0.86 IOD and a recovered yaw gain of 1.00 (seeds 0–5,
# ±20°, every delta within 2°); the pitch gain went from 0.68× to 0.75× and roll stayed 1.0×. (A shallower head
# alone, with the old eyes, also fixed yaw but lowered the pitch gain to 0.56×.)
HEAD_DEPTH = 0.86
EYE_Y = -0.12
BROW_Y = -0.34
MOUTH_Y = 0.56
CHIN_Y = 0.98
FACE_HEIGHT = CHIN_Y - BROW_Y  # brow line → chin: the face size that normalises the mouth opening
MAX_LIP_GAP = 0.24  # inner-lip distance at opening 1.0, model units
JAW_DROP_PER_GAP = 0.55  # the chin moves down by this fraction of the lip gap
CAMERA_Z = -10.0  # ray origins (orthographic camera) lie on this plane in camera coordinates
_SHIFT = 4  # fixed-point bits for cv2 polygon coordinates (1/16 px precision)
_SCALE = float(1 << _SHIFT)
EDGE_SAMPLES = 4  # rays per silhouette pixel (rotated-grid pattern)
_EDGE_OFFSETS = np.array([[-0.375, -0.125], [0.125, -0.375], [0.375, 0.125], [-0.125, 0.375]])
STATIC_SUPERSAMPLE = 2  # the static layer (background, neck, shoulders) is drawn at 2× and area-averaged

SKIN_TONES_RGB = (
    (250, 221, 196), (241, 194, 163), (227, 178, 140), (210, 155, 115), (188, 132, 96),
    (160, 108, 75), (128, 86, 60), (100, 68, 48),
)
HAIR_COLOURS_RGB = ((30, 24, 20), (60, 40, 28), (100, 70, 40), (150, 110, 60), (200, 170, 110), (120, 120, 120),
                    (90, 30, 20), (20, 20, 24))
IRIS_COLOURS_RGB = ((70, 45, 25), (40, 80, 120), (60, 100, 60), (110, 80, 40), (30, 30, 30))
HAIR_STYLES = ("short", "long", "crop")
BACKGROUND_KINDS = ("blobs", "gradient", "stripes", "room")


@dataclasses.dataclass(frozen=True)
class Appearance:
    """One synthetic identity: face shape, colours, framing and lighting (all drawn by `sample_appearance`)."""

    frame_size: tuple[int, int]  # (W, H) pixels
    centre_px: tuple[float, float]  # image position of the model origin
    scale_px: float  # pixels per model unit (head half-height)
    head_width: float  # cranium half-width, model units
    jaw_width: float  # jaw half-width relative to head_width
    eye_spacing: float  # half-distance between the eye centres
    eye_size: float  # eye half-width
    nose_length: float
    nose_width: float
    mouth_width: float  # lip corner half-distance at rest
    lip_thickness: float
    brow_thickness: float
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    iris_rgb: tuple[int, int, int]
    lip_rgb: tuple[int, int, int]
    cloth_rgb: tuple[int, int, int]
    hair_style: str
    hairline: float  # model y of the front hairline
    light_dir: tuple[float, float, float]  # towards the light, camera frame
    ambient: float
    background: str
    background_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]
    background_seed: int


def sample_appearance(rng: np.random.Generator, frame_size: tuple[int, int]) -> Appearance:
    """Draw a random identity framed in a (W, H) video."""
    w, h = frame_size
    skin = np.array(SKIN_TONES_RGB[rng.integers(len(SKIN_TONES_RGB))], float) * rng.uniform(0.95, 1.04, 3)
    hair = np.array(HAIR_COLOURS_RGB[rng.integers(len(HAIR_COLOURS_RGB))], float) * rng.uniform(0.85, 1.15)
    lip = skin * np.array([0.82, 0.55, 0.55]) + np.array([30.0, 0.0, 5.0])
    bg_a = rng.uniform(40, 230, 3)
    bg_b = np.clip(bg_a + rng.normal(0, 50, 3), 10, 245)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.8, -0.2), -1.0])
    scale = min(w, h) * rng.uniform(0.21, 0.27)
    return Appearance(
        frame_size=(int(w), int(h)),
        centre_px=(float(w * (0.5 + rng.uniform(-0.06, 0.06))), float(h * rng.uniform(0.40, 0.47))),
        scale_px=float(scale),
        head_width=float(rng.uniform(0.72, 0.84)),
        jaw_width=float(rng.uniform(0.74, 0.86)),
        eye_spacing=float(rng.uniform(0.324, 0.396)),  # wide enough for human depth/IOD (see HEAD_DEPTH)
        eye_size=float(rng.uniform(0.1265, 0.154)),
        nose_length=float(rng.uniform(0.9, 1.15)),
        nose_width=float(rng.uniform(0.85, 1.2)),
        mouth_width=float(rng.uniform(0.20, 0.25)),
        lip_thickness=float(rng.uniform(0.8, 1.25)),
        brow_thickness=float(rng.uniform(0.028, 0.045)),
        skin_rgb=_rgb(skin),
        hair_rgb=_rgb(hair),
        iris_rgb=IRIS_COLOURS_RGB[int(rng.integers(len(IRIS_COLOURS_RGB)))],
        lip_rgb=_rgb(lip),
        cloth_rgb=_rgb(rng.uniform(20, 230, 3)),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        hairline=float(rng.uniform(-0.62, -0.52)),
        light_dir=tuple(float(v) for v in light / np.linalg.norm(light)),
        ambient=float(rng.uniform(0.38, 0.5)),
        background=BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
        background_rgb=(_rgb(bg_a), _rgb(bg_b)),
        background_seed=int(rng.integers(2**31)),
    )


def _rgb(v: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.round(v), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


@dataclasses.dataclass(frozen=True)
class _Ellipsoid:
    centre: np.ndarray  # (3,)
    axes: np.ndarray  # (3,) semi-axes
    material: str  # skin | hair | cloth
    region: str = "all"  # which part of the surface exists: all | hair_cap | hair_long
    blend: bool = False  # member of the smoothly blended face surface (cranium ∪ jaw)


@dataclasses.dataclass(frozen=True)
class FrameTruth:
    """What the renderer drew, for the ground-truth sidecar: inner-lip gap / face height and 2D key points."""

    mouth_open: float
    points_px: dict[str, tuple[float, float]]


class FaceRenderer:
    """Renders one `Appearance` for given pose, mouth articulation and eyelid closure.

    Args:
        app: the identity.
    """

    def __init__(self, app: Appearance) -> None:
        self.app = app
        self.skin = np.array(app.skin_rgb, np.float64) / 255.0
        self.hair = np.array(app.hair_rgb, np.float64) / 255.0
        self.cloth = np.array(app.cloth_rgb, np.float64) / 255.0
        self.light = np.array(app.light_dir, np.float64)
        self._cran = self._cranium()
        self.static = self._static_layer()  # (H*ss, W*ss, 3) uint8: background + neck + shoulders

    # --- geometry -------------------------------------------------------------------------------------------
    def _cranium(self) -> _Ellipsoid:
        return _Ellipsoid(np.array([0.0, -0.05, 0.0]), np.array([self.app.head_width, 1.0, HEAD_DEPTH]), "skin",
                          blend=True)

    def _jaw(self, drop: float) -> _Ellipsoid:
        k = HEAD_DEPTH / 0.92  # jaw depth and forward offset scale with the cranium's (designed at depth 0.92)
        return _Ellipsoid(np.array([0.0, 0.40 + drop, -0.13 * k]),
                          np.array([self.app.head_width * self.app.jaw_width, 0.58, 0.72 * k]), "skin", blend=True)

    def _head_parts(self, drop: float) -> list[_Ellipsoid]:
        a = self.app
        parts = [self._cranium(), self._jaw(drop)]
        nose_centre_y = 0.10 + 0.02 * a.nose_length
        parts.append(_Ellipsoid(np.array([0.0, nose_centre_y, float(self._front_z(0.0, nose_centre_y, 0.0)) + 0.02]),
                                np.array([0.075 * a.nose_width, 0.19 * a.nose_length, 0.16]), "skin"))
        for side in (-1.0, 1.0):
            parts.append(_Ellipsoid(np.array([side * a.head_width * 0.96, 0.06, 0.12]),
                                    np.array([0.07, 0.19, 0.11]), "skin"))
        if a.hair_style != "crop":
            parts.append(_Ellipsoid(np.array([0.0, -0.1, 0.04]),
                                    np.array([a.head_width * 1.08, 1.0, HEAD_DEPTH + 0.08]), "hair", "hair_cap"))
        else:
            parts.append(_Ellipsoid(np.array([0.0, -0.07, 0.02]),
                                    np.array([a.head_width * 1.025, 1.0, HEAD_DEPTH + 0.03]), "hair", "hair_cap"))
        if a.hair_style == "long":
            parts.append(_Ellipsoid(np.array([0.0, 0.35, 0.30]),
                                    np.array([a.head_width * 1.14, 1.05, 0.78]), "hair", "hair_long"))
        return parts

    def _front_z(self, x: float | np.ndarray, y: float | np.ndarray, drop: float) -> np.ndarray:
        """z of the face surface (cranium ∪ jaw, front side) at model (x, y); 0 outside both."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        z = np.full(np.broadcast(x, y).shape, np.inf)
        for e in (self._cran, self._jaw(drop)):
            u = 1.0 - ((x - e.centre[0]) / e.axes[0]) ** 2 - ((y - e.centre[1]) / e.axes[1]) ** 2
            z = np.minimum(z, np.where(u > 0, e.centre[2] - e.axes[2] * np.sqrt(np.maximum(u, 0.0)), np.inf))
        return np.where(np.isfinite(z), z, 0.0)

    def _hair_valid(self, p: np.ndarray, region: str) -> np.ndarray:
        """Which hit points on a hair shell carry hair. p: (..., 3) model coordinates."""
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        phi = np.abs(np.arctan2(x, -z))  # 0 at the face, π at the back of the head
        if region == "hair_long":
            return (z > -0.15) & (y < 1.15)
        front = self.app.hairline
        side = -0.12 if self.app.hair_style != "crop" else -0.2
        back = 0.55
        t = np.clip(phi / (math.pi / 2), 0.0, 2.0)
        line = np.where(t <= 1.0, front + (side - front) * t ** 1.6, side + (back - side) * (t - 1.0))
        # A fringe that dips towards the forehead centre (a parting look), kept above the brows.
        return y < line

    # --- static layer ----------------------------------------------------------------------------------------
    def _static_layer(self) -> np.ndarray:
        a = self.app
        w, h = a.frame_size[0] * STATIC_SUPERSAMPLE, a.frame_size[1] * STATIC_SUPERSAMPLE
        rng = np.random.default_rng(a.background_seed)
        c0 = np.array(a.background_rgb[0], np.float32)
        c1 = np.array(a.background_rgb[1], np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if a.background == "gradient":
            ang = rng.uniform(0, 2 * math.pi)
            t = ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang)) + 0.5
            img = c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)
        elif a.background == "stripes":
            period = rng.uniform(0.08, 0.2) * w
            ang = rng.uniform(0, math.pi)
            t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period)
            img = c0 + t[..., None] * (c1 - c0) * 0.6
        elif a.background == "room":
            img = np.empty((h, w, 3), np.float32)
            horizon = int(h * rng.uniform(0.55, 0.8))
            img[:horizon] = c0
            img[horizon:] = c1 * 0.8
            for _ in range(3):  # a few rectangles: shelves, frames, doors
                x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, horizon))
                x1, y1 = x0 + int(rng.uniform(0.1, 0.3) * w), y0 + int(rng.uniform(0.1, 0.3) * h)
                img[y0:y1, x0:x1] = np.clip(c0 + rng.normal(0, 40, 3), 0, 255)
            img = cv2.GaussianBlur(img, (0, 0), 1.5 * STATIC_SUPERSAMPLE)
        else:  # blobs
            small = rng.uniform(0, 1, (5, 5, 1)).astype(np.float32)
            t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None] if small.shape[2] == 1 else small
            img = c0 + np.clip(t, 0, 1) * (c1 - c0)
        grain = rng.normal(0, 4.0, (h // 2 + 1, w // 2 + 1, 1)).astype(np.float32)
        img = img + cv2.resize(grain, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]

        # Neck and shoulders (torso does not rotate with the head): ray-cast once with identity rotation.
        body = [
            _Ellipsoid(np.array([0.0, 1.25, 0.15]), np.array([0.42 * a.head_width / 0.78, 0.9, 0.42]), "skin"),
            _Ellipsoid(np.array([0.0, 2.3, 0.35]), np.array([1.75, 0.85, 0.7]), "cloth"),
        ]
        ss = STATIC_SUPERSAMPLE
        depth, owner, X, Y = self._trace_grid(body, np.eye(3), (0.0, 0.0), (0, 0, w, h), scale=ss)
        colour = self._shade_hits(body, np.eye(3), X[None, :], Y[:, None], depth, owner)
        mask = owner >= 0
        img[mask] = colour[mask] * 255.0
        img = np.clip(img, 0, 255).astype(np.uint8)
        return cv2.resize(img, self.app.frame_size, interpolation=cv2.INTER_AREA)

    # --- ray casting -----------------------------------------------------------------------------------------
    def _cam_xy(self, px: np.ndarray, py: np.ndarray, shift: tuple[float, float], scale: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (at `scale`× the output resolution) → camera-frame x, y in model units."""
        a = self.app
        x_out = (px - (scale - 1) / 2) / scale
        y_out = (py - (scale - 1) / 2) / scale
        return (((x_out - a.centre_px[0]) / a.scale_px - shift[0]).astype(np.float32),
                ((y_out - a.centre_px[1]) / a.scale_px - shift[1]).astype(np.float32))

    def _hit_t(self, e: _Ellipsoid, R: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Ray parameter of the nearest valid hit of the rays through camera (X, Y) (broadcastable), inf = miss.

        Camera ray ``(X, Y, CAMERA_Z) + t·(0, 0, 1)`` in model coordinates is ``o0 + X·R[0] + Y·R[1] + t·R[2]``
        (inverse of ``p_cam = (p - pivot) Rᵀ + pivot``); the ellipsoid equation is quadratic in t.
        """
        ex, ey, d = R[0], R[1], R[2]
        o0 = (np.array([0.0, 0.0, CAMERA_Z]) - PIVOT) @ R + PIVOT
        qx, qy, q0, k = ex / e.axes, ey / e.axes, (o0 - e.centre) / e.axes, d / e.axes
        A = float(k @ k)
        B = 2.0 * (X * float(qx @ k) + (Y * float(qy @ k) + float(q0 @ k)))
        C = (X * (X * float(qx @ qx) + 2 * float(qx @ q0)) + (Y * (Y * float(qy @ qy) + 2 * float(qy @ q0))
             + float(q0 @ q0) - 1.0) + 2 * float(qx @ qy) * X * Y)
        disc = B * B - 4 * A * C
        hit = disc > 0
        sq = np.sqrt(np.maximum(disc, 0.0))
        t = np.where(hit, (-B - sq) / (2 * A), np.inf).astype(np.float32)
        if e.material == "hair" and hit.any():
            Xb, Yb = np.broadcast_arrays(X, Y)
            sel = np.nonzero(hit)
            base = Xb[sel][:, None] * ex + Yb[sel][:, None] * ey + o0  # (n, 3)
            t1, t2 = t[sel], ((-B + sq) / (2 * A))[sel]
            ok1 = self._hair_valid(base + t1[:, None] * d, e.region)
            ok2 = ~ok1 & self._hair_valid(base + t2[:, None] * d, e.region)
            t[sel] = np.where(ok1, t1, np.where(ok2, t2, np.inf))
        return t

    def _part_box(self, e: _Ellipsoid, R: np.ndarray, shift: tuple[float, float], scale: float
                  ) -> tuple[float, float, float, float]:
        """Pixel bounding box (x0, y0, x1, y1) of the ellipsoid's projection at `scale`× resolution."""
        c_cam = (e.centre - PIVOT) @ R.T + PIVOT
        ext = np.sqrt(((R[:2] * e.axes) ** 2).sum(1)) * self.app.scale_px * scale + 2  # half extents (2,)
        cu = ((c_cam[0] + shift[0]) * self.app.scale_px + self.app.centre_px[0]) * scale + (scale - 1) / 2
        cv = ((c_cam[1] + shift[1]) * self.app.scale_px + self.app.centre_px[1]) * scale + (scale - 1) / 2
        return cu - ext[0], cv - ext[1], cu + ext[0], cv + ext[1]

    def _trace_grid(self, parts: list[_Ellipsoid], R: np.ndarray, shift: tuple[float, float],
                    box: tuple[int, int, int, int], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Nearest hit per pixel of `box`: depth (H', W'), owning part index (-1 = miss), and camera X (W',), Y (H',)."""
        x0, y0, x1, y1 = box
        X, _ = self._cam_xy(np.arange(x0, x1, dtype=np.float64), np.zeros(1), shift, scale)
        _, Y = self._cam_xy(np.zeros(1), np.arange(y0, y1, dtype=np.float64), shift, scale)
        depth = np.full((len(Y), len(X)), np.inf, np.float32)
        owner = np.full((len(Y), len(X)), -1, np.int16)
        for idx, e in enumerate(parts):
            bx0, by0, bx1, by1 = self._part_box(e, R, shift, scale)
            i0, i1 = max(int(bx0) - x0, 0), min(int(bx1) + 1 - x0, len(X))
            j0, j1 = max(int(by0) - y0, 0), min(int(by1) + 1 - y0, len(Y))
            if i0 >= i1 or j0 >= j1:
                continue
            t = self._hit_t(e, R, X[None, i0:i1], Y[j0:j1, None])
            sub_depth = depth[j0:j1, i0:i1]
            closer = t < sub_depth
            sub_depth[closer] = t[closer]
            owner[j0:j1, i0:i1][closer] = idx
        return depth, owner, X, Y

    def _trace_points(self, parts: list[_Ellipsoid], R: np.ndarray, X: np.ndarray, Y: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit for scattered rays (n,): depth and owner."""
        depth = np.full(X.shape, np.inf, np.float32)
        owner = np.full(X.shape, -1, np.int16)
        for idx, e in enumerate(parts):
            t = self._hit_t(e, R, X, Y)
            closer = t < depth
            depth[closer] = t[closer]
            owner[closer] = idx
        return depth, owner

    def _shade_hits(self, parts: list[_Ellipsoid], R: np.ndarray, X: np.ndarray, Y: np.ndarray, depth: np.ndarray,
                    owner: np.ndarray) -> np.ndarray:
        """RGB in [0, 1] for every ray with owner ≥ 0 (X, Y, depth, owner: same shape (...)); misses stay 0.

        Skin parts flagged ``blend`` (cranium and jaw) get a normal blended between both surfaces (a smooth
        union), so their junction shows no crease. Works on flat float32 component arrays for speed.
        """
        o0 = (np.array([0.0, 0.0, CAMERA_Z]) - PIVOT) @ R + PIVOT
        Xb, Yb = np.broadcast_arrays(X, Y)
        colour = np.zeros(owner.shape + (3,), np.float32)
        blend = [i for i, e in enumerate(parts) if e.blend]
        Rf = R.astype(np.float32)
        for idx, e in enumerate(parts):
            sel = np.nonzero(owner == idx)
            if len(sel[0]) == 0:
                continue
            xs, ys, ts = Xb[sel], Yb[sel], depth[sel]
            # Model coordinates of the hits, one (n,) array per axis.
            P = [xs * Rf[0, c] + ys * Rf[1, c] + ts * Rf[2, c] + np.float32(o0[c]) for c in range(3)]
            if e.blend and len(blend) > 1:
                acc = [np.zeros_like(xs) for _ in range(3)]
                fs, gs = [], []
                for b in blend:
                    eb = parts[b]
                    q = [(P[c] - np.float32(eb.centre[c])) / np.float32(eb.axes[c]) for c in range(3)]
                    fs.append(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] - 1.0)
                    g = [q[c] / np.float32(eb.axes[c]) for c in range(3)]
                    inv = 1.0 / (np.sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]) + 1e-12)
                    gs.append([g[c] * inv for c in range(3)])
                fmin = np.minimum.reduce(fs)
                for f, g in zip(fs, gs):
                    wgt = np.exp(-(f - fmin) / np.float32(0.12))  # soft-min of the implicit functions
                    for c in range(3):
                        acc[c] += wgt * g[c]
                n = acc
            else:
                n = [(P[c] - np.float32(e.centre[c])) / np.float32(e.axes[c] ** 2) for c in range(3)]
            inv = 1.0 / (np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]) + 1e-12)
            # Camera-frame normal: n_cam = R · n_model.
            nc = [(Rf[r, 0] * n[0] + Rf[r, 1] * n[1] + Rf[r, 2] * n[2]) * inv for r in range(3)]
            if e.material == "hair":  # hits on the inside of the shell: flip towards the viewer
                flip = np.where(nc[2] > 0, np.float32(-1.0), np.float32(1.0))
                nc = [v * flip for v in nc]
            colour[sel] = self._shade(P, nc, e)
        return colour

    def _render_surface(self, img: np.ndarray, parts: list[_Ellipsoid], R: np.ndarray, shift: tuple[float, float],
                        box: tuple[int, int, int, int]) -> None:
        """Ray-cast `parts` over `box` of `img` (in place) with adaptive anti-aliasing.

        Pixels whose owning part differs from a 4-neighbour's (silhouettes, hairline, nose outline) are
        re-traced with `EDGE_SAMPLES` sub-pixel rays and averaged (misses take the image's current colour).
        """
        x0, y0, x1, y1 = box
        depth, owner, X, Y = self._trace_grid(parts, R, shift, box)
        colour = self._shade_hits(parts, R, X[None, :], Y[:, None], depth, owner)
        edge = np.zeros(owner.shape, bool)
        dx = owner[:, 1:] != owner[:, :-1]
        dy = owner[1:, :] != owner[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        sub = img[y0:y1, x0:x1]
        inner = (owner >= 0) & ~edge
        sub[inner] = np.clip(colour[inner] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        jj, ii = np.nonzero(edge)
        if len(jj):
            off = _EDGE_OFFSETS  # (S, 2)
            px = (ii[:, None] + x0 + off[None, :, 0]).ravel()  # (n*S,)
            py = (jj[:, None] + y0 + off[None, :, 1]).ravel()
            Xs, Ys = self._cam_xy(px, py, shift)
            d_s, o_s = self._trace_points(parts, R, Xs, Ys)
            c_s = self._shade_hits(parts, R, Xs, Ys, d_s, o_s)  # (n*S, 3)
            bg = np.repeat(sub[jj, ii].astype(np.float32) / 255.0, len(off), 0)
            c_s = np.where((o_s >= 0)[:, None], c_s, bg).reshape(len(jj), len(off), 3).mean(1)
            sub[jj, ii] = np.clip(c_s * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _shade(self, P: list[np.ndarray], n: list[np.ndarray], e: _Ellipsoid) -> np.ndarray:
        """Lambert + ambient + a little specular. P: model coordinates (3 × (n,)), n: camera normals (3 × (n,)).

        Returns (n, 3) RGB in [0, 1].
        """
        L = self.light.astype(np.float32)
        ndotl = n[0] * L[0] + n[1] * L[1] + n[2] * L[2]
        diff = np.clip(ndotl, 0.0, 1.0)
        shade = np.float32(self.app.ambient) + np.float32(1 - self.app.ambient) * diff
        # Specular: z of the light's reflection about n against the view direction (0, 0, -1).
        refl_z = 2 * diff * n[2] - L[2]
        spec = np.clip(-refl_z, 0.0, 1.0) ** 24
        if e.material == "skin":
            albedo, gloss = self.skin, 0.10
        elif e.material == "hair":
            shade = shade * (1.0 + 0.10 * np.sin(60 * np.arctan2(P[0], -P[2]) + 9 * P[1]))  # strands
            albedo, gloss = self.hair, 0.12
        else:
            albedo, gloss = self.cloth, 0.0
        out = shade[:, None] * albedo.astype(np.float32)[None, :] + np.float32(gloss) * spec[:, None]
        return np.clip(out, 0.0, 1.0)

    # --- features --------------------------------------------------------------------------------------------
    def _project(self, P: np.ndarray, R: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
        """Model points (K, 3) → output-resolution pixel coordinates (K, 2)."""
        cam = (P - PIVOT) @ R.T + PIVOT
        a = self.app
        return np.stack([(cam[:, 0] + shift[0]) * a.scale_px + a.centre_px[0],
                         (cam[:, 1] + shift[1]) * a.scale_px + a.centre_px[1]], 1)

    def _to_ss(self, px: np.ndarray) -> np.ndarray:
        """Pixel coords → fixed-point coords for cv2 drawing (int32, `_SHIFT` fractional bits)."""
        return np.round(px * _SCALE).astype(np.int32)

    def _surface_points(self, xy: np.ndarray, dz: float | np.ndarray, drop: float) -> np.ndarray:
        z = self._front_z(xy[:, 0], xy[:, 1], drop) + dz
        return np.column_stack([xy, z])

    def _shade_at(self, x: float, y: float, R: np.ndarray, drop: float) -> float:
        p = np.array([x, y, float(self._front_z(x, y, drop))])
        e = self._cranium() if y < 0.3 else self._jaw(drop)
        n = (p - e.centre) / e.axes ** 2
        n = (n / np.linalg.norm(n)) @ R.T
        return float(self.app.ambient + (1 - self.app.ambient) * max(0.0, float(n @ self.light)))

    def _poly(self, img: np.ndarray, pts: np.ndarray, colour: np.ndarray | tuple) -> None:
        cv2.fillPoly(img, [self._to_ss(pts)], _col(colour), cv2.LINE_AA, _SHIFT)

    def _line(self, img: np.ndarray, pts: np.ndarray, colour: np.ndarray | tuple, width_units: float,
              closed: bool = False) -> None:
        thick = max(1, int(round(width_units * self.app.scale_px)))
        cv2.polylines(img, [self._to_ss(pts)], closed, _col(colour), thick, cv2.LINE_AA, _SHIFT)

    def _masked(self, img: np.ndarray, clip_pts: np.ndarray, draw: "callable") -> None:
        """Run `draw(layer)` and keep its result only inside the polygon `clip_pts` (anti-aliased mask)."""
        q = self._to_ss(clip_pts)
        x0, y0 = np.maximum((q.min(0) >> _SHIFT) - 2, 0)
        x1, y1 = (q.max(0) >> _SHIFT) + 3
        x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
        if x1 <= x0 or y1 <= y0:
            return
        roi = img[y0:y1, x0:x1]
        layer = roi.copy()
        off = np.array([x0, y0], np.int32) << _SHIFT
        draw(layer, off)
        mask = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(mask, [q - off], 255, cv2.LINE_AA, _SHIFT)
        m = mask[..., None].astype(np.float32) / 255.0
        roi[:] = (roi * (1 - m) + layer * m).astype(np.uint8)

    def render(self, yaw: float, pitch: float, roll: float, translation: tuple[float, float] = (0.0, 0.0),
               mouth_open: float = 0.0, mouth_width: float = 1.0, mouth_round: float = 0.0,
               eye_closure: float = 0.0) -> tuple[np.ndarray, FrameTruth]:
        """Render one frame.

        Args:
            yaw, pitch, roll: head rotation, radians (`pipeline.geometry.rotation_matrix` convention).
            translation: head shift in model units (fraction of the head half-height), image x/y.
            mouth_open: 0 … 1 (lip gap = `MAX_LIP_GAP` × mouth_open); mouth_width, mouth_round: see `visemes`.
            eye_closure: 0 open … 1 closed.
        Returns:
            (H, W, 3) uint8 RGB frame and the frame's ground truth.
        """
        a = self.app
        R = np.asarray(rotation_matrix(float(yaw), float(pitch), float(roll)), dtype=np.float64)
        shift = (float(translation[0]), float(translation[1]))
        gap = MAX_LIP_GAP * float(np.clip(mouth_open, 0.0, 1.2))
        drop = JAW_DROP_PER_GAP * gap
        img = self.static.copy()

        # Head surface.
        parts = self._head_parts(drop)
        corners = np.array([[sx, sy, sz] for sx in (-1.3, 1.3) for sy in (-1.2, 1.6) for sz in (-1.1, 1.1)])
        cpx = self._project(corners, R, shift)
        w, h = a.frame_size
        x0, y0 = np.clip(np.floor(cpx.min(0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(cpx.max(0)).astype(int) + 1, 0, [w, h])
        if x1 > x0 and y1 > y0:
                self._render_surface(img, parts, R, shift, (int(x0), int(y0), int(x1), int(y1)))

        truth_pts = self._draw_features(img, R, shift, gap, drop, mouth_width, mouth_round, eye_closure)
        return img, FrameTruth(mouth_open=gap / FACE_HEIGHT, points_px=truth_pts)

    def _draw_features(self, img: np.ndarray, R: np.ndarray, shift: tuple[float, float], gap: float, drop: float,
                       mouth_width: float, mouth_round: float, eye_closure: float) -> dict[str, tuple[float, float]]:
        a = self.app
        P = lambda xy, dz=0.0: self._project(self._surface_points(np.asarray(xy, float), dz, drop), R, shift)
        pts: dict[str, tuple[float, float]] = {}

        # Brows.
        brow = np.array(a.hair_rgb, float) * 0.8
        for side in (-1.0, 1.0):
            u = np.linspace(-1, 1, 14)
            bx = side * (a.eye_spacing + 0.01) + u * side * 0.16
            top = BROW_Y - 0.04 * (1 - u ** 2) - a.brow_thickness * (0.6 + 0.4 * (1 - np.abs(u)))
            bottom = BROW_Y - 0.04 * (1 - u ** 2) + a.brow_thickness * 0.3 * (1 - 0.5 * (u > 0))
            poly = np.concatenate([np.column_stack([bx, top]), np.column_stack([bx, bottom])[::-1]])
            self._poly(img, P(poly, -0.01), brow * self._shade_at(side * a.eye_spacing, BROW_Y, R, drop))

        # Eyes.
        open_frac = 1.0 - float(np.clip(eye_closure, 0.0, 1.0))
        for side, name in ((-1.0, "eye_r"), (1.0, "eye_l")):  # image-left eye is the subject's right eye
            cx = side * a.eye_spacing
            u = np.linspace(-1, 1, 17)
            ex = cx + u * a.eye_size
            eh = 0.48 * a.eye_size
            shape = (1 - u ** 2) ** 0.75 * (1 + 0.15 * side * u)  # slightly fuller towards the nose
            lower = EYE_Y + 0.7 * eh * (1 - u ** 2) ** 0.9
            upper_open = EYE_Y - eh * shape
            upper = lower + (upper_open - lower) * open_frac
            shade = self._shade_at(cx, EYE_Y, R, drop)
            skin_dark = np.array(a.skin_rgb, float) * 0.75 * shade
            crease = P(np.column_stack([ex[2:-2], EYE_Y - eh * shape[2:-2] * 1.35 - 0.02]))
            self._line(img, crease, skin_dark, 0.008)
            white = np.concatenate([np.column_stack([ex, upper]), np.column_stack([ex, lower])[::-1]])
            white_px = P(white, 0.005)
            if open_frac > 0.08:
                iris_r = 0.52 * a.eye_size
                ang = np.linspace(0, 2 * math.pi, 24, endpoint=False)
                iris = P(np.column_stack([cx + iris_r * np.cos(ang), EYE_Y + 0.05 * eh + iris_r * np.sin(ang)]), -0.005)
                pupil = P(np.column_stack([cx + 0.45 * iris_r * np.cos(ang),
                                           EYE_Y + 0.05 * eh + 0.45 * iris_r * np.sin(ang)]), -0.006)
                glint = P(np.column_stack([cx - 0.25 * iris_r + 0.15 * iris_r * np.cos(ang),
                                           EYE_Y - 0.25 * iris_r + 0.15 * iris_r * np.sin(ang)]), -0.007)
                iris_col = np.array(a.iris_rgb, float) * shade

                def draw_eye(layer: np.ndarray, off: np.ndarray) -> None:
                    for poly, col in ((white_px, np.array([235.0, 232, 225]) * shade), (iris, iris_col),
                                      (pupil, (12, 10, 10)), (glint, (250, 250, 250))):
                        cv2.fillPoly(layer, [self._to_ss(poly) - off], _col(col), cv2.LINE_AA, _SHIFT)

                self._masked(img, white_px, draw_eye)
            # Lids: a dark lash line on the upper lid, a thin line on the lower lid.
            self._line(img, P(np.column_stack([ex, upper])), (25, 18, 16), 0.02)
            self._line(img, P(np.column_stack([ex[2:-2], lower[2:-2]])), skin_dark * 0.8, 0.008)
            pts[name] = tuple(float(v) for v in P(np.array([[cx, EYE_Y]]))[0])

        # Nostrils and nose tip.
        nose_bottom_y = 0.10 + 0.02 * a.nose_length + 0.19 * a.nose_length
        ang = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        nose_z = self._front_z(0.0, nose_bottom_y - 0.05, 0.0) - 0.07
        for side in (-1.0, 1.0):
            nx = side * 0.042 * a.nose_width
            ring = np.column_stack([nx + 0.024 * a.nose_width * np.cos(ang), nose_bottom_y - 0.035 + 0.011 * np.sin(ang),
                                    np.full(16, nose_z)])
            self._poly(img, self._project(ring, R, shift), np.array(a.skin_rgb, float) * 0.35)
        tip = np.array([[0.0, nose_bottom_y - 0.08, self._front_z(0.0, nose_bottom_y - 0.08, 0.0) - 0.14]])
        pts["nose_tip"] = tuple(float(v) for v in self._project(tip, R, shift)[0])

        # Mouth: outer lip contour, dark interior with teeth and tongue, lip seam.
        mw = a.mouth_width * float(mouth_width)
        rnd = float(np.clip(mouth_round, 0.0, 1.0))
        inner_w = mw * (0.88 - 0.38 * rnd)
        up_gap, low_gap = 0.3 * gap, 0.7 * gap
        lt = a.lip_thickness
        dz_lip = -0.025 - 0.05 * rnd
        u = np.linspace(-1, 1, 21)
        xs = u * mw
        bow = 0.012 * np.exp(-((np.abs(u) - 0.3) / 0.14) ** 2) - 0.01 * np.exp(-(u / 0.1) ** 2)
        ui = np.clip(xs / inner_w, -1, 1)
        env = np.sqrt(np.clip(1 - ui ** 2, 0, 1))
        upper_inner = MOUTH_Y - up_gap * env
        lower_inner = MOUTH_Y + low_gap * env
        upper_outer = MOUTH_Y - up_gap * env - lt * (0.012 + 0.048 * (1 - u ** 2) ** 0.6) - bow * lt
        lower_outer = MOUTH_Y + low_gap * env + lt * (0.012 + 0.062 * (1 - u ** 2) ** 0.7)
        lip_shade = self._shade_at(0.0, MOUTH_Y, R, drop)
        lip_col = np.array(a.lip_rgb, float) * lip_shade
        outer = np.concatenate([np.column_stack([xs, upper_outer]), np.column_stack([xs, lower_outer])[::-1]])
        self._poly(img, P(outer, dz_lip), lip_col)
        # Upper lip a little darker (it faces down, away from the light).
        upper_lip = np.concatenate([np.column_stack([xs, upper_outer]), np.column_stack([xs, upper_inner])[::-1]])
        self._poly(img, P(upper_lip, dz_lip), lip_col * 0.85)
        inner = np.concatenate([np.column_stack([xs, upper_inner]), np.column_stack([xs, lower_inner])[::-1]])
        inner_px = P(inner, dz_lip + 0.01)
        if gap > 0.004:
            def draw_mouth(layer: np.ndarray, off: np.ndarray) -> None:
                cv2.fillPoly(layer, [self._to_ss(inner_px) - off], _col((40, 12, 14)), cv2.LINE_AA, _SHIFT)
                tongue = P(np.column_stack([0.6 * inner_w * np.cos(ang), MOUTH_Y + low_gap * 0.8 + 0.45 * gap * np.sin(ang)]),
                           dz_lip + 0.03)
                cv2.fillPoly(layer, [self._to_ss(tongue) - off], _col((150, 60, 65)), cv2.LINE_AA, _SHIFT)
                teeth_h = min(0.04, 0.5 * gap)
                tx = np.linspace(-0.8, 0.8, 12) * inner_w
                t_env = np.sqrt(np.clip(1 - (tx / inner_w) ** 2, 0, 1))
                top = MOUTH_Y - up_gap * t_env - 0.01
                teeth = np.concatenate([np.column_stack([tx, top]), np.column_stack([tx, top + teeth_h + up_gap * t_env])[::-1]])
                cv2.fillPoly(layer, [self._to_ss(P(teeth, dz_lip + 0.015)) - off], _col(np.array([235.0, 230, 215]) * lip_shade),
                             cv2.LINE_AA, _SHIFT)
            self._masked(img, inner_px, draw_mouth)
        seam = np.column_stack([xs, upper_inner + 0.5 * (lower_inner - upper_inner) * (gap <= 0.004)])
        self._line(img, P(seam, dz_lip), np.array(a.lip_rgb, float) * 0.45 * lip_shade, 0.012 if gap <= 0.004 else 0.006)

        def pt(x: float, y: float, dz: float = dz_lip) -> tuple[float, float]:
            return tuple(float(v) for v in P(np.array([[x, y]]), dz)[0])

        pts["mouth_r"] = pt(-mw, MOUTH_Y)
        pts["mouth_l"] = pt(mw, MOUTH_Y)
        pts["lip_inner_top"] = pt(0.0, MOUTH_Y - up_gap)
        pts["lip_inner_bottom"] = pt(0.0, MOUTH_Y + low_gap)
        pts["chin"] = pt(0.0, CHIN_Y + drop - 0.04, 0.0)
        return pts


def _col(c: np.ndarray | tuple) -> tuple[int, int, int]:
    v = np.clip(np.asarray(c, float), 0, 255)
    return int(round(v[0])), int(round(v[1])), int(round(v[2]))
