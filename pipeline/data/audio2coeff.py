"""Training and evaluation data of Audio2Coeff (method.md §5.1–5.4).

`load_motion_clips` reads, once per clip, everything a window needs: the per-frame mel windows (T, 1, 80, 16)
(`pipeline.audio.mel_windows`, method.md §1.1), the 73-d coefficients, the clip's identity shape (mean frontalised
landmarks, `pipeline.faces.coeffs.identity_shape`), the eye openness of the frontalised shapes (ExpNet's blink
input), the true landmarks *as the coefficients reproduce them* through the landmark 3DMM (normalised crop units;
generated and true landmarks then go through the same reconstruction), their per-point mean and inter-ocular
distance (the reference of the syncers' motion features), and the normalised log filterbank of the syncers
(`pipeline.data.syncers.audio_features`, 4 rows per frame). A speaker's style class is its index among the
training speakers (PoseVAE's ``pose_style``).

`Audio2CoeffWindows` is a keyed dataset (``(step, slot)`` -> sample, randomness from ``sample_rng(seed, step,
slot)``): a window of ``frames`` consecutive frames (frame 0 is the pose reference, frames 1.. are generated) and an
independent reference frame of the same clip for the expression (a single portrait at inference can show any
expression).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.audio import MFCC_ROWS_PER_VIDEO_FRAME, mel_windows
from pipeline.data.corpus import Clip, CorpusError, FeatureStore
from pipeline.data.sampling import sample_rng
from pipeline.data.syncers import EYE_OUTER, audio_features
from pipeline.faces.coeffs import EXPRESSION, ExpressionBasis, identity_shape
from pipeline.geometry import rotation_matrix

MOTION = slice(0, 70)  # expression + rotation + translation (what Audio2Coeff generates)
POSE = slice(64, 70)
SCALE = 70
EYE_LIDS = ((37, 41), (38, 40), (43, 47), (44, 46))  # upper / lower eyelid pairs of the 68-point layout


def eye_openness(aligned: np.ndarray) -> np.ndarray:
    """(T, 68, 3) frontalised shapes -> (T,) mean eyelid gap (template units)."""
    a = np.asarray(aligned, np.float64)
    return np.mean([np.linalg.norm(a[:, i] - a[:, j], axis=-1) for i, j in EYE_LIDS], axis=0)


def coefficient_landmarks(coeffs: np.ndarray, identity: np.ndarray, basis: ExpressionBasis) -> np.ndarray:
    """NumPy landmark 3DMM (twin of `pipeline.losses.audio2coeff.CoeffLandmarks`): (T, 71+) coefficients ->
    (T, 68, 3) landmarks in normalised crop units (x pixels / crop side)."""
    c = np.asarray(coeffs, np.float64)
    al = identity + basis.reconstruct(c[:, EXPRESSION]).reshape(len(c), 68, 3)  # (T, 68, 3)
    R = rotation_matrix(c[:, 64], c[:, 65], c[:, 66])  # (T, 3, 3)
    return c[:, SCALE, None, None] * np.einsum("tij,tkj->tki", R, al) + (c[:, None, 67:70] + [0.5, 0.5, 0.0])


@dataclass(frozen=True)
class MotionClip:
    """Everything Audio2Coeff needs of one clip (see the module docstring); T frames."""

    clip_id: str
    speaker: str
    style: int  # training-speaker index (0 for held-out speakers)
    mel: np.ndarray  # (T, 1, 80, 16) float32
    coeffs: np.ndarray  # (T, 73) float32
    identity: np.ndarray  # (68, 3) float32
    openness: np.ndarray  # (T,) float32
    landmarks: np.ndarray  # (T, 68, 3) float32, normalised crop units, reconstructed from the coefficients
    point_mean: np.ndarray  # (68, 2) float32
    iod: float
    fbank: np.ndarray  # (N, 26) float32 normalised log filterbank, 4 rows per frame
    wav: np.ndarray  # (S,) float32, 16 kHz

    @property
    def frames(self) -> int:
        return len(self.coeffs)


def speaker_styles(clips: Sequence[Clip]) -> dict[str, int]:
    """Style class of each training speaker: its index in sorted order."""
    return {s: i for i, s in enumerate(sorted({c.speaker for c in clips}))}


def load_motion_clips(clips: Sequence[Clip], basis: ExpressionBasis, styles: Mapping[str, int],
                      store: FeatureStore | None = None) -> list[MotionClip]:
    """`MotionClip` of every clip; errors name the clip's feature file."""
    store = store or FeatureStore()
    out = []
    for clip in clips:
        try:
            coeffs = store.get_array(clip, "coeffs").astype(np.float32)
            aligned = store.get_array(clip, "aligned")
            if not np.isfinite(coeffs).all() or not np.isfinite(aligned).all():
                raise ValueError("frames without landmarks (NaN coefficients)")
            identity = identity_shape(aligned)
            mel = mel_windows(store.get_array(clip, "mel"), range(len(coeffs)))[:, None]  # (T, 1, 80, 16)
            lm = coefficient_landmarks(coeffs, identity, basis)  # (T, 68, 3)
            iod = float(np.linalg.norm(lm[:, EYE_OUTER[0], :2] - lm[:, EYE_OUTER[1], :2], axis=-1).mean())
            fbank = audio_features(store.get_array(clip, "fbank"))
            wav = store.get_array(clip, "wav").astype(np.float32)
        except ValueError as err:
            raise CorpusError(f"{clip.features} ({clip.clip_id}): {err}") from err
        out.append(MotionClip(clip.clip_id, clip.speaker, styles.get(clip.speaker, 0), mel.astype(np.float32), coeffs,
                              identity.astype(np.float32), eye_openness(aligned).astype(np.float32),
                              lm.astype(np.float32), lm[..., :2].mean(0).astype(np.float32), iod, fbank, wav))
    return out


