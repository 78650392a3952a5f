"""SyncNet LSE, TAVC similarity and the MS-Sync rigid AV offset on videos (pipeline/metrics/sync.py,
tavc_similarity.py, av_offset.py), with tiny networks the test builds: shapes, labels, and the invariants that do
not need a trained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses.tavc import tavc_similarity
from pipeline.metrics.av_offset import rigid_av_offset, rigid_syncers
from pipeline.metrics.sync import SyncNetScorer
from pipeline.metrics.tavc_similarity import tavc_video_similarity
from pipeline.models.syncer import Syncer, SyncerConfig
from pipeline.models.syncnet import SyncNet, SyncNetConfig
from pipeline.models.tavc import TAVC
from tests.mediagen import astronaut
from tests.test_renderer_train import TINY_TAVC

T = 30


def _clip(rng: np.random.Generator, moving: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, 64, 64, 3) frames of the astronaut (noise on the mouth when `moving`), audio, (T, 68, 2) landmarks."""
    import cv2

    face = cv2.resize(astronaut(256), (64, 64), interpolation=cv2.INTER_AREA)
    frames = np.repeat(face[None], T, axis=0)
    if moving:
        frames[:, 40:52, 24:40] = rng.integers(0, 256, size=(T, 12, 16, 3), dtype=np.uint8)
    wav = (0.3 * np.sin(2 * np.pi * 200 * np.arange(T * 640) / 16000) * rng.uniform(0.2, 1, T * 640)).astype(np.float32)
    lm = np.tile(rng.uniform(16, 48, size=(1, 68, 2)), (T, 1, 1))
    lm[:, 48:68] = [32.0, 46.0]
    lm[:, 36], lm[:, 45] = [20.0, 25.0], [44.0, 25.0]  # outer eye corners (the motion features' unit)
    return frames, wav, lm


def test_syncnet_scorer_runs_the_lse_protocol_and_names_the_network(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    cfg = SyncNetConfig(image_size=64, face_region="mouth", audio_channels=(8, 8, 8, 8, 8, 16),
                        lip_channels=(8, 8, 8, 8, 8, 16), fc_hidden=16, embed_dim=16)
    scorer = SyncNetScorer(SyncNet(cfg), "syncnet_tavce", vshift=5)
    frames, wav, lm = _clip(rng)
    r = scorer.score(frames, wav, lm, "a.mp4")
    assert r.extractor == "syncnet_tavce" and -5 <= r.offset <= 5 and r.lse_c >= 0 and np.isfinite(r.lse_d)
    with pytest.raises(ValueError, match="short.mp4"):
        scorer.score(frames[:4], wav, lm, "short.mp4")


def test_tavc_similarity_of_a_frozen_mouth_is_zero(rng: np.random.Generator) -> None:
    """Consecutive identical frames have no visual change, so ⟨C^a, C^v⟩ = 0; a changing mouth scores > 0 and
    equals the loss module's similarity computed by hand."""
    torch.manual_seed(0)
    model = TAVC(TINY_TAVC).eval()
    frames, wav, lm = _clip(rng, moving=False)
    jitter = lm + rng.normal(0, 0.05, size=lm.shape)  # a tracker's sub-pixel noise on a still video
    assert tavc_video_similarity(model, frames, wav, jitter).similarity == pytest.approx(0.0, abs=1e-6)
    frames, wav, lm = _clip(rng, moving=True)
    r = tavc_video_similarity(model, frames, wav, lm)
    assert r.pairs == T - 1 and 0 < r.similarity <= 1 and r.extractor == "tavc_tavce"
    from pipeline.audio import mel_windows, wav2lip_mel
    from pipeline.data.corpus import mouth_roi, to_unit_range

    mel = torch.from_numpy(mel_windows(wav2lip_mel(wav), range(T))[:, None]).float()
    lm = lm + rng.normal(0, 0.3, size=lm.shape)  # tracker jitter: does not count (both ROIs of a pair share a crop)
    r = tavc_video_similarity(model, frames, wav, lm)
    mid = (lm[:-1] + lm[1:]) / 2
    prev = torch.from_numpy(to_unit_range(np.stack([mouth_roi(f, m) for f, m in zip(frames[:-1], mid)])))
    cur = torch.from_numpy(to_unit_range(np.stack([mouth_roi(f, m) for f, m in zip(frames[1:], mid)])))
    with torch.no_grad():
        fa = model.encode_audio(mel)
        ref = tavc_similarity(fa[:-1], fa[1:], model.encode_visual(prev), model.encode_visual(cur), explicit=True).mean()
    assert r.similarity == pytest.approx(float(ref), rel=1e-4)


def test_rigid_av_offset_per_scale(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    syncers = {f"rigid{i}": Syncer(SyncerConfig(motion_channels=62, hidden=8, embed_dim=8)).eval() for i in (3, 1, 2)}
    syncers["ms1"] = Syncer(SyncerConfig(motion_channels=136, hidden=8, embed_dim=8))
    ordered = rigid_syncers(syncers)
    assert ordered == [syncers["rigid1"], syncers["rigid2"], syncers["rigid3"]]
    _, wav, lm = _clip(rng)
    lm = lm + rng.normal(0, 0.5, size=lm.shape)  # some head motion
    r = rigid_av_offset(ordered, lm, wav, vshift=4)
    assert set(r.abs_offset) == {"200ms", "400ms", "800ms"} and r.extractor == "ms_sync_rigid_tavce"
    assert all(0 <= v <= 4 and v == abs(r.offset[k]) for k, v in r.abs_offset.items())
    short = rigid_av_offset(ordered, lm[:16], wav[:16 * 640], vshift=4)
    assert set(short.abs_offset) == {"200ms", "400ms"}  # 16 frames: 4 steps at 800 ms, less than one window
    with pytest.raises(KeyError, match="no rigid syncers"):
        rigid_syncers({"ms1": syncers["ms1"]})
