"""The preprocess stage's output as training data: clip records, cached feature files, random-access frames.

Layout read here (written by `pipeline.preprocess`): ``<processed>/manifest.parquet`` (one row per usable clip:
clip_id, speaker, split, clip_path, features_path, frames, ...), ``clips/<id>.mp4`` (cropped, constant 25 fps, so
frame k of the file is video frame k of the features) and ``features/<id>.npz`` (landmarks (T,68,3) in crop pixels,
coeffs (T,73), mel (M,80), mfcc (N,13), fbank (N,26), wav (S,)).

`FeatureStore` and `FrameStore` keep small per-process caches and drop them when pickled, so one instance can be
handed to DataLoader workers (each worker opens its own decord readers).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MOUTH = slice(48, 68)  # 68-point iBUG mouth (outer + inner lip), method.md §1
RIGID = slice(17, 48)  # eyebrows, nose, eyes: the 31 rigid points of MS-Sync's head-motion metric
MOUTH_BOX_PX = 72  # side of the mouth ROI in a 256 crop (method.md §1) ...
MOUTH_ROI_SIZE = 112  # ... resized to 112x112
REFERENCE_CROP = 256  # crop size the 72-px box refers to; other crop sizes scale it


class CorpusError(ValueError):
    """The processed corpus is missing, empty for the requested splits, or inconsistent; names the file."""


@dataclass(frozen=True)
class Clip:
    """One usable clip of the manifest, with absolute paths."""

    clip_id: str
    speaker: str
    split: str
    video: Path
    features: Path
    frames: int


def load_clips(processed: str | os.PathLike[str], splits: Sequence[str] | None = None,
               min_frames: int = 1) -> list[Clip]:
    """Clips of the given splits (all when None) with at least `min_frames` frames, in manifest order.

    Raises:
        CorpusError: no manifest, or no clip left (the message says which splits and how many were too short).
    """
    import pandas as pd

    processed = Path(processed)
    manifest = processed / "manifest.parquet"
    if not manifest.is_file():
        raise CorpusError(f"{manifest}: not found (run the preprocess stage first)")
    df = pd.read_parquet(manifest)
    if splits is not None:
        df = df[df["split"].isin(list(splits))]
    short = int((df["frames"] < min_frames).sum())
    df = df[df["frames"] >= min_frames]
    if df.empty:
        raise CorpusError(f"{manifest}: no clip in split(s) {list(splits) if splits else 'any'} with at least "
                          f"{min_frames} frames ({short} shorter ones skipped)")
    return [Clip(r.clip_id, r.speaker, r.split, processed / r.clip_path, processed / r.features_path, int(r.frames))
            for r in df.itertuples()]


def load_split_clips(processed: str | os.PathLike[str], train_splits: Sequence[str], eval_splits: Sequence[str],
                     min_train_frames: int = 1, min_eval_frames: int | None = None) -> tuple[list[Clip], list[Clip]]:
    """The training clips and the held-out clips of a run, checked to share no speaker.

    Every held-out report of this project is on speakers never trained on; a manifest or a params choice that
    mixes them fails here, before any training.

    Args:
        train_splits / eval_splits: manifest splits of each side.
        min_train_frames / min_eval_frames: shortest usable clip of each side (eval defaults to train's).

    Raises:
        CorpusError: no manifest, no clip on a side, or speakers on both sides (named).
    """
    train = load_clips(processed, train_splits, min_train_frames)
    held = load_clips(processed, eval_splits, min_train_frames if min_eval_frames is None else min_eval_frames)
    shared = sorted({c.speaker for c in train} & {c.speaker for c in held})
    if shared:
        raise CorpusError(f"{Path(processed) / 'manifest.parquet'}: speakers {shared} are in both "
                          f"{list(train_splits)} and {list(eval_splits)}; held-out evaluation needs unseen speakers")
    return train, held


class _PerProcessCache:
    """LRU cache that is emptied when pickled (DataLoader workers rebuild it in their own process)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_items": self.max_items}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_items"])

    def get(self, key: Any, make: Any) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value


