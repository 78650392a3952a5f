"""TAVC metric (method.md §3): relationship matrix and similarity invariants, the TAVCE Eq. 3/4 loss, encoders
and their public key layouts, the keyed dataset, and a smoke run of the stage with resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.checkpoint import WeightsError
from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.losses.tavc import TAVCLoss, matrix_cosine, tavc_similarity
from pipeline.models import count_parameters
from pipeline.models.audio_encoder import WAV2LIP_AUDIO_LAYERS, AudioEncoder, AudioEncoderConfig
from pipeline.models.tavc import TAVC, TAVCConfig, load_pretrained, load_tavc, relationship
from pipeline.models.visual_encoder import IResNet18, ResNet18
from tests.killing import Killed, KillAt

TINY = TAVCConfig(embed_dim=16, audio_width=0.125, visual_backbone="resnet18", visual_width=0.125)


def _feats(rng: np.random.Generator, b: int = 5, d: int = 12) -> list[torch.Tensor]:
    return [torch.from_numpy(rng.standard_normal((b, d))) for _ in range(4)]


# ----------------------------------------------------------------------------------------------------------------
# TAVCE Eq. 2 and the similarity
# ----------------------------------------------------------------------------------------------------------------
def test_relationship_is_half_outer_product_of_difference_and_symmetric_in_i_j(rng):
    f_i, f_j, _, _ = _feats(rng)
    c = relationship(f_i, f_j)
    assert c.shape == (5, 12, 12)
    delta = f_i - f_j
    torch.testing.assert_close(c, 0.5 * delta[:, :, None] * delta[:, None, :])
    torch.testing.assert_close(c, relationship(f_j, f_i))  # order of i, j does not matter
    torch.testing.assert_close(c, c.transpose(1, 2))
    assert torch.linalg.matrix_rank(c).eq(1).all()
    # the paper's covariance of the two samples: E[f f^T] - E[f] E[f]^T, population normalisation
    m = torch.stack([f_i, f_j], 1)  # (B, 2, D)
    mean = m.mean(1)
    cov = torch.einsum("bkd,bke->bde", m, m) / 2 - mean[:, :, None] * mean[:, None, :]
    torch.testing.assert_close(c, 2 * cov)  # C = m^T m is twice the population covariance: same cosine


def test_matrix_cosine_equals_squared_cosine_of_differences(rng):
    fa_i, fa_j, fv_i, fv_j = _feats(rng, b=64)
    explicit = tavc_similarity(fa_i, fa_j, fv_i, fv_j, explicit=True)
    fast = tavc_similarity(fa_i, fa_j, fv_i, fv_j)
    cos = torch.nn.functional.cosine_similarity(fa_i - fa_j, fv_i - fv_j, dim=1)
    torch.testing.assert_close(explicit, cos**2)
    torch.testing.assert_close(fast, explicit)
    assert (fast >= 0).all() and (fast <= 1 + 1e-12).all()
    assert fast.std() > 0.01  # not a constant
    # swapping i and j in either stream, or scaling a feature difference, leaves it unchanged
    torch.testing.assert_close(tavc_similarity(fa_j, fa_i, fv_i, fv_j), fast)
    torch.testing.assert_close(tavc_similarity(fa_i, fa_j, fv_j, fv_i), fast)
    torch.testing.assert_close(tavc_similarity(3 * fa_i, 3 * fa_j, fv_i, fv_j), fast)


def test_similarity_known_values_and_zero_difference():
    e = torch.eye(3, dtype=torch.float64)
    z = torch.zeros(1, 3, dtype=torch.float64)
    # Δa = e0, Δv = e0 -> 1; Δv = e1 -> 0; Δv = (e0 + e1) -> cos 1/√2 -> 0.5
    assert tavc_similarity(e[:1], z, e[:1], z).item() == pytest.approx(1.0)
    assert tavc_similarity(e[:1], z, e[1:2], z).item() == pytest.approx(0.0)
    assert tavc_similarity(e[:1], z, (e[0] + e[1])[None], z).item() == pytest.approx(0.5)
    assert matrix_cosine(relationship(e[:1], z), relationship((e[0] + e[1])[None], z)).item() == pytest.approx(0.5)
    # identical audio windows (silence): similarity 0 and finite gradients, not NaN
    fa = torch.ones(2, 3, requires_grad=True)
    fv = torch.randn(2, 3, requires_grad=True)
    sim = tavc_similarity(fa, fa.detach().clone(), fv, torch.zeros(2, 3))
    sim.sum().backward()
    assert torch.equal(sim, torch.zeros(2)) and torch.isfinite(fv.grad).all()


def test_loss_eq3_values_and_explicit_form_agree(rng):
    e = torch.eye(4)
    z = torch.zeros(1, 4)
    loss = TAVCLoss(alpha=1.0)
    # positive aligned with the audio change, negative orthogonal: the loss reaches its minimum 0
    best = loss(e[:1], z, e[:1], z, e[:1] + e[1:2])  # Δv_neg = f_{i-1} - f_j = -e1
    assert best.loss.item() == pytest.approx(0.0) and best.pos.item() == pytest.approx(1.0)
    # the reverse: maximum 1 + alpha
    worst = TAVCLoss(alpha=0.5)(e[:1], z, z, e[1:2], e[:1])
    assert worst.loss.item() == pytest.approx(1.5)
    # efficient and explicit forms give the same loss and gradients
    feats = [torch.from_numpy(rng.standard_normal((8, 6))).requires_grad_() for _ in range(5)]
    fast = TAVCLoss()(*feats)
    grads_fast = torch.autograd.grad(fast.loss, feats)
    slow = TAVCLoss(explicit=True)(*feats)
    grads_slow = torch.autograd.grad(slow.loss, feats)
    torch.testing.assert_close(fast.loss, slow.loss)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------------
# Encoders and public key layouts
# ----------------------------------------------------------------------------------------------------------------
def test_tavc_shapes_and_parameter_counts():
    model = TAVC(TINY)
    f_a, f_v = model(torch.randn(2, 2, 1, 80, 16), torch.rand(2, 3, 3, 112, 112) * 2 - 1)
    assert f_a.shape == (2, 2, 16) and f_v.shape == (2, 3, 16)
    assert model.encode_audio(torch.randn(3, 1, 80, 16)).shape == (3, 16)
    with pytest.raises(ValueError, match="mel windows"):
        model.encode_audio(torch.randn(3, 1, 80, 17))
    with pytest.raises(ValueError, match="mouth ROIs"):
        model.encode_visual(torch.randn(3, 3, 96, 96))
    # full size: Wav2Lip audio encoder 2.81 M, ResNet18 trunk 11.18 M (torchvision's 11.69 M minus its 1000-way fc)
    assert count_parameters(AudioEncoder()) == 2_812_672
    assert count_parameters(ResNet18()) == 11_176_512
    assert AudioEncoder(AudioEncoderConfig(width=0.25)).out_features == 128


def test_audio_encoder_has_wav2lip_keys_and_loads_public_layouts(tmp_path):
    enc = AudioEncoder()
    keys = list(enc.state_dict())
    assert keys[:2] == ["0.conv_block.0.weight", "0.conv_block.0.bias"]
    assert "0.conv_block.1.running_var" in keys and "12.conv_block.0.weight" in keys
    assert len([k for k in keys if k.endswith("conv_block.0.weight")]) == len(WAV2LIP_AUDIO_LAYERS) == 13
    assert tuple(enc.state_dict()["9.conv_block.0.weight"].shape) == (256, 128, 3, 3)

    donor = AudioEncoder()
    for p in donor.parameters():
        torch.nn.init.normal_(p)
    audio_state = donor.state_dict()
    face = {"face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)}
    layouts = {
        "wav2lip.pth": {"state_dict": {**{f"module.audio_encoder.{k}": v for k, v in audio_state.items()},
                                       **{f"module.{k}": v for k, v in face.items()}}},
        "lipsync_expert.pth": {"state_dict": {f"audio_encoder.{k}": v for k, v in audio_state.items()}},
        "audio2exp.pth": {"model": {**{f"netG.audio_encoder.{k}": v for k, v in audio_state.items()},
                                    "netG.mapping1.weight": torch.zeros(64, 576)}},
        "audio2pose.pth": {"model": {f"audio_encoder.audio_encoder.{k}": v for k, v in audio_state.items()}},
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        model = TAVC(dataclasses.replace(TINY, audio_width=1.0))
        load_pretrained(model, audio=tmp_path / name)
        for k, v in audio_state.items():
            assert torch.equal(model.audio_encoder.state_dict()[k], v), (name, k)

    broken = dict(layouts["lipsync_expert.pth"]["state_dict"])
    del broken["audio_encoder.3.conv_block.0.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"broken.pth.*1 missing \[3.conv_block.0.weight\]"):
        load_pretrained(TAVC(dataclasses.replace(TINY, audio_width=1.0)), audio=tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="need audio width 1.0"):
        load_pretrained(TAVC(TINY), audio=tmp_path / "lipsync_expert.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "not_audio.pth")
    with pytest.raises(WeightsError, match="no `audio_encoder"):
        load_pretrained(TAVC(TINY), audio=tmp_path / "not_audio.pth")


def test_resnet18_loads_torchvision_weights_and_matches_its_features(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    model = TAVC(dataclasses.replace(TINY, visual_width=1.0))
    load_pretrained(model, visual=tmp_path / "resnet18-f37072fd.pth")
    tv.fc = torch.nn.Identity()
    tv.eval()
    model.eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.visual_encoder(x), tv(x))
    # a backbone of the other kind is refused with the keys at fault
    with pytest.raises(WeightsError, match="visual_backbone iresnet18"):
        load_pretrained(TAVC(dataclasses.replace(TINY, visual_backbone="iresnet18", visual_width=1.0)),
                        visual=tmp_path / "resnet18-f37072fd.pth")


def test_iresnet18_has_arcface_keys_and_loads_them(tmp_path):
    net = IResNet18()
    state = net.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.weight", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "layer4.1.bn3.bias",
                "bn2.weight", "features.running_var"):
        assert key in state, key
    assert tuple(state["fc.weight"].shape) == (512, 512 * 7 * 7)
    assert "conv1.bias" not in state and not net.features.weight.requires_grad
    assert count_parameters(net) == 24_025_600  # insightface r18
    torch.save(state, tmp_path / "backbone.pth")
    model = TAVC(dataclasses.replace(TINY, visual_backbone="iresnet18", visual_width=1.0))
    load_pretrained(model, visual=tmp_path / "backbone.pth")
    assert torch.equal(model.visual_encoder.fc.weight, state["fc.weight"])
    small = TAVC(dataclasses.replace(TINY, visual_backbone="iresnet18"))
    assert small.encode_visual(torch.zeros(2, 3, 112, 112)).shape == (2, 16)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def test_draw_positions_respects_tau_and_covers_both_sides():
    from pipeline.data.tavc import draw_positions, min_clip_frames
    from pipeline.data.sampling import sample_rng

    tau, frames = 3, 12
    sides = set()
    for k in range(2000):
        i, j = draw_positions(sample_rng(0, k), frames, tau)
        assert 1 <= i < frames and 0 <= j < frames and abs(j - i) >= tau
        sides.add(j < i)
    assert sides == {True, False}
    for k in range(200):  # the shortest allowed clip always has a negative
        i, j = draw_positions(sample_rng(1, k), min_clip_frames(tau), tau)
        assert abs(j - i) >= tau
    with pytest.raises(ValueError, match="too short"):
        draw_positions(sample_rng(0, 0), min_clip_frames(tau) - 1, tau)


def test_dataset_samples_are_keyed_and_match_direct_decoding(processed_corpus):
    from pipeline.audio import mel_windows
    from pipeline.data.corpus import FeatureStore, FrameStore, load_clips, mouth_roi, to_unit_range
    from pipeline.data.tavc import TAVCDataset

    clips = load_clips(processed_corpus, ["train"])
    # The decoding path (corpora without stored ROIs): equal to decoding the frames directly.
    ds = TAVCDataset(clips, seed=0, tau=3, roi_cache_mb=16, stored_rois=False)
    a, b = ds[(5, 1)], ds[(5, 1)]  # second read comes from the ROI cache
    fresh = TAVCDataset(clips, seed=0, tau=3, roi_cache_mb=0, stored_rois=False)[(5, 1)]
    prefetching = TAVCDataset(clips, seed=0, tau=3, roi_cache_mb=16, prefetch=8, stored_rois=False)
    warmed = [prefetching[(s, 0)] for s in range(6)][0] and prefetching[(5, 1)]  # ROIs partly from neighbours' spans
    assert len(prefetching.roi_cache._items) > 3 * 7  # spans were cached, not just the requested frames
    for key in ("mel", "roi"):
        assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], fresh[key])
        assert np.array_equal(a[key], warmed[key])
    assert a["mel"].shape == (2, 1, 80, 16) and a["roi"].shape == (3, 3, 112, 112)
    assert a["roi"].dtype == np.float32 and -1 <= a["roi"].min() < a["roi"].max() <= 1
    assert abs(a["j"] - a["i"]) >= 3
    other = ds[(5, 2)]
    assert (other["clip"], other["i"], other["j"]) != (a["clip"], a["i"], a["j"])

    clip = clips[a["clip"]]
    frames = FrameStore().frames(clip, [a["i"] - 1, a["i"], a["j"]])
    lm = FeatureStore().get_array(clip, "landmarks")
    expect = to_unit_range(np.stack([mouth_roi(f, lm[k]) for f, k in zip(frames, [a["i"] - 1, a["i"], a["j"]])]))
    assert np.array_equal(a["roi"], expect)
    mel = FeatureStore().get_array(clip, "mel")
    assert np.array_equal(a["mel"][:, 0], mel_windows(mel, [a["i"] - 1, a["i"]]))

    aug = TAVCDataset(clips, seed=0, tau=3, augment=True, stored_rois=False)
    x, y = aug[(5, 1)], aug[(5, 1)]
    assert np.array_equal(x["roi"], y["roi"]) and not np.array_equal(x["roi"], a["roi"])
    assert np.array_equal(x["mel"], a["mel"])


def test_roi_jpegs_pack_and_decode():
    from pipeline.data.corpus import decode_mouth_roi, mouth_roi_jpeg, pack_jpegs

    y, x = np.mgrid[0:112, 0:112]
    rois = [np.stack([(x + 20 * k) % 256, y * 2, (x + y) // 2], -1).astype(np.uint8) for k in range(3)]
    jpeg, offsets = pack_jpegs([mouth_roi_jpeg(r, 95) for r in rois])
    assert offsets[0] == 0 and offsets[-1] == jpeg.size and offsets.dtype == np.int64 and len(offsets) == 4
    for k, roi in enumerate(rois):
        back = decode_mouth_roi(jpeg, offsets, k)
        assert back.shape == roi.shape and back.dtype == np.uint8
        assert np.abs(back.astype(int) - roi).mean() < 2  # channel order kept (RGB in, RGB out)
    empty, off = pack_jpegs([])
    assert empty.size == 0 and off.tolist() == [0]
    broken = jpeg.copy()
    broken[offsets[1]:offsets[2]] = 0
    with pytest.raises(Exception, match="not a readable JPEG"):
        decode_mouth_roi(broken, offsets, 1, "f.npz")


def test_stored_rois_match_the_decoded_ones_without_seeking(processed_corpus, monkeypatch):
    """Preprocessing stores each clip's mouth ROIs as JPEGs (cut from the frames before encoding); the dataset reads
    them instead of seeking into the clip, and they match the ROIs of the decoded clip up to the two codecs."""
    from pipeline.data.corpus import STORED_ROI_KEYS, FeatureStore, FrameStore, decode_mouth_roi, load_clips
    from pipeline.data.tavc import TAVCDataset

    clips = load_clips(processed_corpus, ["train"])
    store = FeatureStore()
    for clip in clips:
        jpeg, offsets = (store.get_array(clip, k) for k in STORED_ROI_KEYS)
        assert jpeg.dtype == np.uint8 and offsets.shape == (clip.frames + 1,) and offsets[-1] == jpeg.size
        assert np.all(np.diff(offsets) > 0)
        assert store._arrays(clip)[STORED_ROI_KEYS[0]] is None  # kept on disk, read on request only
    decoded = TAVCDataset(clips, seed=0, tau=3, roi_cache_mb=0, stored_rois=False)
    stored = TAVCDataset(clips, seed=0, tau=3, roi_cache_mb=0)

    def no_seek(*args, **kwargs):
        raise AssertionError("the stored-ROI path decoded the clip")

    monkeypatch.setattr(FrameStore, "frames", no_seek)
    samples = [stored[(step, 0)] for step in range(6)]
    monkeypatch.undo()
    for step, s in enumerate(samples):
        d = decoded[(step, 0)]
        assert (s["clip"], s["i"], s["j"]) == (d["clip"], d["i"], d["j"]) and np.array_equal(s["mel"], d["mel"])
        assert s["roi"].shape == d["roi"].shape and s["roi"].dtype == np.float32
        mse = np.mean(((s["roi"] - d["roi"]) / 2) ** 2)  # [-1, 1] -> [0, 1] scale
        assert 10 * np.log10(1 / mse) > 30  # JPEG 95 of the crop vs x264 crf 15 of the crop
    with pytest.raises(Exception, match="frame 999"):
        decode_mouth_roi(jpeg, offsets, 999, "f.npz")


# ----------------------------------------------------------------------------------------------------------------
# Config, training loop, stage
# ----------------------------------------------------------------------------------------------------------------
def _small_cfg(**changes):
    from pipeline.train.tavc import TrainTAVCConfig

    base = TrainTAVCConfig(model=TINY, batch_size=4, lr=1e-3, steps=6, eval_samples_per_clip=4, eval_every=3,
                           bootstrap=50, log_every=1, checkpoint_every=3, workers=0, roi_cache_mb=32)
    return dataclasses.replace(base, **changes)


def test_config_is_strict():
    from pipeline.train.tavc import TrainTAVCConfig

    section = to_dict(_small_cfg())
    assert from_dict(TrainTAVCConfig, section, "train_tavc") == _small_cfg()
    with pytest.raises(ConfigError, match="train_tavc.tau: missing"):
        from_dict(TrainTAVCConfig, {k: v for k, v in section.items() if k != "tau"}, "train_tavc")
    with pytest.raises(ConfigError, match="overlap"):
        from_dict(TrainTAVCConfig, {**section, "eval_splits": ["train"]}, "train_tavc")
    with pytest.raises(ConfigError, match="lr_schedule"):
        from_dict(TrainTAVCConfig, {**section, "lr_schedule": "step"}, "train_tavc")
    with pytest.raises(ConfigError, match="visual_backbone"):
        from_dict(TrainTAVCConfig, {**section, "model": {**section["model"], "visual_backbone": "vit"}}, "train_tavc")


def test_learning_rate_schedules():
    from pipeline.train.tavc import learning_rate

    cfg = _small_cfg(lr=1e-3, steps=100)
    assert [learning_rate(cfg, s) for s in (0, 50, 99)] == [1e-3] * 3
    cos = dataclasses.replace(cfg, lr_schedule="cosine")
    assert learning_rate(cos, 0) == pytest.approx(1e-3)
    assert learning_rate(cos, 50) == pytest.approx(5e-4)
    assert 0 < learning_rate(cos, 99) < 1e-6


def test_loss_decreases_when_overfitting_one_batch(processed_corpus):
    from pipeline.data.corpus import load_clips
    from pipeline.data.tavc import TAVCDataset

    torch.manual_seed(0)
    ds = TAVCDataset(load_clips(processed_corpus, ["train"]), seed=0, tau=3)
    batch = torch.utils.data.default_collate([ds[(0, s)] for s in range(8)])
    model = TAVC(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = TAVCLoss()
    losses = []
    for _ in range(25):
        f_a, f_v = model(batch["mel"], batch["roi"])
        out = loss_fn(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 1], f_v[:, 2])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


@pytest.mark.slow
def test_stage_smoke_resume_and_reuse(processed_corpus, tmp_path):
    from pipeline.tracking import NullTracker
    from pipeline.checkpoint import load_checkpoint
    from pipeline.train.tavc import train_tavc
    from stages import train_tavc as stage

    cfg = _small_cfg()
    params = {"common": {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 128, "device": "cpu", "precision": "fp32", "launcher": "python",
                         "paths": {"raw": "r", "processed": "p", "reports": "rep"}},
              "train_tavc": to_dict(cfg)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    full, reports = tmp_path / "full", tmp_path / "reports"
    assert stage.main(["--params", str(tmp_path / "params.yaml"), "--processed", str(processed_corpus),
                       "--out", str(full), "--reports", str(reports), "--no-progress", "--no-track"]) == 0
    metrics = json.loads((reports / "metrics.json").read_text())
    h = metrics["heldout"]
    import pandas as pd

    manifest = pd.read_parquet(processed_corpus / "manifest.parquet")
    held = manifest[manifest["split"].isin(["val", "test"])]
    assert h["clips"] == len(held) and h["samples"] == 4 * len(held)
    assert set(h["speakers"]) == set(held["speaker"])
    assert set(h["speakers"]).isdisjoint(manifest.loc[manifest["split"] == "train", "speaker"])
    assert 0 <= h["neg_sim"] <= 1 and 0 <= h["pos_sim"] <= 1 and h["ratio_ci_low"] <= h["ratio"] <= h["ratio_ci_high"]
    assert metrics["train"]["resumed_from"] == 0 and metrics["parameters"]["total"] == count_parameters(TAVC(TINY))
    for name in ("curves.png", "similarity_hist.png", "heldout_samples.csv"):
        assert (reports / name).is_file(), name
    state = load_checkpoint(full / "checkpoint.pt", "tavc")
    assert state["step"] == 6 and [r["step"] for r in state["extra"]["history"] if "heldout_pos" in r] == [0, 3, 6]

    # killed after the step-3 checkpoint, then rerun: resumes and ends with the same weights
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train_tavc(cfg, 0, processed=processed_corpus, out=killed, reports=tmp_path / "rk", tracker=KillAt(5),
                   progress=False)
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 3
    resumed = train_tavc(dataclasses.replace(cfg, workers=1), 0, processed=processed_corpus, out=killed,
                         reports=tmp_path / "rk", tracker=NullTracker(), progress=False)
    assert resumed.metrics["train"]["resumed_from"] == 3
    state_b = load_checkpoint(killed / "checkpoint.pt")
    for k, v in state["model"].items():
        assert torch.equal(v, state_b["model"][k]), k
    assert resumed.metrics["heldout"]["pos_sim"] == pytest.approx(h["pos_sim"], abs=1e-6)

    # complete checkpoint: evaluated only; the loader gives a frozen eval-mode model
    again = train_tavc(cfg, 0, processed=processed_corpus, out=full, reports=tmp_path / "ra", tracker=NullTracker(),
                       progress=False)
    assert again.metrics["train"]["resumed_from"] == 6 and again.seconds == 0.0
    model = load_tavc(full / "checkpoint.pt")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.cfg == TINY
    # other params: trained from scratch, not resumed
    other = train_tavc(dataclasses.replace(cfg, steps=3), 0, processed=processed_corpus, out=full,
                       reports=tmp_path / "ro", tracker=NullTracker(), progress=False)
    assert other.metrics["train"]["resumed_from"] == 0


def test_load_tavc_rejects_other_checkpoints(tmp_path):
    from pipeline.checkpoint import save_checkpoint

    model = TAVC(TINY)
    save_checkpoint(tmp_path / "x.pt", kind="syncnet", config={"model": to_dict(TINY)}, model=model, optimizer=None,
                    step=1)
    with pytest.raises(WeightsError, match="`syncnet` checkpoint, expected `tavc`"):
        load_tavc(tmp_path / "x.pt")
    save_checkpoint(tmp_path / "y.pt", kind="tavc", config={"model": {"embed_dim": 16}}, model=model,
                    optimizer=None, step=1)
    with pytest.raises(WeightsError, match="model.audio_width: missing"):
        load_tavc(tmp_path / "y.pt")
    assert not Path(tmp_path / "z.pt").exists()
