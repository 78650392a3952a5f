"""dlib's pretrained face models, the evaluation's face extractors: real networks that run offline.

The model files come with the ``face-recognition-models`` package (dlib's published models; the runtime is the
``dlib-bin`` wheel):

- ``dlib_hog``: dlib's frontal face detector (HOG + linear SVM), and its CNN detector (MMOD) as the fallback for
  videos where HOG finds no face at all (blur);
- ``dlib_68_ibug``: the 68-point shape predictor (regression-tree ensemble) trained on iBUG 300-W — the landmark
  layout the whole project uses (mouth 48-67). Licence note: the 300-W training data excludes commercial use, so
  this predictor's numbers are for research;
- ``dlib_resnet_v1``: the ResNet-29 face-recognition network (``dlib_face_recognition_resnet_model_v1``): a 128-d
  identity descriptor of the face aligned by its landmarks (same person when the Euclidean distance < 0.6).

Frames smaller than :data:`DETECT_SIDE` are upscaled (bicubic) before detection, landmarking and description, so the
64-px crops of the small configurations reach the detector's ~80 px minimum face size; landmarks are returned in
the input frame's pixels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

DETECT_SIDE = 256  # px: frames are upscaled to at least this side before dlib sees them
DESCRIPTOR_DIMS = 128
DESCRIPTOR_PADDING = 0.25  # dlib's default chip padding around the aligned face
PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
MMOD = "mmod_human_face_detector.dat"
LANDMARKS_NAME = "dlib_68_ibug"
DETECTOR_NAME = "dlib_hog"
DESCRIPTOR_NAME = "dlib_resnet_v1"


class FaceModelsMissing(RuntimeError):
    """dlib or its model files are not installed."""


def model_dir() -> Path:
    """The ``models/`` folder of the face-recognition-models package (found without importing the package, whose
    ``__init__`` needs setuptools' removed ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing("the face-recognition-models package is not installed (pip install "
                                "face-recognition-models dlib-bin; see requirements.txt)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    for name in (PREDICTOR_68, RESNET):
        if not (folder / name).is_file():
            raise FaceModelsMissing(f"{folder / name}: missing from the face-recognition-models package")
    return folder


@dataclass(frozen=True)
class FaceTrack68:
    """dlib landmarks of a frame sequence.

    Attributes:
        landmarks: (T, 68, 2) float64 in input-frame pixels; NaN where no face was found.
        found: (T,) bool, a face was detected in the frame.
    """

    landmarks: np.ndarray
    found: np.ndarray

    @property
    def found_fraction(self) -> float:
        return float(self.found.mean()) if len(self.found) else 0.0


class DlibFace:
    """The three dlib models (detector, 68-point predictor, ResNet descriptor) behind one object."""

    def __init__(self, detect_side: int = DETECT_SIDE) -> None:
        try:
            import dlib
        except ImportError as err:
            raise FaceModelsMissing("dlib is not installed (pip install dlib-bin; see requirements.txt)") from err
        folder = model_dir()
        self._dlib = dlib
        self.detect_side = detect_side
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(folder / PREDICTOR_68))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / RESNET))
        self._cnn = None  # the MMOD detector, loaded when first needed

    @staticmethod
    @lru_cache(maxsize=1)
    def shared() -> "DlibFace":
        """One instance per process (loading the models takes ~1 s)."""
        return DlibFace()

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 -> the image dlib sees (upscaled so its short side >= detect_side) and the scale."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        scale = max(1.0, self.detect_side / min(frame.shape[:2]))
        if scale > 1.0:
            frame = cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)),
                               interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(frame), scale

    def _rect(self, image: np.ndarray):  # -> dlib.rectangle | None
        """The largest face box found by the HOG detector (retried with one pyramid upsampling)."""
        rects = self.detector(image, 0)
        if len(rects) == 0:
            rects = self.detector(image, 1)
        if len(rects) == 0:
            return None
        return max(rects, key=lambda r: r.width() * r.height())

    def _shape(self, image: np.ndarray):  # -> dlib.full_object_detection | None
        rect = self._rect(image)
        return None if rect is None else self.predictor(image, rect)

    def landmarks(self, frames: np.ndarray) -> FaceTrack68:
        """68 iBUG landmarks of the largest face in every frame of (T, H, W, 3) uint8."""
        out = np.full((len(frames), 68, 2), np.nan)
        found = np.zeros(len(frames), bool)
        for t, frame in enumerate(frames):
            image, scale = self._prepare(frame)
            shape = self._shape(image)
            if shape is not None:
                out[t] = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) / scale
                found[t] = True
        return FaceTrack68(out, found)

    def _mmod(self, image: np.ndarray):  # -> dlib.rectangle | None
        """The largest face of dlib's CNN (MMOD) detector with one upsampling: slower (~1 s a frame on a CPU) but
        it finds the soft, blurred faces HOG misses."""
        if self._cnn is None:
            self._cnn = self._dlib.cnn_face_detection_model_v1(str(model_dir() / MMOD))
        found = self._cnn(image, 1)
        return max((d.rect for d in found), key=lambda r: r.width() * r.height()) if len(found) else None

    def face_boxes(self, frames: np.ndarray) -> list:
        """A face box (in the upscaled image dlib sees) for every frame, or all None when there is no face.

        HOG per frame; a frame where it misses holds the nearest earlier detection (the first detection for frames
        before it), as face-track pipelines do. When HOG misses in every frame, the MMOD detector is tried on the
        first, middle and last frame, and its box is held for the whole video."""
        rects = [self._rect(self._prepare(f)[0]) for f in frames]
        if not any(r is not None for r in rects) and len(frames):
            for t in sorted({0, len(frames) // 2, len(frames) - 1}):
                rects[t] = self._mmod(self._prepare(frames[t])[0])
                if rects[t] is not None:
                    break
        first = next((r for r in rects if r is not None), None)
        held, last = [], first
        for r in rects:
            last = r if r is not None else last
            held.append(last)
        return held

    def analyze(self, frames: np.ndarray, describe_every: int = 1) -> tuple[FaceTrack68, np.ndarray]:
        """Landmarks of every frame and ResNet descriptors of every `describe_every`-th frame (0 = none), on the
        boxes of :meth:`face_boxes`: (track, (T, 128) descriptors, NaN rows where not described or no face)."""
        out = np.full((len(frames), 68, 2), np.nan)
        found = np.zeros(len(frames), bool)
        desc = np.full((len(frames), DESCRIPTOR_DIMS), np.nan)
        for t, (frame, rect) in enumerate(zip(frames, self.face_boxes(frames))):
            if rect is None:
                continue
            image, scale = self._prepare(frame)
            shape = self.predictor(image, rect)
            out[t] = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) / scale
            found[t] = True
            if describe_every and t % describe_every == 0:
                desc[t] = np.asarray(self.recognizer.compute_face_descriptor(image, shape, 0, DESCRIPTOR_PADDING))
        return FaceTrack68(out, found), desc

    def descriptors(self, frames: np.ndarray, skip_missing: bool = False) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, 128) ResNet identity descriptors of the largest face of each frame.

        Args:
            skip_missing: leave out frames without a detected face (else they are NaN rows).
        """
        rows = []
        for frame in frames:
            image, _ = self._prepare(frame)
            shape = self._shape(image)
            if shape is None:
                if not skip_missing:
                    rows.append(np.full(DESCRIPTOR_DIMS, np.nan))
                continue
            d = self.recognizer.compute_face_descriptor(image, shape, 0, DESCRIPTOR_PADDING)
            rows.append(np.asarray(d, dtype=np.float64))
        return np.stack(rows) if rows else np.zeros((0, DESCRIPTOR_DIMS))
