"""MS-Sync syncers: pyramid operator, features, model, losses, keyed windows, training, resume and the stage."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.data.corpus import RIGID, CorpusError
from pipeline.data.sampling import seed_everything
from pipeline.data.syncers import ClipStreams, SyncerWindows, audio_features, motion_features
from pipeline.losses.syncers import InfoNCELoss, MultiScaleSyncLoss, TripletLoss, load_pyramid
from pipeline.models.syncer import Syncer, SyncerConfig, load_syncers
from pipeline.pyramid import build_pyramid, level_length, level_windows, pool
from pipeline.tracking import NullTracker
from pipeline.train.syncers import (OffsetEvalConfig, PyramidConfig, RigidConfig, SyncerSize, TrainSyncersConfig,
                                    build_syncers, compare_offsets, make_loss, syncer_specs, train_syncers)

# ---------------------------------------------------------------------------------------------------------------
# Pyramid (MS-Sync Eq. 5)
# ---------------------------------------------------------------------------------------------------------------


def test_pool_known_values_and_edges():
    x = np.arange(10, dtype=np.float64)[:, None]  # (T, 1)
    y = pool(x)[:, 0]
    # t = 1 is centred on sample 2: indices -1..5 clamped -> 0, 0, 1, 2, 3, 4, 5
    assert y[1] == pytest.approx(15 / 7)
    # t = 0: indices -3..3 clamped -> 0, 0, 0, 0, 1, 2, 3
    assert y[0] == pytest.approx(6 / 7)
    # an interior sample of a ramp is the ramp at the centre 2t
    assert y[3] == pytest.approx(6.0)
    # last (t = 4, centre 8): 5, 6, 7, 8, 9, 9, 9
    assert y[4] == pytest.approx(53 / 7)


@pytest.mark.parametrize("length", [1, 7, 50, 101])
def test_constant_stays_constant_and_length_halves(length):
    x = np.full((length, 3), 2.5, dtype=np.float32)
    pyr = build_pyramid(x, 4)
    for i, level in enumerate(pyr, start=1):
        assert level.shape == (level_length(length, i), 3)
        assert level.dtype == np.float32
        np.testing.assert_allclose(level, 2.5, rtol=0, atol=1e-6)
    assert [len(p) for p in build_pyramid(np.zeros((100, 1)), 4)] == [100, 50, 25, 13]


def test_sinusoid_above_cutoff_is_attenuated_below_is_kept():
    t = np.arange(400, dtype=np.float64)

    def gain(period: float) -> float:
        x = np.sin(2 * np.pi * t / period)[:, None]
        y = pool(x)[10:-10, 0]  # away from the edges
        return float(np.abs(y).max())

    assert gain(2.5) < 0.1  # 0.4 cycles/sample: above the new Nyquist (0.25), must not alias through
    assert gain(3.0) < 0.2
    assert gain(64.0) > 0.9  # slow motion passes


def test_pool_torch_matches_numpy_on_any_axis_and_backprops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 37, 5)).astype(np.float32)  # (B, T, C)
    ref = np.stack([pool(xi) for xi in x])
    xt = torch.tensor(x, requires_grad=True)
    out = pool(xt, dim=1)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6)
    out_ct = pool(xt.transpose(1, 2), dim=-1)  # (B, C, T)
    np.testing.assert_allclose(out_ct.transpose(1, 2).detach().numpy(), ref, atol=1e-6)
    out.sum().backward()
    assert xt.grad is not None and torch.all(xt.grad >= 0) and xt.grad.sum() > 0


def test_level_windows_pair_step_t_with_rows_4t():
    motion = np.arange(12, dtype=np.float32)[:, None].repeat(2, 1)  # value = step
    audio = (np.arange(48, dtype=np.float32) / 4)[:, None].repeat(3, 1)  # value = row / 4
    a, m = level_windows(audio, motion, window=5)
    assert a.shape == (8, 3, 20) and m.shape == (8, 2, 5)
    np.testing.assert_array_equal(m[:, 0, 0], np.arange(8))
    np.testing.assert_array_equal(a[:, 0, 0] * 4, 4 * np.arange(8))
    at, mt = level_windows(torch.from_numpy(audio)[None], torch.from_numpy(motion)[None], window=5)
    np.testing.assert_array_equal(at[0].numpy(), a)
    np.testing.assert_array_equal(mt[0].numpy(), m)
    with pytest.raises(ValueError, match="shorter than one window"):
        level_windows(audio[:12], motion[:4], window=5)


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------


def _landmarks(rng: np.random.Generator, t: int = 30) -> np.ndarray:
    base = rng.uniform(40, 90, (68, 3))
    base[36, :2], base[45, :2] = (45, 60), (85, 60)
    return (base[None] + rng.normal(0, 1.0, (t, 68, 3))).astype(np.float32)


def test_motion_features_remove_position_and_face_size(rng):
    lm = _landmarks(rng)
    f = motion_features(lm)
    assert f.shape == (30, 136) and f.dtype == np.float32
    np.testing.assert_allclose(f.mean(0), 0, atol=1e-5)
    moved = lm.copy()
    moved[..., :2] = 1.7 * lm[..., :2] + np.array([13.0, -4.0])  # larger face elsewhere in the crop
    np.testing.assert_allclose(motion_features(moved), f, atol=1e-4)
    rigid = motion_features(lm, RIGID)
    assert rigid.shape == (30, 62)
    np.testing.assert_allclose(rigid, f[:, 34:96])  # points 17..47, point-major x, y
    with pytest.raises(ValueError, match="68"):
        motion_features(lm[:, :60])


def test_audio_features_gain_invariant_and_floored(rng):
    fb = rng.normal(-8, 3, (200, 26))
    fb[:20] = -36.04  # digital silence
    a = audio_features(fb)
    np.testing.assert_allclose(audio_features(fb + 5.0), a, atol=1e-5)  # a gain is an offset in the log domain
    assert abs(float(a.mean())) < 1e-5 and float(a.std()) == pytest.approx(1.0, abs=1e-4)
    assert np.unique(a[:20]).size == 1  # the floor


# ---------------------------------------------------------------------------------------------------------------
# Model and losses
# ---------------------------------------------------------------------------------------------------------------


def test_syncer_shapes_and_cosine():
    torch.manual_seed(0)
    cfg = SyncerConfig(motion_channels=62, hidden=4, embed_dim=8)
    s = Syncer(cfg)
    audio, motion = torch.randn(3, 26, 20), torch.randn(3, 7, 62, 5)
    scores = s(audio, motion)
    assert scores.shape == (3, 7)
    assert torch.all(scores.abs() <= 1 + 1e-6)
    e = s.motion(motion[:, 0])
    assert e.shape == (3, 8)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(scores[:, 0], (s.audio(audio) * e).sum(1))
    with pytest.raises(AssertionError):
        s(torch.randn(3, 26, 16), motion)


def test_infonce_minimum_at_perfect_alignment_and_swap_raises():
    n, tau = 12, 0.5
    loss = InfoNCELoss(tau)
    aligned = torch.tensor([[1.0] + [-1.0] * n])
    assert float(loss(aligned)) == pytest.approx(math.log(1 + n * math.exp(-2 / tau)), rel=1e-5)
    rng = torch.Generator().manual_seed(0)
    others = torch.rand(64, 1 + n, generator=rng) * 2 - 1  # any other cosines
    per_row = torch.stack([loss(o[None]) for o in others])
    assert float(loss(aligned)) < float(per_row.min())
    swapped = aligned.clone()
    swapped[0, [0, 3]] = swapped[0, [3, 0]]
    assert float(loss(swapped)) > float(loss(aligned)) + 1.0
    with pytest.raises(ValueError):
        InfoNCELoss(0.0)


@pytest.mark.parametrize("reference", [None, 1.0])
def test_triplet_zero_when_separated_and_swap_raises(reference):
    loss = TripletLoss(margin=0.2, reference=reference)
    aligned = torch.tensor([[1.0, -1.0, 0.0]])  # d+ = 0, d- = 2 and sqrt(2)
    assert float(loss(aligned)) == pytest.approx(0.0, abs=1e-3)
    swapped = torch.tensor([[-1.0, 1.0, 0.0]])
    assert float(loss(swapped)) > 1.0
    s = torch.tensor([[-0.2, 0.3]], requires_grad=True)  # violates the margin
    loss(s).backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]  # raise the positive score, lower the negative one


def test_triplet_reference_pushes_positive_distance_below_one():
    # the pair is separated by the margin but the in-sync distance is above 1 (cosine < 0.5)
    scores = torch.tensor([[0.1, -0.9]])
    assert float(TripletLoss(0.2)(scores)) == pytest.approx(0.0, abs=1e-6)
    assert float(TripletLoss(0.2, reference=1.0)(scores)) > 0.1


def _tiny_syncers(levels: int, channels: int) -> list[Syncer]:
    torch.manual_seed(0)
    return [Syncer(SyncerConfig(motion_channels=channels, hidden=4, embed_dim=8)) for _ in range(levels)]


def test_multiscale_loss_matches_eq7_and_flows_only_into_motion():
    syncers = _tiny_syncers(3, 6)
    loss = MultiScaleSyncLoss(syncers)
    rng = np.random.default_rng(0)
    audio = torch.tensor(rng.standard_normal((2, 160, 26)), dtype=torch.float32)
    motion = torch.tensor(rng.standard_normal((2, 40, 6)), dtype=torch.float32, requires_grad=True)
    terms = loss.terms(audio, motion)
    assert len(terms) == 3
    # level 2 by hand: pyramid, every window, -mean cosine
    a2 = pool(audio, dim=1)
    x2 = pool(motion, dim=1)
    scores = [syncers[1](a2[b:b + 1, 4 * t:4 * t + 20].transpose(1, 2), x2[b:b + 1, t:t + 5].transpose(1, 2)[:, None])
              for b in range(2) for t in range(x2.shape[1] - 4)]
    assert float(terms[1].detach()) == pytest.approx(-float(torch.cat(scores).detach().mean()), abs=1e-5)
    total = loss(audio, motion)
    assert float(total.detach()) == pytest.approx(sum(float(t.detach()) for t in terms), abs=1e-5)
    assert -3.0 <= float(total.detach()) <= 3.0
    total.backward()
    assert motion.grad is not None and motion.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not any(s.training for s in loss.syncers)
    with pytest.raises(ValueError, match="level 3"):
        loss(audio[:, :40], motion[:, :10])


# ---------------------------------------------------------------------------------------------------------------
# Keyed windows
# ---------------------------------------------------------------------------------------------------------------


def _indexed_streams(lengths: list[int], speakers: list[str]) -> list[ClipStreams]:
    """motion[t] = (t, clip), audio[r] = (r / 4, clip): windows reveal where they were cut."""
    out = []
    for c, (n, spk) in enumerate(zip(lengths, speakers)):
        motion = np.stack([np.arange(n), np.full(n, c)], 1).astype(np.float32)
        audio = np.stack([np.arange(4 * n) / 4, np.full(4 * n, c)], 1).astype(np.float32)
        out.append(ClipStreams(f"c{c}", spk, (audio,), (motion,)))
    return out


def test_windows_same_clip_hard_negatives_are_far_and_deterministic():
    streams = _indexed_streams([30, 12, 40], ["a", "a", "b"])
    ds = SyncerWindows(streams, level=1, window=5, negatives=12, min_offset=3, negatives_from="same_clip", seed=7)
    for slot in range(50):
        audio, motion = ds[(3, slot)]
        assert audio.shape == (2, 20) and motion.shape == (13, 2, 5)
        t, clip = motion[0, 0, 0], motion[0, 1, 0]
        assert audio[0, 0] == t and audio[1, 0] == clip  # audio rows 4t.. of the same clip
        assert np.all(motion[1:, 1, 0] == clip)
        assert np.all(np.abs(motion[1:, 0, 0] - t) >= 3)
    a1, m1 = ds[(5, 2)]
    a2, m2 = ds[(5, 2)]
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, ds[(5, 3)][1])


def test_windows_cross_clip_negatives_stay_with_the_speaker():
    streams = _indexed_streams([30, 30, 30, 30], ["a", "a", "b", "b"])
    ds = SyncerWindows(streams, level=1, window=5, negatives=8, min_offset=0, negatives_from="same_speaker", seed=0)
    for slot in range(30):
        _, motion = ds[(1, slot)]
        clip = int(motion[0, 1, 0])
        partner = {0: 1, 1: 0, 2: 3, 3: 2}[clip]
        assert np.all(motion[1:, 1, 0] == partner)
    any_ds = SyncerWindows(streams, 1, 5, 8, 0, "any_clip", 0)
    seen = {int(v) for slot in range(30) for v in any_ds[(1, slot)][1][1:, 1, 0]}
    assert len(seen) == 4
    with pytest.raises(CorpusError, match="level 1"):
        SyncerWindows(streams[:1], 1, 5, 8, 0, "any_clip", 0)


def test_compare_offsets_one_sided():
    gt, rnd = np.zeros(10), np.arange(30) % 12 + 2.0
    assert compare_offsets(gt, rnd)["p_value"] < 1e-4
    assert compare_offsets(gt, rnd)["gt_better"]
    assert compare_offsets(rnd, gt)["p_value"] > 0.5


# ---------------------------------------------------------------------------------------------------------------
# Training, checkpoint and resume on the tiny corpus
# ---------------------------------------------------------------------------------------------------------------

TINY = TrainSyncersConfig(
    model=SyncerSize(hidden=8, embed_dim=16),
    pyramid=PyramidConfig(levels=4, steps=60, negatives=4, coarse_negatives=6, coarse_negatives_from="same_speaker",
                          min_offset=2, temperature=0.1),
    rigid=RigidConfig(levels=3, steps=60, negatives=1, min_offset=2, margin=0.2, padding_negative=True),
    evaluation=OffsetEvalConfig(sequence_frames=40, stride_frames=20, vshift=5, random_draws=2),
    window=5, batch_size=8, lr=3.0e-3, weight_decay=1.0e-4, train_splits=("train",), eval_splits=("val", "test"),
    eval_samples=32, log_every=10, eval_every=30, checkpoint_every=30, workers=0, threads=1)


class Interrupt(RuntimeError):
    pass


class InterruptingTracker(NullTracker):
    """Raises when the loop logs `at` (a kill between two checkpoints)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def log_metrics(self, metrics, step=None):
        if step == self.at:
            raise Interrupt(f"killed at step {step}")
        super().log_metrics(metrics, step)


