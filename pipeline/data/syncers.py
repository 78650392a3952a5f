"""Training and evaluation data of the MS-Sync syncers (method.md §6.2–6.3; MS-Sync §3.1, §4.3).

Streams (computed once per clip, then pyramided with `pipeline.pyramid.build_pyramid`):

- **Audio**: the clip's 26-band log filterbank (100 Hz, 4 rows per video frame). `audio_features` floors it at
  ``max - FBANK_RANGE_NATS`` (digital silence gives log(eps) = -36, far below any speech) and standardises it with
  one scalar mean and standard deviation per clip (the log domain turns recording gain into an offset; one scalar
  keeps the spectral shape).
- **Motion**: `motion_features` = x, y of the chosen landmarks (crop pixels) minus each point's mean over the
  clip, in units of ``MOTION_UNIT`` x the clip's mean outer-eye-corner distance (points 36 and 45). That removes the
  resting pose and the face size (so crop size and framing do not matter) and leaves the motion: for all 68 points
  lips, jaw and head; for the 31 rigid points 17-47 (`pipeline.data.corpus.RIGID`) head motion and blinks.
  Channels are point-major: ``[x_0, y_0, x_1, y_1, ...]``.

A level-i window is 5 motion steps vs 20 audio rows starting at row 4t (`pipeline.pyramid.level_windows`).

`SyncerWindows` is a keyed dataset (``(step, slot)`` -> sample, all randomness from
``sample_rng(seed, step, slot)``): a positive window plus N negatives, either hard negatives from the same clip at
least ``min_offset`` steps away, or windows of other clips (MS-Sync uses those at the coarsest level, where clips
have too few positions). With N = 1 it yields the triplets of the rigid metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.audio import MFCC_ROWS_PER_VIDEO_FRAME
from pipeline.data.corpus import Clip, CorpusError, FeatureStore
from pipeline.pyramid import build_pyramid
from pipeline.data.sampling import sample_rng

log = logging.getLogger(__name__)

EYE_OUTER = (36, 45)  # 68-point outer eye corners: the face-size unit of the motion features
MOTION_UNIT = 0.1  # motion in tenths of the inter-ocular distance (head motion then has a std of ~0.5-1)
FBANK_RANGE_NATS = 16.0  # log-filterbank floor below the clip maximum (16 nats of power = 69 dB)


def motion_features(landmarks: np.ndarray, points: slice | Sequence[int] = slice(0, 68)) -> np.ndarray:
    """(T, 68, 2+) landmarks -> (T, 2P) float32 motion features (see the module docstring).

    Raises:
        ValueError: wrong shape or a degenerate (zero) inter-ocular distance.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1] != 68 or lm.shape[2] < 2:
        raise ValueError(f"expected (T, 68, 2+) landmarks, got shape {lm.shape}")
    iod = float(np.linalg.norm(lm[:, EYE_OUTER[0], :2] - lm[:, EYE_OUTER[1], :2], axis=1).mean())
    if not np.isfinite(iod) or iod <= 0:
        raise ValueError(f"inter-ocular distance {iod}: landmarks are degenerate")
    xy = lm[:, points, :2]  # (T, P, 2)
    x = (xy - xy.mean(axis=0, keepdims=True)) / (MOTION_UNIT * iod)
    return x.reshape(len(lm), -1).astype(np.float32)  # (T, 2P), point-major


def audio_features(fbank: np.ndarray) -> np.ndarray:
    """(N, 26) log filterbank -> (N, 26) float32 floored at max - FBANK_RANGE_NATS, standardised per clip."""
    fb = np.asarray(fbank, dtype=np.float64)
    if fb.ndim != 2 or fb.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, 26) log filterbank, got shape {fb.shape}")
    fb = np.maximum(fb, fb.max() - FBANK_RANGE_NATS)
    std = fb.std()
    return ((fb - fb.mean()) / (std if std > 1e-6 else 1.0)).astype(np.float32)


@dataclass(frozen=True)
class ClipStreams:
    """Audio and motion pyramids of one clip: ``audio[i]`` (Ta_i, 26), ``motion[i]`` (T_i, C), level i+1."""

    clip_id: str
    speaker: str
    audio: tuple[np.ndarray, ...]
    motion: tuple[np.ndarray, ...]


def load_streams(clips: Sequence[Clip], points: slice | Sequence[int], levels: int,
                 store: FeatureStore | None = None) -> list[ClipStreams]:
    """Feature pyramids of every clip (`levels` levels), errors naming the clip's feature file."""
    store = store or FeatureStore()
    out = []
    for clip in clips:
        try:
            audio = audio_features(store.get_array(clip, "fbank"))
            motion = motion_features(store.get_array(clip, "landmarks"), points)
        except ValueError as err:
            raise CorpusError(f"{clip.features} ({clip.clip_id}): {err}") from err
        out.append(ClipStreams(clip.clip_id, clip.speaker, tuple(build_pyramid(audio, levels)),
                               tuple(build_pyramid(motion, levels))))
    return out


NegativeSource = Literal["same_clip", "same_speaker", "any_clip"]


