"""SyncNet training pairs and evaluation windows (thesis §2.3.1; method.md §6.1).

A window k pairs video frames ``[k, k + 5)`` with MFCC rows ``[4k, 4k + 20)`` (syncnet_python's convention,
:func:`pipeline.audio.mfcc_window`). Training pairs (keyed, see :mod:`pipeline.data.sampling`):
- positive (y = 1): the video window k with its own audio window k;
- negative (y = 0): the same video window with the **same clip's** audio at window k + s, ``|s| >= min_shift``,
  so the network must learn timing rather than speaker identity.
Labels are balanced by construction: even slots of a batch are positives, odd slots negatives.

Face regions are cut once per clip (all frames, resized to the model's input side) and kept in memory: at the
small sizes this is a few MB per clip, and random windows then cost only an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.audio import FPS, MFCC_WINDOW_VIDEO_FRAMES, SAMPLE_RATE, mfcc_window, syncnet_input_mfcc
from pipeline.data.corpus import (Clip, CorpusError, FeatureStore, FrameStore, lower_face, mouth_roi,
                                  resize_square)
from pipeline.data.sampling import sample_rng

WINDOW = MFCC_WINDOW_VIDEO_FRAMES  # 5 video frames per window
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
MOUTH_REGION_BOX_PX = 96  # side of the `mouth` region in a 256 px crop (method.md §1 mouth ROI: 72; this adds the chin)


def syncnet_audio(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A clip's float waveform (S,) (the feature files' ``wav``) -> the int16-PCM-scale MFCC (N, 13) syncnet_python
    computes, exactly, digital silence included (:func:`pipeline.audio.syncnet_input_mfcc`)."""
    return syncnet_input_mfcc(wav, sample_rate)


def shift_rows(feat: np.ndarray, rows: int) -> np.ndarray:
    """Delay a time-major feature by `rows` (advance when negative), edge-padded, same length:
    ``out[r] = feat[clamp(r - rows)]``. Delaying audio by s video frames is ``shift_rows(mfcc, 4 * s)``."""
    idx = np.clip(np.arange(feat.shape[0]) - rows, 0, feat.shape[0] - 1)
    return feat[idx]


def fit_length(feat: np.ndarray, n: int) -> np.ndarray:
    """Cut `feat` to n rows, or edge-pad it to n rows (another clip's audio standing in for this one's)."""
    return feat[np.clip(np.arange(n), 0, feat.shape[0] - 1)]


