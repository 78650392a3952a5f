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
from typing import Any, Literal

import numpy as np
import torch

from pipeline.audio import mel_windows
from pipeline.data.corpus import MOUTH, Clip, CorpusError, FeatureStore, FrameStore, resize_square
from pipeline.data.sampling import sample_rng
from pipeline.faces.coeffs import mouth_opening
from pipeline.faces.coeffs import coefficient_windows
from pipeline.faces.landmarks import MIRROR_68

EVAL_STREAM = 0x7E4D  # first keys of the evaluation pairs' random stream (training uses (step, slot))
MIN_EVAL_GAP = 5  # frames between source and driving of an evaluation pair (so "output the source" is no answer)
MOUTH_BOX_MARGIN = 0.3  # the mouth region of the L1 metric: the mouth landmarks' box, widened by 30 % on each side
EvalSelection = Literal["random", "motion"]
PairSampling = Literal["uniform", "motion"]
MOTION_CANDIDATES = 4  # `motion` pair sampling: the source is the most different of this many uniform draws


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


def augment_pair(frames: np.ndarray, rng: np.random.Generator, jitter: float = JITTER,
                 flip: bool = True) -> tuple[np.ndarray, bool]:
    """FOMM's training augmentation, identical for the source and the driving frame of a sample: a horizontal flip
    with probability 1/2 and one colour jitter (brightness, contrast, saturation factors in [1 − j, 1 + j], hue
    shift in ±j of the colour circle). It widens the colours and poses the renderer sees, so that it learns to carry
    the source's appearance over instead of memorising the few training identities.

    Args:
        frames: (n, S, S, 3) uint8 frames of one sample (the same transform for all n).
        rng: the sample's random stream.
        flip: allow the flip (False: never flipped; the random stream is consumed alike, so the colour jitter of a
            sample does not depend on this switch).
    Returns:
        (n, S, S, 3) uint8, and whether they were flipped (a mirrored head has its yaw and roll negated).
    """
    import cv2

    flip = bool(rng.random() < 0.5) and flip
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
    return out, bool(flip)


