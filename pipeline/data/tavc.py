"""Training and evaluation samples of the TAVC metric (TAVCE §III-B; method.md §3.3).

One sample, drawn at a random position i of a random clip:
- audio: the mel windows of video frames i-1 and i (:func:`pipeline.audio.mel_windows`), (2, 1, 80, 16);
- video: the mouth ROIs (method.md §1) of frames i-1, i (positive pair) and j, |j - i| >= τ, of the same clip
  (negative pair (i-1, j)), (3, 3, 112, 112) in [-1, 1].

Where preprocessing stored the clip's mouth ROIs (`preprocess.mouth_roi_quality`: JPEGs of the ROIs cut from the
frames before encoding, members ``mouth_roi_jpeg`` / ``mouth_roi_offsets`` of the feature file), each ROI is one
~0.05 ms JPEG decode and nothing is seeked (issue 16: the cold loader was decode-bound). Otherwise (corpora
preprocessed without them, or ``stored_rois=False``) frames are decoded from the cropped clips at the drawn
positions (decord, through `FrameStore`) inside DataLoader workers. A random seek decodes from the previous keyframe: up to 250 frames in clips written with x264's default
GOP, at most 25 in clips preprocessed with `preprocess.keyframe_interval_s: 1.0` (the default since issue 16). Two things make that cheap without changing any value: a seek
decodes a span of ``prefetch`` frames on each side of the wanted ones (sequential decoding costs little next to the
seek), and each worker keeps the ROIs it has decoded in a bounded per-process cache (``roi_cache_mb``). All randomness of a sample comes from ``sample_rng(seed, step, slot)``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.audio import mel_windows
from pipeline.data.corpus import (MOUTH_ROI_SIZE, STORED_ROI_KEYS, Clip, CorpusError, FeatureStore, FrameStore,
                                  _PerProcessCache, decode_mouth_roi, mouth_roi, to_unit_range)
from pipeline.data.sampling import sample_rng

ROI_BYTES = MOUTH_ROI_SIZE * MOUTH_ROI_SIZE * 3  # one uint8 ROI
EVAL_STREAM = 0x7A7C  # first key of the evaluation samples' random stream (training uses (step, slot))
SHIFT_PX = 4  # augmentation: largest ROI translation, pixels of the 112 x 112 ROI
CONTRAST = (0.8, 1.2)  # augmentation: contrast factor range
BRIGHTNESS = 0.1  # augmentation: largest brightness offset, in [-1, 1] units


def min_clip_frames(tau: int) -> int:
    """Shortest clip on which every i in [1, T-1] has a negative j with |j - i| >= τ."""
    return 2 * tau + 2


def draw_positions(rng: np.random.Generator, frames: int, tau: int) -> tuple[int, int]:
    """A position i in [1, frames-1] and a negative j in [0, frames-1] with |j - i| >= τ (uniform over both sides)."""
    if frames < min_clip_frames(tau):
        raise ValueError(f"a clip of {frames} frames is too short for τ = {tau} (needs {min_clip_frames(tau)})")
    i = int(rng.integers(1, frames))
    below = max(0, i - tau + 1)  # candidates 0 .. i - τ
    above = max(0, frames - (i + tau))  # candidates i + τ .. frames - 1
    k = int(rng.integers(0, below + above))
    j = k if k < below else i + tau + (k - below)
    return i, j


class _RoiCache:
    """Bounded LRU of decoded uint8 mouth ROIs keyed by (clip id, frame); emptied when pickled to a worker."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: collections.OrderedDict[tuple[str, int], np.ndarray] = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_items": self.max_items}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_items"])

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        roi = self._items.get(key)
        if roi is not None:
            self._items.move_to_end(key)
        return roi

    def put(self, key: tuple[str, int], roi: np.ndarray) -> None:
        if self.max_items <= 0:
            return
        self._items[key] = roi
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class TAVCSampleSpec:
    """Where one sample comes from: clip index (into the dataset's clips) and positions i, j."""

    clip: int
    i: int
    j: int


