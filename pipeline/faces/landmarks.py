"""Per-frame face detection + 68-point landmarks behind one backend interface (method.md §2, "Landmark backends").

Backends (`make_backend`):
- ``mediapipe`` (default, offline): BlazeFace detection (`mp.solutions.face_detection`) for boxes, scores and the
  face count; the 478-point face mesh (`mp.solutions.face_mesh`, refine_landmarks=True, video mode, up to 2
  faces, a fresh FaceMesh per `process` call so tracking state never leaks across clips) for landmarks, mapped to
  68 points by `pipeline.faces.mediapipe68`. The mesh whose bounding box best overlaps the primary detection is
  kept. z is mediapipe's depth (relative to the head centre, positive away from the camera) in pixels of the image
  width, the same scale as x.
- ``face_alignment`` (the paper's choice: SFD detector + 2DFAN4, or 3DFAN4 + depth net), loaded only from a given
  weights directory. 2D landmarks get **z = 0** (pose fitting then uses the weak-perspective fit of
  `pipeline.faces.coeffs`).

Coordinates follow `pipeline.geometry` (x right, y down, z away from the camera) in pixels of the input frames,
corner convention (pixel (i, j) covers [j, j+1) × [i, i+1)).

Primary face per frame: the largest detection (the speaker in talking-head footage is the closest face) among
those with score ≥ min_confidence.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import numpy as np

from pipeline.faces.mediapipe68 import NUM_MESH_POINTS, NUM_POINTS_68, mediapipe_to_68

# iBUG 68 index groups (0-based). "right" = the subject's right = image left.
JAW = tuple(range(0, 17))
RIGHT_BROW, LEFT_BROW = tuple(range(17, 22)), tuple(range(22, 27))
NOSE_BRIDGE, NOSE_BASE = tuple(range(27, 31)), tuple(range(31, 36))
RIGHT_EYE, LEFT_EYE = tuple(range(36, 42)), tuple(range(42, 48))
OUTER_LIP, INNER_LIP = tuple(range(48, 60)), tuple(range(60, 68))
MOUTH = tuple(range(48, 68))
RIGID_EYES_BROWS_NOSE = tuple(range(17, 48))  # method.md §1 "rigid" points

# Index permutation of a horizontally mirrored face: mirrored[k] = original[MIRROR_68[k]] (x negated).
MIRROR_68: tuple[int, ...] = (
    tuple(range(16, -1, -1))  # jaw
    + tuple(range(26, 16, -1))  # brows
    + (27, 28, 29, 30)  # bridge
    + (35, 34, 33, 32, 31)  # nose base
    + (45, 44, 43, 42, 47, 46)  # right eye <- left eye
    + (39, 38, 37, 36, 41, 40)  # left eye <- right eye
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)  # outer lip
    + (64, 63, 62, 61, 60, 67, 66, 65)  # inner lip
)

FACE_ALIGNMENT_FILES_2D = ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")
FACE_ALIGNMENT_FILES_3D = ("s3fd-619a316812.pth", "3DFAN4-7835d9f11d.pth.tar", "depth-2a464da4ea.pth.tar")


@dataclass
class FaceTrack:
    """Per-frame face geometry of one clip, in pixel coordinates of the input frames.

    Attributes:
        landmarks: (T, 68, 3) float32 iBUG points (x, y, z); NaN rows where no face / no landmarks.
        boxes: (T, 4) float32 primary detection x0, y0, x1, y1; NaN where none.
        scores: (T,) float32 detection confidence of the primary face; 0 where none.
        num_faces: (T,) int32 detections with score ≥ min_confidence.
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    num_faces: np.ndarray

    def __post_init__(self) -> None:
        T = len(self.landmarks)
        if self.landmarks.shape != (T, NUM_POINTS_68, 3):
            raise ValueError(f"FaceTrack.landmarks must be (T, 68, 3), got {self.landmarks.shape}")
        if self.boxes.shape != (T, 4) or self.scores.shape != (T,) or self.num_faces.shape != (T,):
            raise ValueError(
                f"FaceTrack fields disagree on T={T}: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"num_faces {self.num_faces.shape}"
            )

    @classmethod
    def empty(cls, num_frames: int) -> FaceTrack:
        """A track with no face in any of `num_frames` frames."""
        return cls(
            landmarks=np.full((num_frames, NUM_POINTS_68, 3), np.nan, np.float32),
            boxes=np.full((num_frames, 4), np.nan, np.float32),
            scores=np.zeros(num_frames, np.float32),
            num_faces=np.zeros(num_frames, np.int32),
        )

    @classmethod
    def concatenate(cls, tracks: Sequence[FaceTrack]) -> FaceTrack:
        """Join the tracks of consecutive chunks of one clip."""
        if not tracks:
            return cls.empty(0)
        return cls(
            landmarks=np.concatenate([t.landmarks for t in tracks]),
            boxes=np.concatenate([t.boxes for t in tracks]),
            scores=np.concatenate([t.scores for t in tracks]),
            num_faces=np.concatenate([t.num_faces for t in tracks]),
        )

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)

    @property
    def has_landmarks(self) -> np.ndarray:
        """(T,) bool: frames with a full set of landmarks."""
        return np.isfinite(self.landmarks).all(axis=(1, 2))