def pose_statistics(clips: Sequence[MotionClip], floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the 6 pose coefficients over every frame of `clips` (std floored at `floor`: a coefficient
    that never varies, such as tz of a 2D backend, must not be scaled up)."""
    pose = np.concatenate([c.coeffs[:, POSE] for c in clips]).astype(np.float64)
    return pose.mean(0).astype(np.float32), np.maximum(pose.std(0), floor).astype(np.float32)


def window_sample(clip: MotionClip, start: int, frames: int, ref: int) -> dict[str, np.ndarray]:
    """The sample of frames [start, start + frames) of `clip` with expression reference frame `ref`."""
    sl = slice(start, start + frames)
    rows = np.clip(MFCC_ROWS_PER_VIDEO_FRAME * start + np.arange(MFCC_ROWS_PER_VIDEO_FRAME * frames), 0,
                   len(clip.fbank) - 1)
    return {
        "mel": clip.mel[sl],  # (W, 1, 80, 16)
        "coeffs": clip.coeffs[sl, MOTION],  # (W, 70)
        "scale": clip.coeffs[sl, SCALE],  # (W,)
        "ref_expression": clip.coeffs[ref, EXPRESSION],  # (64,)
        "ratio": clip.openness[sl] / max(float(clip.openness[ref]), 1e-6) - 1.0,  # (W,) relative eye openness
        "identity": clip.identity,  # (68, 3)
        "point_mean": clip.point_mean,  # (68, 2)
        "iod": np.float32(clip.iod),
        "fbank": clip.fbank[rows],  # (4W, 26)
        "style": np.int64(clip.style),
    }


class Audio2CoeffWindows:
    """Keyed dataset of training windows: ``(step, slot)`` -> `window_sample` dict (float32 arrays, int64 style).

    Args:
        clips: training clips (each at least `frames` long; shorter ones are left out, none left raises).
        frames: frames per window (seq_len + 1: the pose reference and the generated frames).
        seed: base of ``sample_rng(seed, step, slot)``.
    """

    def __init__(self, clips: Sequence[MotionClip], frames: int, seed: int) -> None:
        usable = [c for c in clips if c.frames >= frames]
        if not usable:
            raise CorpusError(f"no clip has >= {frames} frames for an Audio2Coeff window")
        self.clips, self.frames, self.seed = usable, frames, seed
        self.positions = np.array([c.frames - frames + 1 for c in usable])
        self._p = self.positions / self.positions.sum()

    def __len__(self) -> int:
        return int(self.positions.sum())

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        rng = sample_rng(self.seed, *key)
        c = int(rng.choice(len(self.clips), p=self._p))
        clip = self.clips[c]
        start = int(rng.integers(self.positions[c]))
        ref = int(rng.integers(clip.frames))
        return window_sample(clip, start, self.frames, ref)