class TAVCDataset(torch.utils.data.Dataset):
    """Keyed TAVC samples: ``dataset[(step, slot)]`` -> dict of numpy arrays (see module docstring).

    Returns:
        ``mel`` (2, 1, 80, 16) float32 windows of frames (i-1, i); ``roi`` (3, 3, 112, 112) float32 in [-1, 1] of
        frames (i-1, i, j); ``clip``, ``i``, ``j`` ints.

    Args:
        clips: clips to draw from (each with at least ``min_clip_frames(tau)`` frames).
        seed: run seed; sample (step, slot) uses ``sample_rng(seed, step, slot)``.
        tau: negative distance τ.
        augment: shared across the three ROIs of a sample: horizontal flip, a shift of up to ±4 px, contrast and
            brightness jitter (frame differences stay those of the mouth motion).
        roi_cache_mb: per-process cache of decoded ROIs (0 disables it).
        prefetch: frames decoded (and cached) on each side of a missing frame (needs the cache; 0 = only the frame).
        stored_rois: read the ROIs that preprocessing stored with the features where a clip has them (False: always
            decode the clip, e.g. to compare both paths).
    """

    def __init__(self, clips: Sequence[Clip], seed: int, tau: int, augment: bool = False,
                 roi_cache_mb: int = 256, prefetch: int = 0, stored_rois: bool = True) -> None:
        short = [c.clip_id for c in clips if c.frames < min_clip_frames(tau)]
        if not clips or short:
            raise CorpusError(f"TAVC dataset needs clips of >= {min_clip_frames(tau)} frames; "
                              f"got {len(clips)} clips, too short: {short[:5]}")
        self.clips = list(clips)
        self.seed, self.tau, self.augment = seed, tau, augment
        self.features = FeatureStore(max_items=max(16, min(len(self.clips), 256)))
        self.frame_store = FrameStore(max_items=max(16, min(len(self.clips), 64)))
        self.roi_cache = _RoiCache(roi_cache_mb * 2**20 // ROI_BYTES)
        self.stored_rois = stored_rois
        self.stored = _PerProcessCache(max_items=max(16, min(len(self.clips), 64)))  # clip -> (jpeg, offsets)
        # a span never exceeds a quarter of the cache, so prefetched ROIs cannot evict the ones just requested
        self.prefetch = max(0, min(prefetch, self.roi_cache.max_items // 8))

    def draw(self, step: int, slot: int) -> TAVCSampleSpec:
        """The clip and positions of sample (step, slot) — cheap, no decoding."""
        rng = sample_rng(self.seed, step, slot)
        c = int(rng.integers(0, len(self.clips)))
        i, j = draw_positions(rng, self.clips[c].frames, self.tau)
        return TAVCSampleSpec(c, i, j)

    def rois(self, clip: Clip, frames: Sequence[int]) -> np.ndarray:
        """uint8 mouth ROIs (n, 112, 112, 3) of the given frames (decoded once per process, then cached)."""
        out: list[np.ndarray | None] = [self.roi_cache.get((clip.clip_id, int(f))) for f in frames]
        missing = sorted({int(f) for f, roi in zip(frames, out) if roi is None})
        if not missing:
            return np.stack(out)  # type: ignore[arg-type]  # (n, 112, 112, 3)
        if self.stored_rois and self.features.has(clip, STORED_ROI_KEYS[0]):
            jpeg, offsets = self.stored.get(clip.features, lambda: self.features.get_arrays(clip, STORED_ROI_KEYS))
            fresh = {f: decode_mouth_roi(jpeg, offsets, f, str(clip.features)) for f in missing}
        else:
            landmarks = self.features.get_array(clip, "landmarks")  # (T, 68, 3)
            if landmarks.shape[0] < max(missing) + 1:
                raise CorpusError(f"{clip.features}: landmarks has {landmarks.shape[0]} frames, frame "
                                  f"{max(missing)} requested (clip {clip.clip_id})")
            wanted = _spans(missing, self.prefetch, min(clip.frames, landmarks.shape[0]))
            decoded = self.frame_store.frames(clip, wanted)  # (n, H, W, 3), sorted indices decode fastest
            fresh = {f: mouth_roi(image, landmarks[f]) for f, image in zip(wanted, decoded)}  # (112, 112, 3) each
        for f, roi in fresh.items():
            self.roi_cache.put((clip.clip_id, f), roi)
        out = [roi if roi is not None else fresh[int(f)] for f, roi in zip(frames, out)]
        return np.stack(out)  # type: ignore[arg-type]  # (n, 112, 112, 3)

    def mels(self, clip: Clip, frames: Sequence[int]) -> np.ndarray:
        """Mel windows (n, 1, 80, 16) of the given video frames."""
        return mel_windows(self.features.get_array(clip, "mel"), list(frames))[:, None]  # (n, 1, 80, 16)

    def load(self, spec: TAVCSampleSpec, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Arrays of one sample; `rng` (training only) drives the augmentation."""
        clip = self.clips[spec.clip]
        roi = to_unit_range(self.rois(clip, [spec.i - 1, spec.i, spec.j]))  # (3, 3, 112, 112)
        if self.augment and rng is not None:
            roi = augment_rois(roi, rng)
        return {"mel": self.mels(clip, [spec.i - 1, spec.i]), "roi": roi,
                "clip": spec.clip, "i": spec.i, "j": spec.j}

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        step, slot = key
        spec = self.draw(step, slot)
        # The augmentation stream is a child of the same (step, slot) key, independent of the draw above.
        return self.load(spec, sample_rng(self.seed, step, slot, 1))


def _spans(frames: Sequence[int], pad: int, length: int) -> list[int]:
    """Sorted frames within `pad` of any of `frames`, clipped to [0, length) (one sequential decode per cluster)."""
    if pad <= 0:
        return sorted(set(frames))
    out: set[int] = set()
    for f in frames:
        out.update(range(max(0, f - pad), min(length, f + pad + 1)))
    return sorted(out)


def augment_rois(roi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random flip / shift / contrast / brightness applied identically to every ROI of a sample.

    Args:
        roi: (n, 3, H, W) float32 in [-1, 1].
    """
    out = roi[..., ::-1] if rng.random() < 0.5 else roi  # horizontal flip (the mouth is left-right symmetric)
    dy, dx = rng.integers(-SHIFT_PX, SHIFT_PX + 1, size=2)
    h, w = out.shape[-2:]
    padded = np.pad(out, ((0, 0), (0, 0), (SHIFT_PX, SHIFT_PX), (SHIFT_PX, SHIFT_PX)), mode="edge")
    out = padded[..., SHIFT_PX + dy:SHIFT_PX + dy + h, SHIFT_PX + dx:SHIFT_PX + dx + w]  # (n, 3, H, W)
    out = out * rng.uniform(*CONTRAST) + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    return np.ascontiguousarray(np.clip(out, -1.0, 1.0), dtype=np.float32)


def eval_specs(clips: Sequence[Clip], seed: int, tau: int, per_clip: int) -> list[TAVCSampleSpec]:
    """A fixed, seeded set of `per_clip` (i, j) samples for every clip (held-out evaluation)."""
    specs = []
    for c, clip in enumerate(clips):
        rng = sample_rng(seed, EVAL_STREAM, c)
        specs += [TAVCSampleSpec(c, *draw_positions(rng, clip.frames, tau)) for _ in range(per_clip)]
    return specs


@dataclass(frozen=True)
class TAVCEvalSet:
    """Held-out samples as tensors, built once and reused at every evaluation.

    Attributes:
        mel: (N, 2, 1, 80, 16) audio windows (i-1, i).
        roi: (N, 3, 3, 112, 112) ROIs of frames (i-1, i, j) in [-1, 1].
        clip_ids: (N,) clip id of each sample (the bootstrap's clusters).
        speakers: (N,) speaker of each sample.
        positions: (N, 2) int (i, j).
    """

    mel: torch.Tensor
    roi: torch.Tensor
    clip_ids: np.ndarray
    speakers: np.ndarray
    positions: np.ndarray


def build_eval_set(clips: Sequence[Clip], seed: int, tau: int, per_clip: int) -> TAVCEvalSet:
    """Decode the held-out samples of :func:`eval_specs` (each clip's frames in one sorted decode)."""
    dataset = TAVCDataset(clips, seed, tau, augment=False, roi_cache_mb=0)
    specs = eval_specs(clips, seed, tau, per_clip)
    mels, rois = [], []
    for c, clip in enumerate(clips):
        mine = [s for s in specs if s.clip == c]
        frames = sorted({f for s in mine for f in (s.i - 1, s.i, s.j)})
        by_frame = dict(zip(frames, to_unit_range(dataset.rois(clip, frames))))  # frame -> (3, 112, 112)
        for s in mine:
            rois.append(np.stack([by_frame[s.i - 1], by_frame[s.i], by_frame[s.j]]))  # (3, 3, 112, 112)
            mels.append(dataset.mels(clip, [s.i - 1, s.i]))  # (2, 1, 80, 16)
    return TAVCEvalSet(
        mel=torch.from_numpy(np.stack(mels)), roi=torch.from_numpy(np.stack(rois)),
        clip_ids=np.array([clips[s.clip].clip_id for s in specs]),
        speakers=np.array([clips[s.clip].speaker for s in specs]),
        positions=np.array([(s.i, s.j) for s in specs], dtype=np.int64))