@pytest.fixture(scope="module")
def trained(processed_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("syncers")
    tracker = NullTracker()
    result = train_syncers(TINY, 0, processed=processed_corpus, out=out, reports=out / "reports", tracker=tracker,
                           progress=False)
    return out, result, tracker


def _train_batch_losses(model, processed, cfg):
    """Loss of every syncer on one fixed batch of training windows."""
    from pipeline.data.corpus import load_clips
    from pipeline.data.syncers import load_streams
    from pipeline.train.syncers import FAMILY_POINTS

    clips = load_clips(processed, cfg.train_splits, 33)
    out = {}
    for spec in syncer_specs(cfg):
        streams = load_streams(clips, FAMILY_POINTS[spec.family], cfg.pyramid.levels)
        ds = SyncerWindows(streams, spec.level, cfg.window, spec.negatives, spec.min_offset, spec.negatives_from, 99)
        items = [ds[(0, k)] for k in range(64)]
        audio = torch.from_numpy(np.stack([a for a, _ in items]))
        motion = torch.from_numpy(np.stack([m for _, m in items]))
        with torch.no_grad():
            out[spec.name] = float(make_loss(spec, cfg)(model[spec.name](audio, motion)))
    return out


def test_short_training_lowers_every_loss(trained, processed_corpus):
    out, result, tracker = trained
    seed_everything(0)
    before = _train_batch_losses(build_syncers(TINY), processed_corpus, TINY)
    model = build_syncers(TINY)
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt", "syncers")["model"])
    after = _train_batch_losses(model, processed_corpus, TINY)
    assert set(before) == {"ms1", "ms2", "ms3", "ms4", "rigid1", "rigid2", "rigid3"}
    for name in before:
        assert after[name] < before[name], f"{name}: {before[name]:.3f} -> {after[name]:.3f}"
    assert result.trained_steps == 7 * 60
    assert "ms1_loss" in tracker.metrics and "rigid3_val_acc" in tracker.metrics


def test_metrics_report_table2(trained):
    _, result, _ = trained
    m = result.metrics
    assert set(m["windows"]) == {"ms1", "ms2", "ms3", "ms4", "rigid1", "rigid2", "rigid3"}
    assert m["windows"]["ms4"]["chance"] == pytest.approx(1 / 7)
    assert set(m["rigid_offset"]) == {"200ms", "400ms", "800ms"}
    assert set(m["ms_offset"]) == {"200ms", "400ms", "800ms", "1600ms"}
    cell = m["rigid_offset"]["200ms"]
    assert cell["n_random"] == 2 * cell["n_gt"] > 0
    assert 0 <= cell["gt_mean"] <= TINY.evaluation.vshift and 0 <= cell["p_value"] <= 1
    # metric sanity: every cell says whether it recognises ground truth; the report's status follows the rigid cells
    assert cell["domain"]["status"] in ("in_domain", "out_of_domain") and cell["domain"]["clips"] == cell["n_gt"]
    assert m["status"] == ("in_domain" if all(c["domain"]["status"] == "in_domain" for c in m["rigid_offset"].values())
                           else "out_of_domain")
    json.dumps(m)  # JSON-able


def test_checkpoint_round_trip(trained):
    out, _, _ = trained
    state = load_checkpoint(out / "checkpoint.pt", "syncers")
    assert state["step"] == 7 * 60
    syncers = load_syncers(out / "checkpoint.pt")
    assert set(syncers) == {"ms1", "ms2", "ms3", "ms4", "rigid1", "rigid2", "rigid3"}
    assert syncers["rigid2"].cfg.motion_channels == 62 and syncers["ms1"].cfg.motion_channels == 136
    torch.testing.assert_close(syncers["ms3"].motion.proj.weight, state["model"]["ms3.motion.proj.weight"])
    loss = load_pyramid(out / "checkpoint.pt")
    assert len(loss.syncers) == 4
    value = loss(torch.randn(1, 160, 26), torch.randn(1, 40, 136))
    assert -4.0 <= float(value) <= 4.0


def test_resume_after_kill_gives_the_same_weights(trained, processed_corpus, tmp_path):
    out, result, _ = trained
    with pytest.raises(Interrupt):
        train_syncers(TINY, 0, processed=processed_corpus, out=tmp_path, reports=tmp_path / "r",
                      tracker=InterruptingTracker(100), progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt", "syncers")["step"] == 90  # mid ms2
    resumed = train_syncers(TINY, 0, processed=processed_corpus, out=tmp_path, reports=tmp_path / "r",
                            tracker=NullTracker(), progress=False)
    assert resumed.trained_steps == 7 * 60 - 90
    a = load_checkpoint(out / "checkpoint.pt", "syncers")["model"]
    b = load_checkpoint(tmp_path / "checkpoint.pt", "syncers")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["step"] for r in resumed.history.rows] == [r["step"] for r in result.history.rows]
    # complete checkpoint: evaluate only; other params: train from scratch
    again = train_syncers(TINY, 0, processed=processed_corpus, out=tmp_path, reports=tmp_path / "r",
                          tracker=NullTracker(), progress=False)
    assert again.trained_steps == 0
    assert again.metrics["rigid_offset"] == result.metrics["rigid_offset"]
    # other params: train from scratch. Without the rigid phases the ms syncers must come out identical, i.e. a
    # later phase never touches an earlier syncer (AdamW skips parameters without a gradient, weight decay too).
    import dataclasses
    no_rigid = dataclasses.replace(TINY, rigid=dataclasses.replace(TINY.rigid, steps=0))
    assert train_syncers(no_rigid, 0, processed=processed_corpus, out=tmp_path, reports=tmp_path / "r",
                         tracker=NullTracker(), progress=False).trained_steps == 240
    c = load_checkpoint(tmp_path / "checkpoint.pt", "syncers")["model"]
    for key in a:
        if key.startswith("ms"):
            torch.testing.assert_close(a[key], c[key], rtol=0, atol=0, msg=key)


def test_config_is_strict():
    section = to_dict(TINY)
    assert from_dict(TrainSyncersConfig, section, "train_syncers") == TINY
    del section["rigid"]["margin"]
    with pytest.raises(ConfigError, match="train_syncers.rigid.margin"):
        from_dict(TrainSyncersConfig, section, "train_syncers")
    bad = to_dict(TINY)
    bad["eval_splits"] = ["train"]
    with pytest.raises(ConfigError, match="overlap"):
        from_dict(TrainSyncersConfig, bad, "train_syncers")
    bad = to_dict(TINY)
    bad["pyramid"]["coarse_negatives_from"] = "same_clip"
    with pytest.raises(ConfigError, match="coarse_negatives_from"):
        from_dict(TrainSyncersConfig, bad, "train_syncers")


def test_stage_writes_report(trained, processed_corpus, tmp_path):
    from stages.train_syncers import main

    out, result, _ = trained
    model_dir = tmp_path / "models"
    shutil.copytree(out, model_dir)  # complete checkpoint: the stage only evaluates and reports
    params = tmp_path / "params.yaml"
    common = {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 128, "device": "cpu", "precision": "fp32", "launcher": "python",
              "paths": {"raw": "data/raw", "processed": str(processed_corpus), "reports": "reports"}}
    params.write_text(yaml.safe_dump({"common": common, "train_syncers": to_dict(TINY)}))
    reports = tmp_path / "reports"
    assert main(["--params", str(params), "--processed", str(processed_corpus), "--out", str(model_dir),
                 "--reports", str(reports), "--no-progress", "--no-track"]) == 0
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["rigid_offset"] == json.loads(json.dumps(result.metrics["rigid_offset"]))
    for name in ("offsets.png", "curves.png", "history.json"):
        assert (reports / name).stat().st_size > 0
    # nothing was retrained: the curves are those of the original run
    assert json.loads((reports / "history.json").read_text()) == json.loads(json.dumps(result.history.rows))
