"""Corpus access for training: manifest records, cached features, decord frames, mouth ROI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import corpus


def test_load_clips_by_split(processed_corpus: Path) -> None:
    clips = corpus.load_clips(processed_corpus)
    assert {c.split for c in clips} == {"train", "val", "test"}
    train = corpus.load_clips(processed_corpus, ["train"])
    assert train and all(c.split == "train" and c.video.is_file() and c.features.is_file() for c in train)
    assert not {c.speaker for c in train} & {c.speaker for c in corpus.load_clips(processed_corpus, ["val", "test"])}
    with pytest.raises(corpus.CorpusError, match="at least 100000 frames"):
        corpus.load_clips(processed_corpus, ["train"], min_frames=100_000)
    with pytest.raises(corpus.CorpusError, match="manifest.parquet: not found"):
        corpus.load_clips(processed_corpus / "nowhere")


def test_frames_features_and_pickling(processed_corpus: Path) -> None:
    clip = corpus.load_clips(processed_corpus)[0]
    frames, feats = corpus.FrameStore(), corpus.FeatureStore()
    out = frames.frames(clip, [0, 3, 10_000])  # past the end is clamped to the last frame
    assert out.shape == (3, 128, 128, 3) and out.dtype == np.uint8
    assert np.array_equal(out[2], frames.frames(clip, [clip.frames - 1])[0])
    lms = feats.get_array(clip, "landmarks")
    assert lms.shape == (clip.frames, 68, 3)
    with pytest.raises(corpus.CorpusError, match="no array `nope`"):
        feats.get_array(clip, "nope")
    clone = pickle.loads(pickle.dumps(frames))  # workers get an empty cache, not a decord reader
    assert np.array_equal(clone.frames(clip, [3])[0], out[1])


def test_mouth_roi_is_centred_on_the_mouth() -> None:
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[150:170, 100:140] = 255  # a white "mouth" box centred at (120, 160)
    lms = np.zeros((68, 3), np.float32)
    lms[corpus.MOUTH, 0] = np.linspace(100, 140, 20)
    lms[corpus.MOUTH, 1] = 160
    roi = corpus.mouth_roi(frame, lms)
    assert roi.shape == (112, 112, 3)
    ys, xs = np.nonzero(roi[..., 0] > 127)
    assert abs(xs.mean() - 55.5) < 2 and abs(ys.mean() - 55.5) < 2
    assert 55 < xs.max() - xs.min() < 70  # 40 px of a 72-px box -> ~62 px of 112
    half = corpus.mouth_roi(frame[::2, ::2].copy(), lms / 2)  # a 128 crop: the box scales with the crop
    assert abs(int((half[..., 0] > 127).sum()) - int((roi[..., 0] > 127).sum())) < 400


def test_lower_face_and_unit_range() -> None:
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[32:] = 200
    low = corpus.lower_face(frame, 48)
    assert low.shape == (48, 48, 3) and (low == 200).all()
    x = corpus.to_unit_range(np.stack([frame, frame]))
    assert x.shape == (2, 3, 64, 64) and x.min() == -1.0 and x.max() == pytest.approx(200 / 127.5 - 1)
