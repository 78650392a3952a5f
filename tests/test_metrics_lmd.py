"""LMD (pipeline/metrics/lmd.py): known distances, pose removal, and dlib's 68-point predictor on a real face."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import lmd as L
from pipeline.metrics.dlib_face import DlibFace
from tests.mediagen import astronaut


def _landmarks(rng: np.random.Generator, T: int = 4) -> np.ndarray:
    return rng.uniform(40, 200, size=(T, 68, 2))


def test_identical_landmarks_give_zero(rng: np.random.Generator) -> None:
    lm = _landmarks(rng)
    for norm in ("none", "rigid"):
        r = L.landmark_distance(lm, lm, 256, 256, norm)
        assert r.mouth == pytest.approx(0, abs=1e-9) and r.face == pytest.approx(0, abs=1e-9)
        assert r.frames_scored == 4 and r.extractor == "dlib_68_ibug"


def test_a_translation_is_its_length_scaled_to_256_px(rng: np.random.Generator) -> None:
    lm = _landmarks(rng) / 2  # a 128-px video
    r = L.landmark_distance(lm + np.array([3.0, 4.0]), lm, 128, 128, "none")
    assert r.mouth == pytest.approx(10.0) and r.face == pytest.approx(10.0)  # 5 px at 128 -> 10 px at 256


def test_rigid_normalisation_removes_pose_but_keeps_mouth_motion(rng: np.random.Generator) -> None:
    ref = _landmarks(rng)
    gen = ref.copy()
    gen[:, 62:68, 1] += 6.0  # lower inner lip moves 6 px: 6 of the 20 mouth points
    th = 0.3
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = 1.2 * gen @ R.T + np.array([5.0, -7.0])  # the whole head turned, scaled and shifted
    assert L.landmark_distance(moved, ref, 256, 256, "none").mouth > 10
    r = L.landmark_distance(moved, ref, 256, 256, "rigid")
    assert r.mouth == pytest.approx(6.0 * 6 / 20, rel=1e-6)


def test_frames_without_a_face_are_skipped_and_none_is_an_error(rng: np.random.Generator) -> None:
    ref, gen = _landmarks(rng), _landmarks(rng)
    gen[1] = np.nan
    assert L.landmark_distance(gen, ref, 256, 256).frames_scored == 3
    with pytest.raises(ValueError, match="no frame with a face"):
        L.landmark_distance(np.full_like(gen, np.nan), ref, 256, 256)


def test_dlib_68_point_predictor_on_a_real_face() -> None:
    """The iBUG layout on the astronaut: mouth below the eyes, LMD of the face with itself 0, and a shifted copy
    of the photo moves every landmark by the shift."""
    face = astronaut(256)
    track = DlibFace.shared().landmarks(np.stack([face, np.roll(face, 4, axis=1)]))
    assert track.found.all()
    lm = track.landmarks
    assert lm[0, 48:68, 1].mean() > lm[0, 36:48, 1].mean() + 20  # mouth below the eyes
    assert L.landmark_distance(lm[:1], lm[:1], 256, 256).mouth == 0.0
    shift = L.landmark_distance(lm[1:], lm[:1], 256, 256, "none")
    assert 3.0 < shift.face < 5.0  # ~4 px (the predictor's own jitter is < 1 px)