class LandmarkBackend(Protocol):
    """A face detector + 68-point landmark extractor for whole clips."""

    name: str

    def process(self, frames: np.ndarray) -> FaceTrack:
        """Frames (T, H, W, 3) uint8 RGB of one clip → its `FaceTrack`."""
        ...

    def process_stream(self, chunks: Iterable[np.ndarray]) -> FaceTrack:
        """The same for one clip given as consecutive (t, H, W, 3) chunks (long videos, bounded memory)."""
        ...

    def close(self) -> None:
        """Release models and native resources."""
        ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got shape {frames.shape} dtype {frames.dtype}")
    return frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _primary(boxes: np.ndarray, scores: np.ndarray) -> int:
    """Index of the largest box (ties: higher score)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.lexsort((-scores, -area))[0])


# Tracking mode (`MediapipeBackend`): a mesh box overlapping the previous frame's by less than this means the
# tracker lost the face and re-acquired one (possibly another): detect again on that frame.
TRACK_JUMP_IOU = 0.5


def _mesh_boxes(pts: np.ndarray) -> np.ndarray:
    """(M, 478, 3) meshes → (M, 4) x0, y0, x1, y1 bounding boxes of their x, y."""
    return np.concatenate([pts[:, :, :2].min(1), pts[:, :, :2].max(1)], axis=1)  # (M, 4)


@dataclass(frozen=True)
class _Detection:
    """A detection in tracking mode: frame index, its box, the matched mesh's box, score, face count."""

    frame: int
    box: np.ndarray  # (4,)
    mesh_box: np.ndarray  # (4,)
    score: float
    num_faces: int

    def follow(self, mesh_box: np.ndarray) -> np.ndarray:
        """The detection box moved and scaled with the mesh: same edges relative to the mesh's box."""
        w0, h0 = self.mesh_box[2] - self.mesh_box[0], self.mesh_box[3] - self.mesh_box[1]
        w1, h1 = mesh_box[2] - mesh_box[0], mesh_box[3] - mesh_box[1]
        sx, sy = w1 / max(w0, 1e-6), h1 / max(h0, 1e-6)
        rel = self.box - self.mesh_box[[0, 1, 0, 1]]  # (4,) edges relative to the mesh box's corner
        return (mesh_box[[0, 1, 0, 1]] + rel * np.array([sx, sy, sx, sy])).astype(np.float32)


