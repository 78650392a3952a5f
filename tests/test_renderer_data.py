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
    out, _ = augment_pair(pair, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == pair.shape
    assert np.array_equal(out[0], out[1])  # one transform for source and driving
    assert np.array_equal(out, augment_pair(pair, np.random.default_rng(5))[0])  # keyed
    assert not np.array_equal(out, pair)
    flips = 0
    for k in range(40):
        a, reported = augment_pair(pair, np.random.default_rng(k), jitter=0.0)  # jitter 0: only the flip remains
        flipped = np.abs(a[0].astype(int) - frame[:, ::-1].astype(int)).max() <= 1
        same = np.abs(a[0].astype(int) - frame.astype(int)).max() <= 1
        assert flipped or same
        assert reported == flipped
        flips += flipped
    assert 8 <= flips <= 32


def test_motion_pairs_take_the_largest_differences_without_reusing_frames() -> None:
    from pipeline.data.renderer import motion_pairs

    mouth = np.zeros(20)
    mouth[[3, 15]] = 1.0  # two open-mouth frames
    pose = np.zeros((20, 3))
    pose[10] = [20.0, 0.0, 0.0]  # one turned head
    pairs = motion_pairs(mouth, pose, 3, mouth_scale=1.0, pose_scale=10.0, min_gap=5)
    frames = [f for p in pairs for f in p]
    assert len(pairs) == 3 and len(set(frames)) == 6
    assert all(abs(s - d) >= 5 and d >= 1 for s, d in pairs)
    assert {3, 15, 10} <= set(frames)  # every open mouth and the turned head are in a pair
    score = lambda s, d: abs(mouth[s] - mouth[d]) + np.linalg.norm(pose[s] - pose[d]) / 10.0  # noqa: E731
    assert score(*pairs[0]) >= score(*pairs[1]) > score(*pairs[2]) == 0  # only three frames move
    assert motion_pairs(mouth, pose, 3, 1.0, 10.0, 5) == pairs  # deterministic


def test_mouth_box_covers_the_points_with_a_margin_inside_the_image() -> None:
    from pipeline.data.renderer import mouth_box

    pts = np.array([[10.0, 20.0], [20.0, 24.0]])
    x0, y0, x1, y1 = mouth_box(pts, 32, margin=0.3)
    assert x0 <= 7 and y0 <= 18.8 and x1 >= 23 and y1 >= 25.2
    assert (x0, y0) >= (0, 0) and (x1, y1) <= (32, 32)
    assert tuple(mouth_box(np.array([[31.0, 31.0], [31.5, 31.5]]), 32)) == (30, 30, 32, 32)


def test_motion_eval_set_has_larger_differences_than_the_uniform_one(clips) -> None:
    uniform = build_eval_set(clips, seed=0, image_size=S, pairs_per_clip=2)
    motion = build_eval_set(clips, seed=0, image_size=S, pairs_per_clip=2, selection="motion")
    assert motion.selection == "motion" and len(motion) == len(uniform) == 2 * len(clips)
    assert motion.mouth_delta.mean() + motion.pose_delta.mean() / 10 > \
        uniform.mouth_delta.mean() + uniform.pose_delta.mean() / 10
    assert (np.abs(motion.positions[:, 0] - motion.positions[:, 1]) >= MIN_EVAL_GAP).all()
    box = motion.mouth_box
    assert ((box[:, 0] < box[:, 2]) & (box[:, 1] < box[:, 3]) & (box[:, 2] <= S) & (box[:, 3] <= S)).all()
    assert (box[:, 1] > S // 3).all()  # the mouth is in the lower part of the face crop
    with pytest.raises(ValueError, match="selection"):
        build_eval_set(clips, seed=0, image_size=S, pairs_per_clip=2, selection="largest")


def test_samples_carry_the_preprocessing_pose_mirrored_with_a_flip(clips) -> None:
    plain = RendererDataset(clips, seed=3, image_size=S, cache_mb=64)
    spec = plain.draw(0, 0)
    coeffs = FeatureStore().get_array(clips[spec.clip], "coeffs")
    expected = np.degrees(coeffs[[spec.source, spec.driving], 64:67]).astype(np.float32)
    np.testing.assert_allclose(plain[(0, 0)]["pose"], expected, rtol=1e-6)
    augmented = RendererDataset(clips, seed=3, image_size=S, cache_mb=64, augment=True)
    signs = set()
    for slot in range(12):
        spec = augmented.draw(0, slot)
        coeffs = FeatureStore().get_array(clips[spec.clip], "coeffs")
        raw = np.degrees(coeffs[[spec.source, spec.driving], 64:67])
        got = augmented[(0, slot)]["pose"]
        np.testing.assert_allclose(np.abs(got), np.abs(raw), rtol=1e-5)
        np.testing.assert_allclose(got[:, 1], raw[:, 1], rtol=1e-5)  # pitch never changes sign
        signs.add(bool(np.allclose(got, raw, rtol=1e-5)))
    assert signs == {True, False}  # some samples flipped (yaw, roll negated), some not


def test_motion_pair_sampling_prefers_different_frames_and_stays_keyed(clips) -> None:
    from pipeline.data.renderer import frame_motion, motion_scales, motion_score

    uniform = RendererDataset(clips, seed=3, image_size=S, cache_mb=0)
    motion = RendererDataset(clips, seed=3, image_size=S, cache_mb=0, pair_sampling="motion")
    tables = [frame_motion(FeatureStore(), c) for c in clips]
    scales = motion_scales(tables)

    def mean_score(ds):
        specs = [ds.draw(step, slot) for step in range(40) for slot in range(4)]
        assert all(s.source != s.driving for s in specs)
        return np.mean([motion_score(*tables[s.clip], s.source, s.driving, *scales) for s in specs])

    assert mean_score(motion) > 1.3 * mean_score(uniform)
    assert motion.draw(7, 2) == motion.draw(7, 2)
    same_driving = [(uniform.draw(k, 0).driving, motion.draw(k, 0).driving) for k in range(10)]
    assert all(a == b for a, b in same_driving)  # only the source choice changes
    with pytest.raises(ValueError, match="pair_sampling"):
        RendererDataset(clips, seed=3, image_size=S, pair_sampling="largest")


def test_samples_carry_the_preprocessing_landmarks_scaled_and_mirrored_with_a_flip(clips) -> None:
    from pipeline.data.renderer import crop_to_image_pixels
    from pipeline.faces.landmarks import MIRROR_68

    plain = RendererDataset(clips, seed=3, image_size=S, cache_mb=64)
    spec = plain.draw(0, 0)
    sample = plain[(0, 0)]
    crop = FrameStore().frames(clips[spec.clip], [0]).shape[2]
    raw = FeatureStore().get_array(clips[spec.clip], "landmarks")[[spec.source, spec.driving], :, :2]
    assert sample["landmarks"].shape == (2, 68, 2) and sample["landmarks"].dtype == np.float32
    np.testing.assert_allclose(sample["landmarks"], (raw + 0.5) * S / crop - 0.5, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(crop_to_image_pixels(np.array([[-0.5, crop - 0.5]]), crop, S), [[-0.5, S - 0.5]])
    augmented = RendererDataset(clips, seed=3, image_size=S, cache_mb=64, augment=True)
    flips = set()
    for slot in range(12):
        spec = augmented.draw(0, slot)
        raw = FeatureStore().get_array(clips[spec.clip], "landmarks")[[spec.source, spec.driving], :, :2]
        expected = (raw + 0.5) * S / crop - 0.5
        got = augmented[(0, slot)]
        pose = np.degrees(FeatureStore().get_array(clips[spec.clip], "coeffs")[[spec.source, spec.driving], 64:67])
        flipped = not np.allclose(got["pose"], pose, rtol=1e-5)  # the pose tells whether the pair was mirrored
        if flipped:  # mirrored about the image's vertical axis, same as the pixels, and relabelled: index i still
            # names the same facial point (the keypoint anchors rely on it)
            expected = (expected * [-1.0, 1.0] + [S - 1.0, 0.0])[:, list(MIRROR_68)]
            assert (got["landmarks"][:, 48, 0] < got["landmarks"][:, 54, 0]).all()  # subject's right corner: left
        np.testing.assert_allclose(got["landmarks"], expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(got["landmarks"][..., 1], ((raw[..., 1] + 0.5) * S / crop - 0.5)[
            :, list(MIRROR_68) if flipped else slice(None)], rtol=1e-5, atol=1e-4)  # y never changes
        flips.add(flipped)
    assert flips == {True, False}


def test_samples_carry_mapping_windows_and_the_flip_can_be_switched_off(clips) -> None:
    from pipeline.faces.coeffs import coefficient_windows

    ds = RendererDataset(clips, seed=3, image_size=S, cache_mb=64, augment=True, coeff_window=9, flip=False)
    colour_only = RendererDataset(clips, seed=3, image_size=S, cache_mb=64, augment=True, coeff_window=9)
    for slot in range(8):
        spec = ds.draw(0, slot)
        coeffs = FeatureStore().get_array(clips[spec.clip], "coeffs")
        got = ds[(0, slot)]
        assert got["coeffs"].shape == (2, 70, 9) and got["coeffs"].dtype == np.float32
        np.testing.assert_array_equal(got["coeffs"], coefficient_windows(coeffs, [spec.source, spec.driving], 9))
        np.testing.assert_allclose(got["pose"], np.degrees(coeffs[[spec.source, spec.driving], 64:67]), rtol=1e-5)
        other = colour_only[(0, slot)]
        if not np.allclose(other["pose"], got["pose"], rtol=1e-5):  # that dataset flipped this sample
            np.testing.assert_allclose(other["coeffs"][:, [64, 66, 67]], -got["coeffs"][:, [64, 66, 67]])
            np.testing.assert_array_equal(other["coeffs"][:, :64], got["coeffs"][:, :64])
        else:  # same draw, same colour jitter: the flip switch does not shift the random stream
            np.testing.assert_array_equal(other["source"], got["source"])
    assert "coeffs" not in RendererDataset(clips, seed=3, image_size=S, cache_mb=0)[(0, 0)]
    data = build_eval_set(clips, seed=3, image_size=S, pairs_per_clip=2, coeff_window=9)
    assert data.coeffs.shape == (len(data), 2, 70, 9)
    c = data.positions[0]
    np.testing.assert_array_equal(data.coeffs[0].numpy(), coefficient_windows(
        FeatureStore().get_array(next(x for x in clips if x.clip_id == data.clip_ids[0]), "coeffs"), c, 9))
    assert build_eval_set(clips, seed=3, image_size=S, pairs_per_clip=2).coeffs is None

