"""Renderer pretraining samples and evaluation pairs (pipeline/data/renderer.py) on the tiny processed corpus."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pipeline.audio import mel_windows
from pipeline.data.corpus import FeatureStore, FrameStore, load_clips, resize_square
from pipeline.data.renderer import (MIN_EVAL_GAP, RendererDataset, build_eval_set, draw_pair, eval_specs,
                                    to_float_image)
from pipeline.data.sampling import step_loader

S = 32


@pytest.fixture(scope="module")
def clips(processed_corpus):
    return load_clips(processed_corpus, ["train"])


def test_draw_pair_respects_bounds_and_gap() -> None:
    rng = np.random.default_rng(0)
    pairs = [draw_pair(rng, 12, min_gap=5) for _ in range(300)]
    assert all(1 <= d <= 11 and 0 <= s <= 11 and abs(s - d) >= 5 for s, d in pairs)
    assert len(set(pairs)) > 10
    assert all(s != d for s, d in (draw_pair(rng, 2) for _ in range(20)))
    with pytest.raises(ValueError):
        draw_pair(rng, 5, min_gap=5)


def test_samples_shapes_ranges_and_direct_decoding(clips) -> None:
    ds = RendererDataset(clips, seed=3, image_size=S, cache_mb=64)
    item = ds[(0, 0)]
    assert item["source"].shape == (3, S, S) and item["driving"].shape == (3, S, S)
    assert item["source"].dtype == np.float32 and item["mel"].dtype == np.float32
    assert item["mel"].shape == (2, 1, 80, 16)
    for key in ("source", "driving"):
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0
    clip = clips[item["clip"]]
    s, d = item["source_index"], item["driving_index"]
    assert s != d and d >= 1
    frames = FrameStore().frames(clip, [s, d])  # (2, H, W, 3)
    np.testing.assert_array_equal(item["source"], to_float_image(resize_square(frames[0], S)))
    np.testing.assert_array_equal(item["driving"], to_float_image(resize_square(frames[1], S)))
    mel = FeatureStore().get_array(clip, "mel")
    np.testing.assert_array_equal(item["mel"], mel_windows(mel, [d - 1, d])[:, None])
    # the uncached path (decoding only the two frames) gives the same sample
    uncached = RendererDataset(clips, seed=3, image_size=S, cache_mb=0)[(0, 0)]
    for key in ("source", "driving", "mel"):
        np.testing.assert_array_equal(uncached[key], item[key])
    assert uncached["driving_index"] == d


def test_samples_are_keyed(clips) -> None:
    ds = RendererDataset(clips, seed=3, image_size=S, cache_mb=64)
    again = RendererDataset(clips, seed=3, image_size=S, cache_mb=64)
    a, b = ds[(5, 1)], again[(5, 1)]
    for key in ("source", "driving", "mel"):
        np.testing.assert_array_equal(a[key], b[key])
    specs = {(ds.draw(step, slot).clip, ds.draw(step, slot).source, ds.draw(step, slot).driving)
             for step in range(10) for slot in range(4)}
    assert len(specs) > 30  # different keys draw different pairs
    other_seed = RendererDataset(clips, seed=4, image_size=S)
    assert [other_seed.draw(i, 0) for i in range(5)] != [ds.draw(i, 0) for i in range(5)]
    # uniform over clips: every clip is drawn
    assert {ds.draw(step, 0).clip for step in range(60)} == set(range(len(clips)))


def test_cache_is_bounded_and_dropped_when_pickled(clips) -> None:
    one_clip = max(RendererDataset(clips, 0, S).clip_bytes(c) for c in clips)
    budget_mb = (one_clip * 1.5) / 2**20
    ds = RendererDataset(clips, seed=0, image_size=S, cache_mb=1)
    ds.cache.max_bytes = int(budget_mb * 2**20)  # room for one clip only
    for c in clips:
        ds.frames(c, [0, 1])
        assert ds.cache.bytes <= ds.cache.max_bytes
    assert len(ds.cache._items) == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cache.bytes == 0 and not clone.cache._items
    assert clone.cache.max_bytes == ds.cache.max_bytes


def test_worker_samples_match_in_process(clips) -> None:
    ds = RendererDataset(clips, seed=1, image_size=S, cache_mb=64)
    loader = step_loader(ds, batch_size=3, start=2, stop=4, workers=1)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["source"].shape == (3, 3, S, S) and batches[0]["mel"].shape == (3, 2, 1, 80, 16)
    for step, batch in zip(range(2, 4), batches):
        for slot in range(3):
            item = ds[(step, slot)]
            assert torch.equal(batch["driving"][slot], torch.from_numpy(item["driving"]))
            assert torch.equal(batch["source"][slot], torch.from_numpy(item["source"]))
            assert int(batch["driving_index"][slot]) == item["driving_index"]


def test_eval_set_is_fixed_and_scaled(clips) -> None:
    a = build_eval_set(clips, seed=0, image_size=S, pairs_per_clip=2)
    b = build_eval_set(clips, seed=0, image_size=S, pairs_per_clip=2)
    n = 2 * len(clips)
    assert len(a) == n
    assert a.source.shape == (n, 3, S, S) and a.driving.shape == (n, 3, S, S)
    assert a.mel.shape == (n, 2, 1, 80, 16)
    assert a.positions.shape == (n, 2) and a.clip_ids.shape == (n,) and a.speakers.shape == (n,)
    assert torch.equal(a.source, b.source) and torch.equal(a.driving, b.driving) and torch.equal(a.mel, b.mel)
    assert np.all(np.abs(a.positions[:, 0] - a.positions[:, 1]) >= MIN_EVAL_GAP)
    assert np.all(a.positions[:, 1] >= 1)
    assert list(a.clip_ids) == [c.clip_id for c in clips for _ in range(2)]
    assert 0 <= float(a.source.min()) and float(a.source.max()) <= 1
    # the pairs do not depend on the image size
    big = build_eval_set(clips, seed=0, image_size=2 * S, pairs_per_clip=2)
    np.testing.assert_array_equal(big.positions, a.positions)
    # against direct decoding of the clip
    clip = clips[0]
    s, d = a.positions[0]
    frame = FrameStore().frames(clip, [d])[0]
    np.testing.assert_array_equal((a.driving[0].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0),
                                  resize_square(frame, S))
    # the eval pairs are not the training draws of the same seed
    assert eval_specs(clips, 0, 2) != [RendererDataset(clips, 0, S).draw(0, slot) for slot in range(n)]
    # different seed, different pairs
    assert not np.array_equal(build_eval_set(clips, seed=1, image_size=S, pairs_per_clip=2).positions, a.positions)


def test_augmentation_is_shared_by_the_pair_keyed_and_flips_half_the_time():
    from pipeline.data.renderer import augment_pair

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    pair = np.stack([frame, frame])
    out = augment_pair(pair, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == pair.shape
    assert np.array_equal(out[0], out[1])  # one transform for source and driving
    assert np.array_equal(out, augment_pair(pair, np.random.default_rng(5)))  # keyed
    assert not np.array_equal(out, pair)
    flips = 0
    for k in range(40):
        a = augment_pair(pair, np.random.default_rng(k), jitter=0.0)  # jitter 0: only the flip remains
        flipped = np.abs(a[0].astype(int) - frame[:, ::-1].astype(int)).max() <= 1
        same = np.abs(a[0].astype(int) - frame.astype(int)).max() <= 1
        assert flipped or same
        flips += flipped
    assert 8 <= flips <= 32