class MediapipeBackend:
    """mediapipe 0.10.21 BlazeFace detection + 478-point face mesh mapped to iBUG 68 (see module docstring).

    Args:
        min_confidence: detection threshold (also the face mesh's min_detection_confidence).
        detector: ``"short"`` (model_selection=0, faces within ~2 m: close-ups such as VoxCeleb), ``"full"``
            (model_selection=1, up to ~5 m), or ``"auto"`` (default): short-range first, full-range for frames where
            the short-range model finds nothing. Measured here: on 256² close-ups short-range scores 0.92–0.97,
            full-range 0.80–0.91 and ~4× slower; on 1280×720 wide shots only full-range finds the face (box ≥ ~75 px;
            faces of ~50 px are missed by both).
            The face mesh's own detector is short-range too, so when no full-frame mesh matches the primary
            detection, the mesh is re-run (static mode) on a square region of 2.5× the box around it.
        min_tracking_confidence: face mesh re-detection threshold in video mode.
        mode: ``"per_frame"`` (default): BlazeFace on every frame and a 2-face mesh (in video mode mediapipe runs
            its own detector on every frame while it tracks fewer than `max_num_faces` faces, so both detectors
            run per frame). ``"tracking"``: a 1-face mesh that follows the face from frame to frame (mediapipe
            re-runs its own detector only when the mesh's face-presence score drops below
            `min_tracking_confidence`), and BlazeFace only on the first frame, every `detect_interval` frames,
            and at once whenever the track is lost or jumps (the mesh's box overlaps the previous frame's by
            IoU < `TRACK_JUMP_IOU`: the tracker re-acquired a face). Between detections the box is the last
            detection's, carried along with the mesh (same offsets relative to the mesh's bounding box), and
            the score and face count are the last detection's.
        detect_interval: frames between BlazeFace detections in ``"tracking"`` mode (25 = once a second at 25 fps).
    """

    name = "mediapipe"

    def __init__(
        self,
        *,
        min_confidence: float = 0.5,
        detector: Literal["short", "full", "auto"] = "auto",
        min_tracking_confidence: float = 0.5,
        mode: Literal["per_frame", "tracking"] = "per_frame",
        detect_interval: int = 25,
    ) -> None:
        import mediapipe as mp  # heavy import, only when this backend is used

        if mode not in ("per_frame", "tracking"):
            raise ValueError(f"mode must be 'per_frame' or 'tracking', got {mode!r}")
        if detect_interval < 1:
            raise ValueError(f"detect_interval must be >= 1, got {detect_interval}")
        self.mode = mode
        self.detect_interval = detect_interval

        self._mp = mp
        self.min_confidence = min_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self.detector = detector
        self._detectors: dict[int, object] = {}
        if detector in ("short", "auto"):
            self._detectors[0] = mp.solutions.face_detection.FaceDetection(
                min_detection_confidence=min_confidence, model_selection=0
            )
        if detector in ("full", "auto"):
            self._detectors[1] = mp.solutions.face_detection.FaceDetection(
                min_detection_confidence=min_confidence, model_selection=1
            )
        if not self._detectors:
            raise ValueError(f"detector must be 'short', 'full' or 'auto', got {detector!r}")

    def _detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame → boxes (N, 4) in pixels and scores (N,), from the first model that finds a face."""
        H, W = frame.shape[:2]
        for model in sorted(self._detectors):
            result = self._detectors[model].process(frame)  # type: ignore[attr-defined]
            dets = result.detections or []
            if dets:
                boxes, scores = [], []
                for d in dets:
                    rb = d.location_data.relative_bounding_box
                    boxes.append([rb.xmin * W, rb.ymin * H, (rb.xmin + rb.width) * W, (rb.ymin + rb.height) * H])
                    scores.append(d.score[0])
                return np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
        return np.zeros((0, 4)), np.zeros(0)

    def process(self, frames: np.ndarray) -> FaceTrack:
        """Detect and landmark every frame of one clip (a fresh FaceMesh, so no state from earlier clips)."""
        return self.process_stream([frames])

    def process_stream(self, chunks: Iterable[np.ndarray]) -> FaceTrack:
        """`process` for a clip given as consecutive chunks; the face mesh keeps tracking across chunks."""
        tracking = self.mode == "tracking"
        tracks: list[FaceTrack] = []
        mesh_model = self._mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=1 if tracking else 2,
            refine_landmarks=True,
            min_detection_confidence=self.min_confidence,
            min_tracking_confidence=self.min_tracking_confidence,
        )
        roi_model = self._mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        last: _Detection | None = None  # tracking mode: the last detection that a mesh matched
        prev_mesh_box: np.ndarray | None = None  # tracking mode: the previous frame's mesh box
        frame_index = 0  # over the whole clip (chunks included)
        try:
            for frames in chunks:
                frames = _check_frames(frames)
                track = FaceTrack.empty(len(frames))
                tracks.append(track)
                for t in range(len(frames)):
                    frame = np.ascontiguousarray(frames[t])
                    pts = None
                    if tracking and last is not None and frame_index - last.frame < self.detect_interval:
                        pts = self._meshes(mesh_model, frame)  # (M ≤ 1, 478, 3)
                        mesh_box = _mesh_boxes(pts)[0] if len(pts) else None
                        tracked = mesh_box is not None and prev_mesh_box is not None
                        if tracked and _iou(mesh_box, prev_mesh_box) >= TRACK_JUMP_IOU:
                            # Tracked: no detection this frame; the last detection's box follows the mesh.
                            track.boxes[t] = last.follow(mesh_box)
                            track.scores[t] = last.score
                            track.num_faces[t] = last.num_faces
                            track.landmarks[t] = mediapipe_to_68(pts[0])
                            prev_mesh_box = mesh_box
                            frame_index += 1
                            continue
                        # Lost or jumped: detect on this very frame (the mesh result is reused below).
                    boxes, scores = self._detect(frame)
                    keep = scores >= self.min_confidence
                    boxes, scores = boxes[keep], scores[keep]
                    track.num_faces[t] = len(scores)
                    primary_box = None
                    if len(scores):
                        i = _primary(boxes, scores)
                        primary_box = boxes[i]
                        track.boxes[t] = primary_box
                        track.scores[t] = scores[i]
                    if pts is None:
                        pts = self._meshes(mesh_model, frame)  # (M, 478, 3)
                    j = self._match(pts, primary_box)
                    from_roi = False
                    if j is None and primary_box is not None:
                        # Small faces (wide shots) are below the mesh's own short-range detector: retry on a
                        # square region around the detection, upsampled by the mesh model itself.
                        pts = self._roi_mesh(roi_model, frame, primary_box)
                        j = self._match(pts, primary_box)
                        from_roi = True
                    last = prev_mesh_box = None
                    if j is not None:
                        track.landmarks[t] = mediapipe_to_68(pts[j])
                        if tracking and primary_box is not None and not from_roi:
                            # The tracker follows this face; the next frames reuse this detection.
                            prev_mesh_box = _mesh_boxes(pts[j : j + 1])[0]
                            last = _Detection(frame_index, primary_box, prev_mesh_box, float(scores[i]),
                                              len(scores))
                    frame_index += 1
        finally:
            mesh_model.close()
            roi_model.close()
        return FaceTrack.concatenate(tracks)

    @staticmethod
    def _meshes(model: object, image: np.ndarray) -> np.ndarray:
        """Face meshes of one image as (M, 478, 3) pixels; mediapipe's z uses the image-width scale, like x."""
        H, W = image.shape[:2]
        result = model.process(image)  # type: ignore[attr-defined]
        meshes = result.multi_face_landmarks or []
        return np.array(
            [[[p.x * W, p.y * H, p.z * W] for p in m.landmark] for m in meshes], np.float64
        ).reshape(len(meshes), NUM_MESH_POINTS, 3)  # (M, 478, 3)

    @staticmethod
    def _match(pts: np.ndarray, primary_box: np.ndarray | None) -> int | None:
        """Index of the mesh that belongs to the primary detection (None if none does)."""
        if not len(pts):
            return None
        mesh_boxes = _mesh_boxes(pts)  # (M, 4)
        if primary_box is None:
            # No detection this frame (e.g. the tracker holds a face the detector missed): keep the largest mesh;
            # box and score stay empty so downstream can still see that the detector missed it.
            return _primary(mesh_boxes, np.zeros(len(pts)))
        overlaps = [_iou(primary_box, b) for b in mesh_boxes]
        j = int(np.argmax(overlaps))
        return j if overlaps[j] >= 0.1 else None  # below: every mesh belongs to another face

    def _roi_mesh(self, model: object, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Mesh on a square region (2.5× the box, edge-padded) around a detection, in frame pixels (M, 478, 3)."""
        H, W = frame.shape[:2]
        side = int(np.ceil(2.5 * max(box[2] - box[0], box[3] - box[1])))
        x0 = int(np.floor((box[0] + box[2]) / 2 - side / 2))
        y0 = int(np.floor((box[1] + box[3]) / 2 - side / 2))
        ys = np.clip(np.arange(y0, y0 + side), 0, H - 1)
        xs = np.clip(np.arange(x0, x0 + side), 0, W - 1)
        roi = np.ascontiguousarray(frame[ys[:, None], xs[None, :]])  # (side, side, 3), edge-replicated
        pts = self._meshes(model, roi)  # (M, 478, 3) in roi pixels; z scaled by the roi width
        pts[..., 0] += x0
        pts[..., 1] += y0
        return pts

    def close(self) -> None:
        for det in self._detectors.values():
            det.close()  # type: ignore[attr-defined]
        self._detectors.clear()


class FaceAlignmentBackend:
    """face_alignment 1.5.0 (Bulat & Tzimiropoulos): SFD detector + 2DFAN4, or 3DFAN4 + depth network.

    Weights are read only from `weights_dir` (never downloaded): face_alignment 1.5.0 loads the detector with
    ``torch.load(path, weights_only=True)`` (an s3fd state dict, passed as ``path_to_detector``), FAN with
    ``torch.load(..., weights_only=True)`` + ``FAN(4).load_state_dict`` and the depth net from a checkpoint dict
    ``{'state_dict': ...}`` whose keys may carry a ``module.`` prefix. This class reproduces exactly that loading
    from `weights_dir` by overriding `FaceAlignment._load_native` / `_load_native_depth` (tied to the pinned 1.5.0).

    Args:
        weights_dir: folder holding the checkpoint files (the caller resolves ``$TORCH_HOME/hub/checkpoints``).
        min_confidence: SFD score threshold.
        three_d: 3DFAN4 + depth (z in pixels, as face_alignment returns it) instead of 2DFAN4 (z = 0).
        device: ``"cpu"`` or ``"cuda[:i]"``.
    """

    name = "face_alignment"

    def __init__(
        self, weights_dir: str, *, min_confidence: float = 0.5, three_d: bool = False, device: str = "cpu"
    ) -> None:
        files = FACE_ALIGNMENT_FILES_3D if three_d else FACE_ALIGNMENT_FILES_2D
        check_face_alignment_weights(weights_dir, files)
        import face_alignment
        import torch
        from face_alignment.api import FaceAlignment
        from face_alignment.models import FAN, ResNetDepth

        fan_file = os.path.join(weights_dir, files[1])
        depth_file = os.path.join(weights_dir, files[2]) if three_d else None

        class _LocalFaceAlignment(FaceAlignment):
            def _load_native(self, network_name: str, network_size: int, device: str, dtype: torch.dtype) -> FAN:
                net = FAN(network_size)
                net.load_state_dict(torch.load(fan_file, map_location=device, weights_only=True))
                return net.to(device, dtype=dtype).eval()

            def _load_native_depth(self, device: str, dtype: torch.dtype) -> ResNetDepth:
                assert depth_file is not None
                try:
                    ckpt = torch.load(depth_file, map_location=device, weights_only=True)
                except pickle.UnpicklingError:
                    # The published depth checkpoint may hold non-tensor objects; face_alignment itself loads it
                    # with weights_only=False. The file comes from the user's own weights folder.
                    ckpt = torch.load(depth_file, map_location=device, weights_only=False)
                state = {k.replace("module.", ""): v for k, v in ckpt["state_dict"].items()}
                net = ResNetDepth()
                net.load_state_dict(state)
                return net.to(device, dtype=dtype).eval()

        self.min_confidence = min_confidence
        self.three_d = three_d
        self._fa = _LocalFaceAlignment(
            face_alignment.LandmarksType.THREE_D if three_d else face_alignment.LandmarksType.TWO_D,
            device=device,
            flip_input=False,
            face_detector="sfd",
            face_detector_kwargs={
                "path_to_detector": os.path.join(weights_dir, files[0]),
                "filter_threshold": min_confidence,
            },
            compile=False,
        )

    def process_stream(self, chunks: Iterable[np.ndarray]) -> FaceTrack:
        """`process` for a clip given as consecutive chunks (frames are independent for SFD + FAN)."""
        return FaceTrack.concatenate([self.process(c) for c in chunks])

    def process(self, frames: np.ndarray) -> FaceTrack:
        """Detect (SFD) and landmark (FAN) every frame of one clip."""
        frames = _check_frames(frames)
        T = len(frames)
        track = FaceTrack.empty(T)
        for t in range(T):
            dets = np.asarray(self._fa.face_detector.detect_from_image(frames[t].copy()), np.float64)
            dets = dets.reshape(-1, 5) if dets.size else np.zeros((0, 5))  # (N, x0 y0 x1 y1 score)
            dets = dets[dets[:, 4] >= self.min_confidence]
            track.num_faces[t] = len(dets)
            if not len(dets):
                continue
            i = _primary(dets[:, :4], dets[:, 4])
            track.boxes[t] = dets[i, :4]
            track.scores[t] = dets[i, 4]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "No faces were detected." cannot happen with a given box
                pts = self._fa.get_landmarks_from_image(frames[t], detected_faces=[dets[i]])
            if pts:
                p = np.asarray(pts[0], np.float32)  # (68, 2|3)
                track.landmarks[t, :, : p.shape[1]] = p
                if p.shape[1] == 2:
                    track.landmarks[t, :, 2] = 0.0  # 2D landmarks: z = 0 by convention
        return track

    def close(self) -> None:
        self._fa = None  # type: ignore[assignment]


def check_face_alignment_weights(weights_dir: str | None, files: tuple[str, ...] = FACE_ALIGNMENT_FILES_2D) -> None:
    """Raise FileNotFoundError naming the expected face_alignment checkpoint files and folder if any is missing."""
    if weights_dir is None:
        raise FileNotFoundError(
            "face_alignment backend needs weights_dir: the folder with "
            + ", ".join(files)
            + " (face_alignment's default is $TORCH_HOME/hub/checkpoints, i.e. ~/.cache/torch/hub/checkpoints; "
            "the caller resolves it)"
        )
    missing = [f for f in files if not os.path.isfile(os.path.join(weights_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"face_alignment weights missing in {weights_dir}: {', '.join(missing)} "
            f"(expected files: {', '.join(files)}). This environment cannot download them; copy them from a machine "
            "where face_alignment has run (its torch hub cache), or use the 'mediapipe' backend."
        )


def make_backend(
    name: Literal["mediapipe", "face_alignment"],
    *,
    min_confidence: float = 0.5,
    weights_dir: str | None = None,
    landmarks_type: Literal["2D", "3D"] = "2D",
    device: str = "cpu",
    detector: Literal["short", "full", "auto"] = "auto",
    mode: Literal["per_frame", "tracking"] = "per_frame",
    detect_interval: int = 25,
) -> LandmarkBackend:
    """Build a landmark backend by name (config → object).

    Args:
        name: ``"mediapipe"`` (default, offline) or ``"face_alignment"`` (needs `weights_dir`).
        min_confidence: face detection threshold.
        weights_dir: face_alignment checkpoint folder (the caller resolves ``$TORCH_HOME/hub/checkpoints``).
        landmarks_type: face_alignment ``"2D"`` (2DFAN4, z = 0) or ``"3D"`` (3DFAN4 + depth); mediapipe is 3D.
        device: face_alignment device (``"cpu"``/``"cuda"``); mediapipe always runs on the CPU.
        detector: mediapipe detection model choice (see `MediapipeBackend`).
        mode: mediapipe ``"per_frame"`` detection or ``"tracking"`` between detections (see `MediapipeBackend`).
        detect_interval: frames between detections in mediapipe's ``"tracking"`` mode.
    Raises:
        FileNotFoundError: face_alignment weights are missing (the message names the files and the folder).
    """
    if name == "mediapipe":
        return MediapipeBackend(min_confidence=min_confidence, detector=detector, mode=mode,
                                detect_interval=detect_interval)
    if name == "face_alignment":
        if landmarks_type not in ("2D", "3D"):
            raise ValueError(f"landmarks_type must be '2D' or '3D', got {landmarks_type!r}")
        three_d = landmarks_type == "3D"
        check_face_alignment_weights(weights_dir, FACE_ALIGNMENT_FILES_3D if three_d else FACE_ALIGNMENT_FILES_2D)
        assert weights_dir is not None
        return FaceAlignmentBackend(weights_dir, min_confidence=min_confidence, three_d=three_d, device=device)
    raise ValueError(f"unknown landmark backend {name!r}; choose 'mediapipe' or 'face_alignment'")