class RendererDataset(torch.utils.data.Dataset):
    """Keyed renderer pretraining samples: ``dataset[(step, slot)]`` -> dict of numpy arrays.

    Returns:
        ``source``, ``driving`` (3, S, S) float32 in [0, 1]; ``mel`` (2, 1, 80, 16) float32, the mel windows of
        driving frames (d-1, d); ``pose`` (2, 3) float32, (yaw, pitch, roll) in degrees of the source and the
        driving frame from preprocessing's coefficients (mirrored with the frames when the augmentation flips
        them: yaw and roll change sign); ``landmarks`` (2, 68, 2) preprocessing's landmarks of both frames in
        pixels of the S x S image; with ``coeff_window`` W > 0 ``coeffs`` (2, 70, W) float32, MappingNet's
        coefficient windows centred on the source and on the driving frame (flipped samples get yaw, roll and the
        x translation negated; the expression coefficients are not mirrored, so trainers that read them switch
        `flip` off); ``clip`` (index into `clips`), ``source_index``, ``driving_index`` ints.

    Args:
        clips: clips to draw from (each with >= 2 frames).
        seed: run seed; sample (step, slot) uses ``sample_rng(seed, step, slot)``.
        image_size: S, side of the returned images (crops are resized with `resize_square`).
        cache_mb: per-process cache of decoded, resized clips (0 disables it: every sample decodes its two frames).
        augment: apply :func:`augment_pair` (drawn from ``sample_rng(seed, step, slot, 1)``).
        pair_sampling: ``uniform`` (FOMM / face-vid2vid: any two frames of a clip) or ``motion``: the driving frame
            uniform, the source the most different (mouth opening + head pose, :func:`motion_score`) of
            ``MOTION_CANDIDATES`` uniform draws, so that more pairs need the motion path to be reconstructed.
        coeff_window: frames of the ``coeffs`` windows (0: not returned).
        flip: let the augmentation flip (see :func:`augment_pair`).
        previous: also return ``previous`` (3, S, S), the real frame d-1 before the driving frame (augmented with
            the pair), and ``landmarks_previous`` (68, 2) its landmarks in S px (TAVCE's CAR anchors the generated
            frame's mouth change on it).
    """

    def __init__(self, clips: Sequence[Clip], seed: int, image_size: int, cache_mb: int = 512,
                 augment: bool = False, pair_sampling: PairSampling = "uniform", coeff_window: int = 0,
                 flip: bool = True, previous: bool = False) -> None:
        short = [c.clip_id for c in clips if c.frames < 2]
        if not clips or short:
            raise CorpusError(f"renderer dataset needs clips of >= 2 frames; got {len(clips)} clips, "
                              f"too short: {short[:5]}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if pair_sampling not in ("uniform", "motion"):
            raise ValueError(f"pair_sampling must be 'uniform' or 'motion', got {pair_sampling!r}")
        self.clips = list(clips)
        self.seed, self.image_size, self.augment, self.pair_sampling = seed, image_size, augment, pair_sampling
        self.coeff_window, self.flip, self.previous = coeff_window, flip, previous
        self.features = FeatureStore(max_items=max(16, min(len(self.clips), 256)))
        self.frame_store = FrameStore(max_items=8)  # whole clips are decoded at once: few open readers needed
        self.cache = _ClipFrameCache(cache_mb * 2**20)
        self.crop_sides: dict[str, int] = {}  # side of each clip's preprocessed crop (landmarks are in its pixels)
        self.motion: list[tuple[np.ndarray, np.ndarray]] = []
        if pair_sampling == "motion":
            self.motion = [frame_motion(self.features, clip) for clip in self.clips]
            self.motion_scales = motion_scales(self.motion)

    def draw(self, step: int, slot: int) -> RendererSampleSpec:
        """The clip and frames of sample (step, slot) — cheap, no decoding."""
        rng = sample_rng(self.seed, step, slot)
        c = int(rng.integers(0, len(self.clips)))
        s, d = draw_pair(rng, self.clips[c].frames)
        if self.pair_sampling == "motion":
            mouth, pose = self.motion[c]
            candidates = [s] + [draw_pair(rng, self.clips[c].frames)[0] for _ in range(MOTION_CANDIDATES - 1)]
            candidates = [x for x in candidates if x != d] or [s]
            scores = motion_score(mouth, pose, np.asarray(candidates), d, *self.motion_scales)  # (n,)
            s = candidates[int(np.argmax(scores))]
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
        self.crop_sides[clip.clip_id] = int(raw.shape[2])
        return np.stack([resize_square(f, self.image_size) for f in raw])  # (n, S, S, 3)

    def mels(self, clip: Clip, driving: int) -> np.ndarray:
        """Mel windows (2, 1, 80, 16) of driving frames d-1 and d."""
        return mel_windows(self.features.get_array(clip, "mel"), [driving - 1, driving])[:, None]  # (2, 1, 80, 16)

    def load(self, spec: RendererSampleSpec, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Arrays of one sample; augmented with `rng` when given."""
        clip = self.clips[spec.clip]
        wanted = [spec.source, spec.driving] + ([spec.driving - 1] if self.previous else [])
        frames = self.frames(clip, wanted)  # (2 or 3, S, S, 3) uint8
        coeffs = self.features.get_array(clip, "coeffs")  # (T, 73)
        pose = np.degrees(coeffs[[spec.source, spec.driving], 64:67])  # (2, 3)
        windows = coefficient_windows(coeffs, [spec.source, spec.driving], self.coeff_window) \
            if self.coeff_window else None  # (2, 70, W)
        points = crop_to_image_pixels(self.features.get_array(clip, "landmarks")[wanted, :, :2],
                                      self.crop_sides[clip.clip_id], self.image_size)  # (2 or 3, 68, 2)
        if rng is not None:
            frames, flipped = augment_pair(frames, rng, flip=self.flip)
            if flipped:
                pose = pose * np.array([-1.0, 1.0, -1.0])  # a mirrored head: yaw and roll change sign
                # mirrored positions, relabelled (the subject's left corner of the mouth is now on the right) so
                # that index i keeps naming the same facial point: the keypoint anchors rely on it
                points = (points * np.array([-1.0, 1.0]) + np.array([self.image_size - 1.0, 0.0]))[:, list(MIRROR_68)]
                if windows is not None:
                    windows = windows.copy()
                    windows[:, [64, 66, 67]] *= -1.0  # yaw, roll, x translation
        images = to_float_image(frames)  # (2 or 3, 3, S, S)
        sample = {"source": images[0], "driving": images[1], "mel": self.mels(clip, spec.driving),
                  "pose": pose.astype(np.float32), "landmarks": points[:2].astype(np.float32),
                  "clip": spec.clip, "source_index": spec.source, "driving_index": spec.driving}
        if windows is not None:
            sample["coeffs"] = windows
        if self.previous:
            sample["previous"] = images[2]
            sample["landmarks_previous"] = points[2].astype(np.float32)
        return sample

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
        mouth_box: (N, 4) int64 (x0, y0, x1, y1) in S px: the driving frame's mouth region (its mouth landmarks from
            preprocessing, widened by ``MOUTH_BOX_MARGIN``), where the mouth-region L1 is measured.
        mouth_delta: (N,) |mouth opening of source − of driving| (:func:`pipeline.faces.coeffs.mouth_opening`,
            inter-ocular units).
        pose_delta: (N,) Euclidean distance of the (yaw, pitch, roll) of source and driving, degrees.
        selection: how the pairs were chosen: ``random`` (uniform, ≥ `min_gap` apart) or ``motion`` (largest motion).
        coeffs: (N, 2, 70, W) MappingNet coefficient windows of (source, driving), or None (not built).
        previous: (N, 3, S, S) the real frame d-1 before each driving frame, or None (not built).
        roi_landmarks: (N, 2, 68, 2) preprocessing's landmarks of frames (d-1, d) in S px, or None: where CAR and
            the TAVC similarity cut the mouth ROIs.
    """

    source: torch.Tensor
    driving: torch.Tensor
    mel: torch.Tensor
    clip_ids: np.ndarray
    speakers: np.ndarray
    positions: np.ndarray
    mouth_box: np.ndarray
    mouth_delta: np.ndarray
    pose_delta: np.ndarray
    selection: EvalSelection = "random"
    coeffs: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    roi_landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source.shape[0])


def frame_motion(features: FeatureStore, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening (T,) (:func:`pipeline.faces.coeffs.mouth_opening` of the aligned landmarks) and head
    pose (T, 3) (yaw, pitch, roll in degrees) of a clip, from its preprocessing features."""
    pose = np.degrees(features.get_array(clip, "coeffs")[:, 64:67])  # (T, 3)
    return mouth_opening(features.get_array(clip, "aligned")), pose


def motion_scales(motion: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Spread of the mouth opening (std) and of the head pose (std of the distance to the mean pose) over clips."""
    mouth = np.concatenate([m for m, _ in motion])
    pose = np.concatenate([p for _, p in motion])
    return (max(float(mouth.std()), 1e-6), max(float(np.linalg.norm(pose - pose.mean(0), axis=-1).std()), 1e-6))


def motion_score(mouth: np.ndarray, pose: np.ndarray, s: np.ndarray | int, d: np.ndarray | int, mouth_scale: float,
                 pose_scale: float) -> np.ndarray:
    """``|Δ mouth| / mouth_scale + ‖Δ pose‖ / pose_scale`` between frames s and d of a clip (index arrays broadcast:
    one score per pair)."""
    return (np.abs(mouth[s] - mouth[d]) / mouth_scale
            + np.linalg.norm(pose[s] - pose[d], axis=-1) / pose_scale)


def motion_pairs(mouth: np.ndarray, pose: np.ndarray, pairs: int, mouth_scale: float, pose_scale: float,
                 min_gap: int = MIN_EVAL_GAP) -> list[tuple[int, int]]:
    """The `pairs` (source, driving) pairs of one clip with the largest motion between them, no frame used twice.

    Score of a pair: :func:`motion_score` (scales: the spread of each quantity over the evaluated clips, so that
    lips and head count alike); pairs ≥ `min_gap` frames apart with d ≥ 1; greedy by score, deterministic (ties by
    position).
    """
    t = len(mouth)
    s_idx, d_idx = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")  # (T, T)
    ok = (np.abs(s_idx - d_idx) >= min_gap) & (d_idx >= 1)
    score = motion_score(mouth, pose, s_idx, d_idx, mouth_scale, pose_scale)  # (T, T)
    order = np.lexsort((d_idx[ok], s_idx[ok], -score[ok]))
    cand_s, cand_d = s_idx[ok][order], d_idx[ok][order]
    used: set[int] = set()
    out: list[tuple[int, int]] = []
    for a, b in zip(cand_s.tolist(), cand_d.tolist()):
        if a in used or b in used:
            continue
        out.append((a, b))
        used.update((a, b))
        if len(out) == pairs:
            break
    return out


def build_eval_set(clips: Sequence[Clip], seed: int, image_size: int, pairs_per_clip: int,
                   min_gap: int = MIN_EVAL_GAP, selection: EvalSelection = "random",
                   coeff_window: int = 0, previous: bool = False) -> RendererEvalSet:
    """Decode held-out pairs (each clip's frames in one sorted decode).

    Args:
        selection: ``random``: the seeded uniform pairs of :func:`eval_specs`; ``motion``: per clip the
            `pairs_per_clip` pairs with the largest mouth-opening and head-pose differences (:func:`motion_pairs`).
        coeff_window: also build MappingNet's coefficient windows of W frames (0: none).
        previous: also decode each driving frame's predecessor d-1 and the landmarks of (d-1, d) (for CAR / TAVC).
    """
    if pairs_per_clip < 1:
        raise ValueError(f"pairs_per_clip must be >= 1, got {pairs_per_clip}")
    dataset = RendererDataset(clips, seed, image_size, cache_mb=0)
    motion = [frame_motion(dataset.features, clip) for clip in clips]
    if selection == "random":
        specs = eval_specs(clips, seed, pairs_per_clip, min_gap)
    elif selection == "motion":
        mouth_scale, pose_scale = motion_scales(motion)
        specs = []
        for c, (m, p) in enumerate(motion):
            found = motion_pairs(m, p, pairs_per_clip, mouth_scale, pose_scale, min_gap)
            if len(found) < pairs_per_clip:
                raise CorpusError(f"{clips[c].video}: only {len(found)} disjoint pairs {min_gap} frames apart "
                                  f"(clip {clips[c].clip_id}, renderer motion evaluation set)")
            specs += [RendererSampleSpec(c, a, b) for a, b in found]
    else:
        raise ValueError(f"selection must be 'random' or 'motion', got {selection!r}")
    sources, drivings, mels, boxes, d_mouth, d_pose, windows, prevs, roi_lms = [], [], [], [], [], [], [], [], []
    for c, clip in enumerate(clips):
        mine = [s for s in specs if s.clip == c]
        wanted = sorted({f for s in mine for f in (s.source, s.driving) + ((s.driving - 1,) if previous else ())})
        raw = dataset.frame_store.frames(clip, wanted)  # (n, H, W, 3) the preprocessed crop
        scale = image_size / raw.shape[2]
        by_frame = dict(zip(wanted, to_float_image(np.stack([resize_square(f, image_size) for f in raw]))))
        landmarks = dataset.features.get_array(clip, "landmarks")  # (T, 68, 3) in crop px
        m, p = motion[c]
        for s in mine:
            sources.append(by_frame[s.source])
            drivings.append(by_frame[s.driving])
            mels.append(dataset.mels(clip, s.driving))  # (2, 1, 80, 16)
            boxes.append(mouth_box(landmarks[s.driving, MOUTH, :2] * scale, image_size))
            d_mouth.append(abs(m[s.source] - m[s.driving]))
            d_pose.append(float(np.linalg.norm(p[s.source] - p[s.driving])))
            if previous:
                prevs.append(by_frame[s.driving - 1])
                roi_lms.append(crop_to_image_pixels(landmarks[[s.driving - 1, s.driving], :, :2], raw.shape[2],
                                                    image_size))  # (2, 68, 2)
            if coeff_window:
                windows.append(coefficient_windows(dataset.features.get_array(clip, "coeffs"),
                                                   [s.source, s.driving], coeff_window))  # (2, 70, W)
    return RendererEvalSet(
        source=torch.from_numpy(np.stack(sources)), driving=torch.from_numpy(np.stack(drivings)),
        mel=torch.from_numpy(np.stack(mels)),
        clip_ids=np.array([clips[s.clip].clip_id for s in specs]),
        speakers=np.array([clips[s.clip].speaker for s in specs]),
        positions=np.array([(s.source, s.driving) for s in specs], dtype=np.int64),
        mouth_box=np.stack(boxes), mouth_delta=np.asarray(d_mouth, np.float64),
        pose_delta=np.asarray(d_pose, np.float64), selection=selection,
        coeffs=torch.from_numpy(np.stack(windows)) if coeff_window else None,
        previous=torch.from_numpy(np.stack(prevs)) if previous else None,
        roi_landmarks=np.stack(roi_lms).astype(np.float32) if previous else None)


def crop_to_image_pixels(points: np.ndarray, crop_side: int, image_size: int) -> np.ndarray:
    """Points in crop pixels -> the same points in pixels of the crop resized to image_size (both with pixel
    centres at integers)."""
    return (np.asarray(points, np.float64) + 0.5) * (image_size / crop_side) - 0.5


def mouth_box(points: np.ndarray, size: int, margin: float = MOUTH_BOX_MARGIN) -> np.ndarray:
    """(x0, y0, x1, y1) int box (end-exclusive) around (20, 2) mouth points in S px, widened by `margin` of its
    width/height on each side, at least 2 px wide and high, clipped to the image."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * margin
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int) + 1
    x0, y0 = max(0, min(x0, size - 2)), max(0, min(y0, size - 2))
    x1, y1 = min(size, max(x1, x0 + 2)), min(size, max(y1, y0 + 2))
    return np.array([x0, y0, x1, y1], dtype=np.int64)


__all__ = ["RendererDataset", "RendererSampleSpec", "RendererEvalSet", "build_eval_set", "eval_specs", "draw_pair",
           "frame_motion", "crop_to_image_pixels", "motion_pairs", "motion_score", "mouth_box", "to_float_image", "EVAL_STREAM", "MIN_EVAL_GAP"]