def face_region(frames: np.ndarray, region: str, size: int, landmarks: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 face crops -> (T, size, size, 3) uint8 of the SyncNet input region.

    Regions: ``lower`` = lower half of the crop (Wav2Lip's expert); ``full`` = the whole crop; ``mouth`` = a square
    of :data:`MOUTH_REGION_BOX_PX` (per 256 px of crop) centred on each frame's mouth landmarks (needs `landmarks`,
    (T, 68, 2+)): nose tip to chin, so the lips fill far more pixels than in a loose crop's lower half.
    """
    if region == "lower":
        return np.stack([lower_face(f, size) for f in frames])
    if region == "full":
        return np.stack([resize_square(f, size) for f in frames])
    if region == "mouth":
        if landmarks is None or len(landmarks) < len(frames):
            raise ValueError("face region `mouth` needs one set of landmarks per frame")
        return np.stack([mouth_roi(f, lm, box=MOUTH_REGION_BOX_PX, size=size) for f, lm in zip(frames, landmarks)])
    raise ValueError(f"unknown face region {region!r} (expected lower | full | mouth)")


@dataclass(frozen=True)
class SyncClip:
    """One clip ready for SyncNet: its face region per frame and its int16-scale MFCC.

    Attributes:
        clip: the manifest record.
        faces: (T, S, S, 3) uint8 RGB face regions of every frame.
        mfcc: (N, 13) float32 int16-scale MFCC (100 Hz).
        length: usable video frames, ``min(T, samples // 640)`` as in syncnet_python.
    """

    clip: Clip
    faces: np.ndarray
    mfcc: np.ndarray
    length: int

    @property
    def n_windows(self) -> int:
        """Windows syncnet_python evaluates: k = 0 .. length - 6 (``range(0, length - 5)``)."""
        return self.length - WINDOW


def load_sync_clips(clips: Sequence[Clip], region: str, size: int, features: FeatureStore | None = None,
                    frames: FrameStore | None = None) -> list[SyncClip]:
    """Decode every frame of `clips` once and cut the SyncNet region; load the MFCC (see :class:`SyncClip`)."""
    features = features or FeatureStore()
    frames = frames or FrameStore()
    out = []
    for clip in clips:
        wav = features.get_array(clip, "wav")  # (S,) float, 16 kHz
        mfcc = syncnet_audio(wav)
        n_samples = int(wav.shape[0])
        length = min(clip.frames, n_samples // SAMPLES_PER_FRAME)
        if length <= WINDOW:
            raise CorpusError(f"{clip.features}: clip {clip.clip_id} has {length} usable frames, SyncNet needs > {WINDOW}")
        landmarks = features.get_array(clip, "landmarks") if region == "mouth" else None  # (T, 68, 3)
        faces = face_region(frames.frames(clip, np.arange(clip.frames)), region, size, landmarks)  # (T, S, S, 3)
        out.append(SyncClip(clip=clip, faces=faces, mfcc=mfcc, length=length))
    return out


def video_input(faces: np.ndarray) -> torch.Tensor:
    """(B, 5, S, S, 3) uint8 RGB windows -> (B, 3, 5, S, S) float BGR 0..255 (syncnet_python's input)."""
    x = torch.from_numpy(np.ascontiguousarray(faces[..., ::-1]))  # RGB -> BGR, (B, 5, S, S, 3)
    return x.permute(0, 4, 1, 2, 3).float()  # (B, 3, 5, S, S)


def audio_input(windows: np.ndarray) -> torch.Tensor:
    """(B, 20, 13) MFCC windows -> (B, 1, 13, 20) (cepstra x time, as syncnet_python transposes)."""
    return torch.from_numpy(np.ascontiguousarray(windows.transpose(0, 2, 1)))[:, None].float()  # (B, 1, 13, 20)


def audio_windows(mfcc: np.ndarray, starts: Sequence[int] | np.ndarray) -> np.ndarray:
    """MFCC windows of video frames ``[k, k + 5)`` for each k in `starts` -> (B, 20, 13)."""
    return np.stack([mfcc_window(mfcc, int(k)) for k in starts])


@dataclass(frozen=True)
class PairBatch:
    """A collated training batch: video (B, 3, 5, S, S), audio (B, 1, 13, 20), label y (B,) in {0, 1},
    audio shift in frames (B,) (0 for positives)."""

    video: torch.Tensor
    audio: torch.Tensor
    label: torch.Tensor
    shift: torch.Tensor


class SyncPairDataset(torch.utils.data.Dataset):
    """Keyed positive/negative pairs (module docstring); ``dataset[(step, slot)]``.

    Args:
        clips: training clips (:func:`load_sync_clips`).
        seed: every choice of sample (step, slot) comes from ``sample_rng(seed, step, slot)``.
        min_shift: smallest |s| (video frames) of a negative's audio shift.
        max_shift: largest |s| (clamped to the clip).
        flip: mirror the window horizontally with probability 1/2 (lip sync is left/right symmetric).
    """

    def __init__(self, clips: Sequence[SyncClip], seed: int, min_shift: int, max_shift: int, flip: bool) -> None:
        if not clips:
            raise ValueError("SyncPairDataset needs at least one clip")
        if not 1 <= min_shift <= max_shift:
            raise ValueError(f"need 1 <= min_shift <= max_shift, got {min_shift}, {max_shift}")
        short = [c.clip.clip_id for c in clips if c.length - WINDOW < 2 * min_shift]
        if short:
            raise CorpusError(f"clips too short for negatives shifted by >= {min_shift} frames from every window "
                              f"(need >= {2 * min_shift + WINDOW} usable frames): {short[:5]}")
        self.clips = list(clips)
        self.seed, self.min_shift, self.max_shift, self.flip = seed, min_shift, max_shift, flip
        # clips are drawn in proportion to their number of windows, so every window is equally likely
        weights = np.array([c.length - WINDOW + 1 for c in self.clips], dtype=np.float64)
        self.clip_p = weights / weights.sum()

    def __len__(self) -> int:  # keyed dataset: length only informs DataLoader's bookkeeping
        return sum(c.length - WINDOW + 1 for c in self.clips)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int, int]:
        step, slot = key
        rng = sample_rng(self.seed, step, slot)
        c = self.clips[int(rng.choice(len(self.clips), p=self.clip_p))]
        last = c.length - WINDOW  # last window start whose 5 frames are all usable
        k = int(rng.integers(0, last + 1))
        label = 1 if slot % 2 == 0 else 0
        shift = 0
        if not label:
            lo, hi = max(-self.max_shift, -k), min(self.max_shift, last - k)
            # non-empty: k + (last - k) >= 2 min_shift, so one side has room for |s| >= min_shift
            candidates = [s for s in range(lo, hi + 1) if abs(s) >= self.min_shift]
            shift = int(rng.choice(candidates))
        faces = c.faces[k:k + WINDOW]  # (5, S, S, 3)
        if self.flip and rng.random() < 0.5:
            faces = faces[:, :, ::-1]
        audio = mfcc_window(c.mfcc, k + shift)  # (20, 13)
        return np.ascontiguousarray(faces), audio, label, shift


def collate_pairs(items: list[tuple[np.ndarray, np.ndarray, int, int]]) -> PairBatch:
    faces, audio, label, shift = zip(*items)
    return PairBatch(video=video_input(np.stack(faces)), audio=audio_input(np.stack(audio)),
                     label=torch.tensor(label, dtype=torch.float32), shift=torch.tensor(shift))