class SyncerWindows:
    """Keyed dataset of one pyramid level: ``(step, slot)`` -> (audio (26, 20), motion (1 + N, C, 5)) float32,
    the positive motion window first.

    Args:
        streams: clip pyramids (`load_streams`).
        level: 1-based pyramid level.
        window: motion steps per window.
        negatives: N.
        min_offset: ``same_clip`` negatives start at least this many steps (of this level) from the positive.
        negatives_from: ``same_clip`` (hard negatives: the same clip, shifted), ``same_speaker`` (any window of
            another clip of the same speaker, or of any other clip for a speaker with one clip: the voice and the
            motion style of a speaker then cannot tell positive from negative) or ``any_clip``.
        seed: base of ``sample_rng(seed, step, slot)``.

    Clips too short for the level (fewer than ``2 min_offset + 1`` window positions for same-clip negatives, or
    no full window) are left out and logged; none left raises `CorpusError`.
    """

    def __init__(self, streams: Sequence[ClipStreams], level: int, window: int, negatives: int, min_offset: int,
                 negatives_from: NegativeSource, seed: int) -> None:
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        same_clip = negatives_from == "same_clip"
        need = window + 2 * min_offset if same_clip else window
        usable = [s for s in streams if len(s.motion[level - 1]) >= need]
        if len(usable) < len(streams):
            log.info("level %d: %d of %d clips too short (< %d steps) left out", level, len(streams) - len(usable),
                     len(streams), need)
        if not usable or (not same_clip and len(usable) < 2):
            raise CorpusError(f"level {level}: {len(usable)} clip(s) have >= {need} steps "
                              f"({'none usable' if same_clip else 'negatives from other clips need 2'})")
        self.streams = usable
        self.level, self.window, self.negatives = level, window, negatives
        self.min_offset, self.negatives_from, self.seed = min_offset, negatives_from, seed
        self.positions = np.array([len(s.motion[level - 1]) - window + 1 for s in usable])  # window starts per clip
        self._clip_p = self.positions / self.positions.sum()  # every window equally likely
        self._others: list[np.ndarray] = []  # candidate clips of the negatives, per clip
        for c, s in enumerate(usable):
            others = np.array([o for o in range(len(usable)) if o != c], dtype=np.int64)
            if negatives_from == "same_speaker":
                same = others[[usable[o].speaker == s.speaker for o in others]]
                others = same if len(same) else others
            self._others.append(others)
        # Every motion window of the level, cut once: clip c's window t is row first[c] + t.
        self._first = np.concatenate([[0], np.cumsum(self.positions)[:-1]])
        self._windows = np.concatenate([
            s.motion[level - 1][np.arange(n)[:, None] + np.arange(window)].transpose(0, 2, 1)  # (n, W, C) -> (n, C, W)
            for s, n in zip(usable, self.positions)]).astype(np.float32)  # (sum n, C, W)

    def __len__(self) -> int:
        return int(self.positions.sum())

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        rng = sample_rng(self.seed, *key)
        clip = int(rng.choice(len(self.streams), p=self._clip_p))
        n_pos = int(self.positions[clip])
        t = int(rng.integers(n_pos))
        a = self.streams[clip].audio[self.level - 1]
        rows_per_window = MFCC_ROWS_PER_VIDEO_FRAME * self.window  # 20
        rows = np.clip(MFCC_ROWS_PER_VIDEO_FRAME * t + np.arange(rows_per_window), 0, len(a) - 1)
        audio = np.ascontiguousarray(a[rows].T, dtype=np.float32)  # (26, 20)
        if self.negatives_from == "same_clip":
            allowed = np.flatnonzero(np.abs(np.arange(n_pos) - t) >= self.min_offset)
            negs = self._first[clip] + rng.choice(allowed, size=self.negatives, replace=len(allowed) < self.negatives)
        else:
            others = self._others[clip]
            picks = rng.choice(others, size=self.negatives, p=self._clip_p[others] / self._clip_p[others].sum())
            negs = self._first[picks] + (rng.random(self.negatives) * self.positions[picks]).astype(np.int64)
        rows = np.concatenate([[self._first[clip] + t], negs])  # (1 + N,)
        return audio, self._windows[rows]  # (26, 20), (1 + N, C, W)


@dataclass(frozen=True)
class EvalSequence:
    """One evaluation sequence: frames [start, start + length) of clip `clip` (an index into the stream list)."""

    clip: int
    start: int
    length: int


def eval_sequences(streams: Sequence[ClipStreams], frames: int, stride: int) -> list[EvalSequence]:
    """Sequences of `frames` frames (whole clips when shorter) every `stride` frames of each clip."""
    out = []
    for c, s in enumerate(streams):
        n = len(s.motion[0])
        length = min(frames, n)
        out.extend(EvalSequence(c, start, length) for start in range(0, n - length + 1, stride))
    return out


def sequence_pyramids(streams: Sequence[ClipStreams], seq: EvalSequence, levels: int, audio_clip: int | None = None,
                      audio_start: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Audio and motion pyramids rebuilt from the level-1 slice of one sequence.

    With `audio_clip` / `audio_start`, the audio of the same length comes from another clip (a random pair).
    """
    s = streams[seq.clip]
    motion = s.motion[0][seq.start:seq.start + seq.length]  # (L, C)
    a_src = streams[seq.clip if audio_clip is None else audio_clip].audio[0]
    a0 = MFCC_ROWS_PER_VIDEO_FRAME * (seq.start if audio_start is None else audio_start)
    audio = a_src[a0:a0 + MFCC_ROWS_PER_VIDEO_FRAME * seq.length]  # (4L, 26) (fewer rows at a clip's end)
    return build_pyramid(audio, levels), build_pyramid(motion, levels)
