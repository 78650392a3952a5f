"""Video-driven pretraining samples of the face renderer (face-vid2vid; method.md §4.3).

One sample = two different frames of one clip: the source (appearance and canonical keypoints) and the driving frame
(pose, expression and the target image), plus the mel windows of driving frames d-1 and d, from which the training
loop computes the audio relationship c^a of CERL (Algorithm 1). The clip is drawn uniformly over clips, the driving
frame d uniformly in [1, T-1] (d-1 must exist), the source uniformly over the other T-1 frames. With ``augment``,
both frames get the same random flip and colour jitter (:func:`augment_pair`, FOMM's recipe).

Frames: the whole clip is decoded once (sequential decoding through `FrameStore` is fast, random seeks are not),
resized to S x S, and kept as uint8 in a per-process LRU cache bounded by ``cache_mb`` (emptied when the dataset is
pickled into DataLoader workers). A clip larger than the whole cache is served uncached, decoding only the two frames
a sample needs. All randomness of sample (step, slot) comes from ``sample_rng(seed, step, slot)`` (the augmentation
from ``sample_rng(seed, step, slot, 1)``).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.audio import mel_windows
from pipeline.data.corpus import Clip, CorpusError, FeatureStore, FrameStore, resize_square
from pipeline.data.sampling import sample_rng

EVAL_STREAM = 0x7E4D  # first keys of the evaluation pairs' random stream (training uses (step, slot))
MIN_EVAL_GAP = 5  # frames between source and driving of an evaluation pair (so "output the source" is no answer)


def to_float_image(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1] (the renderer's image convention)."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


class _ClipFrameCache:
    """LRU of whole decoded clips (uint8 (T, S, S, 3)) bounded in bytes; emptied when pickled to a worker."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])

    def get(self, key: str) -> np.ndarray | None:
        frames = self._items.get(key)
        if frames is not None:
            self._items.move_to_end(key)
        return frames

    def put(self, key: str, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = frames
        self.bytes += frames.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes


@dataclass(frozen=True)
class RendererSampleSpec:
    """Where one sample comes from: clip index (into the dataset's clips), source and driving frame indices."""

    clip: int
    source: int
    driving: int


def draw_pair(rng: np.random.Generator, frames: int, min_gap: int = 1) -> tuple[int, int]:
    """A (source, driving) pair of a clip of `frames` frames: driving d uniform in [1, frames-1], source uniform over
    the frames at least `min_gap` away from d (rejection sampling: uniform over the valid pairs).

    Raises:
        ValueError: no valid pair exists (frames < min_gap + 1, or frames < 2).
    """
    if frames < max(2, min_gap + 1):
        raise ValueError(f"a clip of {frames} frames has no source/driving pair {min_gap} frames apart")
    while True:
        d = int(rng.integers(1, frames))
        s = int(rng.integers(0, frames))
        if abs(s - d) >= min_gap:
            return s, d


JITTER = 0.1  # FOMM / face-vid2vid augmentation: brightness, contrast, saturation and hue jitter of ±0.1


def augment_pair(frames: np.ndarray, rng: np.random.Generator, jitter: float = JITTER) -> np.ndarray:
    """FOMM's training augmentation, identical for the source and the driving frame of a sample: a horizontal flip
    with probability 1/2 and one colour jitter (brightness, contrast, saturation factors in [1 − j, 1 + j], hue
    shift in ±j of the colour circle). It widens the colours and poses the renderer sees, so that it learns to carry
    the source's appearance over instead of memorising the few training identities.

    Args:
        frames: (n, S, S, 3) uint8 frames of one sample (the same transform for all n).
        rng: the sample's random stream.
    Returns:
        (n, S, S, 3) uint8.
    """
    import cv2

    flip = rng.random() < 0.5
    b, c, s = rng.uniform(1 - jitter, 1 + jitter, size=3)
    hue = rng.uniform(-jitter, jitter) * 360.0  # degrees of OpenCV's float HSV
    x = frames[:, :, ::-1] if flip else frames
    x = x.astype(np.float32) / 255.0 * b  # (n, S, S, 3)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (n, S, S) luma
    x = (x - gray.mean(axis=(1, 2))[:, None, None, None]) * c + gray.mean(axis=(1, 2))[:, None, None, None]
    gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # (n, S, S, 1)
    x = np.clip(gray + (x - gray) * s, 0.0, 1.0)
    out = np.empty(x.shape, np.uint8)
    for i, img in enumerate(x):
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)  # H in [0, 360)
        hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360.0)
        out[i] = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class RendererDataset(torch.utils.data.Dataset):
    """Keyed renderer pretraining samples: ``dataset[(step, slot)]`` -> dict of numpy arrays.

    Returns:
        ``source``, ``driving`` (3, S, S) float32 in [0, 1]; ``mel`` (2, 1, 80, 16) float32, the mel windows of
        driving frames (d-1, d); ``clip`` (index into `clips`), ``source_index``, ``driving_index`` ints.

    Args:
        clips: clips to draw from (each with >= 2 frames).
        seed: run seed; sample (step, slot) uses ``sample_rng(seed, step, slot)``.
        image_size: S, side of the returned images (crops are resized with `resize_square`).
        cache_mb: per-process cache of decoded, resized clips (0 disables it: every sample decodes its two frames).
        augment: apply :func:`augment_pair` (drawn from ``sample_rng(seed, step, slot, 1)``).
    """

    def __init__(self, clips: Sequence[Clip], seed: int, image_size: int, cache_mb: int = 512,
                 augment: bool = False) -> None:
        short = [c.clip_id for c in clips if c.frames < 2]
        if not clips or short:
            raise CorpusError(f"renderer dataset needs clips of >= 2 frames; got {len(clips)} clips, "
                              f"too short: {short[:5]}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.clips = list(clips)
        self.seed, self.image_size, self.augment = seed, image_size, augment
        self.features = FeatureStore(max_items=max(16, min(len(self.clips), 256)))
        self.frame_store = FrameStore(max_items=8)  # whole clips are decoded at once: few open readers needed
        self.cache = _ClipFrameCache(cache_mb * 2**20)

    def draw(self, step: int, slot: int) -> RendererSampleSpec:
        """The clip and frames of sample (step, slot) — cheap, no decoding."""
        rng = sample_rng(self.seed, step, slot)
        c = int(rng.integers(0, len(self.clips)))
        s, d = draw_pair(rng, self.clips[c].frames)
        return RendererSampleSpec(c, s, d)

    def clip_bytes(self, clip: Clip) -> int:
        """Size of a whole decoded clip at S x S (uint8)."""
        return clip.frames * self.image_size * self.image_size * 3

    def frames(self, clip: Clip, indices: Sequence[int]) -> np.ndarray:
        """uint8 (n, S, S, 3) frames of a clip: from the cache, else by decoding the whole clip (then cached) or,
        when the clip does not fit in the cache, only the requested frames."""
        whole = self.cache.get(clip.clip_id)
        if whole is None and self.clip_bytes(clip) <= self.cache.max_bytes:
            whole = self.decode(clip, range(clip.frames))  # (T, S, S, 3)
            self.cache.put(clip.clip_id, whole)
        if whole is not None:
            return whole[np.asarray(indices, dtype=np.int64)]  # (n, S, S, 3)
        order = np.argsort(indices)
        decoded = self.decode(clip, [int(indices[i]) for i in order])  # sorted indices decode fastest
        out = np.empty_like(decoded)
        out[order] = decoded
        return out

    def decode(self, clip: Clip, indices: Sequence[int]) -> np.ndarray:
        """Decode and resize frames (n, S, S, 3) uint8 (no cache)."""
        raw = self.frame_store.frames(clip, list(indices))  # (n, H, W, 3)
        return np.stack([resize_square(f, self.image_size) for f in raw])  # (n, S, S, 3)

    def mels(self, clip: Clip, driving: int) -> np.ndarray:
        """Mel windows (2, 1, 80, 16) of driving frames d-1 and d."""
        return mel_windows(self.features.get_array(clip, "mel"), [driving - 1, driving])[:, None]  # (2, 1, 80, 16)

    def load(self, spec: RendererSampleSpec, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Arrays of one sample; augmented with `rng` when given."""
        clip = self.clips[spec.clip]
        frames = self.frames(clip, [spec.source, spec.driving])  # (2, S, S, 3) uint8
        if rng is not None:
            frames = augment_pair(frames, rng)
        source, driving = to_float_image(frames)  # (3, S, S) each
        return {"source": source, "driving": driving, "mel": self.mels(clip, spec.driving),
                "clip": spec.clip, "source_index": spec.source, "driving_index": spec.driving}

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        step, slot = key
        return self.load(self.draw(step, slot), sample_rng(self.seed, step, slot, 1) if self.augment else None)


def eval_specs(clips: Sequence[Clip], seed: int, pairs_per_clip: int,
               min_gap: int = MIN_EVAL_GAP) -> list[RendererSampleSpec]:
    """A fixed, seeded set of `pairs_per_clip` (source, driving) pairs, >= `min_gap` frames apart, for every clip.

    Streams are keyed ``(EVAL_STREAM, clip, EVAL_STREAM)``: three keys ending in a non-zero one, so no training key
    (step, slot) gives the same stream (NumPy's seeding treats a trailing zero key as absent).
    """
    specs = []
    for c, clip in enumerate(clips):
        rng = sample_rng(seed, EVAL_STREAM, c, EVAL_STREAM)
        try:
            specs += [RendererSampleSpec(c, *draw_pair(rng, clip.frames, min_gap)) for _ in range(pairs_per_clip)]
        except ValueError as err:
            raise CorpusError(f"{clip.video}: {err} (clip {clip.clip_id}, renderer evaluation set)") from err
    return specs


@dataclass(frozen=True)
class RendererEvalSet:
    """Held-out renderer pairs as tensors, built once and reused at every evaluation.

    Attributes:
        source: (N, 3, S, S) float32 in [0, 1].
        driving: (N, 3, S, S) float32 in [0, 1] (the target of the reconstruction).
        mel: (N, 2, 1, 80, 16) mel windows of driving frames (d-1, d).
        clip_ids: (N,) clip id of each pair (the bootstrap's clusters).
        speakers: (N,) speaker of each pair.
        positions: (N, 2) int64 (source_index, driving_index).
    """

    source: torch.Tensor
    driving: torch.Tensor
    mel: torch.Tensor
    clip_ids: np.ndarray
    speakers: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.source.shape[0])


def build_eval_set(clips: Sequence[Clip], seed: int, image_size: int, pairs_per_clip: int,
                   min_gap: int = MIN_EVAL_GAP) -> RendererEvalSet:
    """Decode the held-out pairs of :func:`eval_specs` (each clip's frames in one sorted decode)."""
    if pairs_per_clip < 1:
        raise ValueError(f"pairs_per_clip must be >= 1, got {pairs_per_clip}")
    dataset = RendererDataset(clips, seed, image_size, cache_mb=0)
    specs = eval_specs(clips, seed, pairs_per_clip, min_gap)
    sources, drivings, mels = [], [], []
    for c, clip in enumerate(clips):
        mine = [s for s in specs if s.clip == c]
        wanted = sorted({f for s in mine for f in (s.source, s.driving)})
        by_frame = dict(zip(wanted, to_float_image(dataset.decode(clip, wanted))))  # frame -> (3, S, S)
        for s in mine:
            sources.append(by_frame[s.source])
            drivings.append(by_frame[s.driving])
            mels.append(dataset.mels(clip, s.driving))  # (2, 1, 80, 16)
    return RendererEvalSet(
        source=torch.from_numpy(np.stack(sources)), driving=torch.from_numpy(np.stack(drivings)),
        mel=torch.from_numpy(np.stack(mels)),
        clip_ids=np.array([clips[s.clip].clip_id for s in specs]),
        speakers=np.array([clips[s.clip].speaker for s in specs]),
        positions=np.array([(s.source, s.driving) for s in specs], dtype=np.int64))


__all__ = ["RendererDataset", "RendererSampleSpec", "RendererEvalSet", "build_eval_set", "eval_specs", "draw_pair",
           "to_float_image", "EVAL_STREAM", "MIN_EVAL_GAP"]