class FeatureStore(_PerProcessCache):
    """Feature arrays of clips, loaded once per process: ``store.get_array(clip, "mel")``."""

    def __init__(self, max_items: int = 256) -> None:
        super().__init__(max_items)

    def _arrays(self, clip: Clip) -> dict[str, np.ndarray | None]:
        def load() -> dict[str, np.ndarray | None]:
            try:
                with np.load(clip.features) as z:
                    # The stored mouth ROIs (only the TAVC loader reads them) stay on disk: `get_array` reads
                    # them on request, so other loaders do not hold them.
                    return {k: None if k in STORED_ROI_KEYS else z[k] for k in z.files}
            except (OSError, ValueError) as err:
                raise CorpusError(f"{clip.features}: cannot read feature file ({err})") from err
        return self.get(clip.features, load)

    def has(self, clip: Clip, key: str) -> bool:
        return key in self._arrays(clip)

    def get_arrays(self, clip: Clip, keys: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Several arrays; those kept on disk (`STORED_ROI_KEYS`) are read in one opening of the file, not kept."""
        arrays = self._arrays(clip)
        absent = [k for k in keys if k not in arrays]
        if absent:
            raise CorpusError(f"{clip.features}: no array `{absent[0]}` (has {sorted(arrays)})")
        on_disk = [k for k in keys if arrays[k] is None]
        read: dict[str, np.ndarray] = {}
        if on_disk:
            try:
                with np.load(clip.features) as z:
                    read = {k: z[k] for k in on_disk}
            except (OSError, ValueError) as err:
                raise CorpusError(f"{clip.features}: cannot read {on_disk} ({err})") from err
        return tuple(read[k] if k in read else arrays[k] for k in keys)  # type: ignore[misc]

    def get_array(self, clip: Clip, key: str) -> np.ndarray:
        return self.get_arrays(clip, (key,))[0]


class FrameStore(_PerProcessCache):
    """Random access to frames of the cropped clips through decord (one reader per clip and process)."""

    def __init__(self, max_items: int = 16) -> None:
        super().__init__(max_items)

    def frames(self, clip: Clip, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at `indices` (clamped to the clip) as (n, H, W, 3) uint8 RGB."""
        import decord

        def open_reader() -> Any:
            try:
                return decord.VideoReader(str(clip.video), num_threads=1)
            except (decord.DECORDError, RuntimeError) as err:
                raise CorpusError(f"{clip.video}: cannot open clip ({err})") from err
        vr = self.get(clip.video, open_reader)
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, len(vr) - 1)
        return vr.get_batch(idx.tolist()).asnumpy()  # (n, H, W, 3)


def mouth_roi(frame: np.ndarray, landmarks: np.ndarray, box: float = MOUTH_BOX_PX, size: int = MOUTH_ROI_SIZE,
              reference: int = REFERENCE_CROP) -> np.ndarray:
    """method.md §1 mouth ROI: a `box`-pixel square (for a `reference`-pixel crop; scaled with the actual crop size)
    centred on the median of the 20 mouth landmarks, resized to size x size. Pixels outside the frame repeat the edge.

    Args:
        frame: (H, W, 3) uint8 face crop.
        landmarks: (68, 2+) landmarks of that frame in its pixel coordinates.

    Returns:
        (size, size, 3) uint8.
    """
    import cv2

    side = box * frame.shape[0] / reference
    cx, cy = np.median(landmarks[MOUTH, :2], axis=0)
    s = size / side
    m = np.array([[s, 0.0, size / 2 - s * cx], [0.0, s, size / 2 - s * cy]], dtype=np.float64)  # crop -> roi
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


STORED_ROI_KEYS = ("mouth_roi_jpeg", "mouth_roi_offsets")  # feature-file members of the stored mouth ROIs


def mouth_roi_jpeg(roi: np.ndarray, quality: int) -> np.ndarray:
    """One mouth ROI ((112, 112, 3) uint8 RGB) as JPEG bytes (uint8 array). At quality 95 ~3 KB, ~45 dB PSNR
    against the ROI, 0.05 ms to decode, where a random seek into the cropped clip costs ~6 ms."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(roi[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding of a mouth ROI {roi.shape} failed")
    return buf.reshape(-1)


def pack_jpegs(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """JPEGs (`mouth_roi_jpeg`) as one byte array and the (n + 1,) int64 offsets of each (ROI k is
    ``jpeg[offsets[k]:offsets[k + 1]]``): the feature-file members `STORED_ROI_KEYS`."""
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in parts])
    jpeg = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return jpeg.astype(np.uint8, copy=False), offsets


def decode_mouth_roi(jpeg: np.ndarray, offsets: np.ndarray, frame: int, where: str = "") -> np.ndarray:
    """ROI `frame` of `pack_jpegs`'s arrays as (112, 112, 3) uint8 RGB; `where` names the file in errors."""
    import cv2

    if not 0 <= frame < len(offsets) - 1:
        raise CorpusError(f"{where}: stored mouth ROIs hold {len(offsets) - 1} frames, frame {frame} requested")
    roi = cv2.imdecode(jpeg[offsets[frame]:offsets[frame + 1]], cv2.IMREAD_COLOR)
    if roi is None:
        raise CorpusError(f"{where}: stored mouth ROI of frame {frame} is not a readable JPEG")
    return np.ascontiguousarray(roi[..., ::-1])


def lower_face(frame: np.ndarray, size: int) -> np.ndarray:
    """Lower half of a face crop (Wav2Lip's SyncNet input region) resized to a size x size square (uint8)."""
    import cv2

    h = frame.shape[0]
    half = np.ascontiguousarray(frame[h // 2:])
    return cv2.resize(half, (size, size), interpolation=cv2.INTER_AREA if size < h // 2 else cv2.INTER_LINEAR)


def resize_square(frame: np.ndarray, size: int) -> np.ndarray:
    """Whole crop resized to size x size (uint8)."""
    import cv2

    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if size < frame.shape[0] else cv2.INTER_LINEAR)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    x = np.asarray(images, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
