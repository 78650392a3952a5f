"""SyncNet: syncnet_v2 weight compatibility, loss invariants, pair sampling, the offset sign convention of the
held-out evaluation, and a short training run with kill/resume on the tiny corpus."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.audio import INT16_LOG_ENERGY_OFFSET, syncnet_mfcc
from pipeline.checkpoint import WeightsError
from pipeline.data.corpus import Clip
from pipeline.data.syncnet import (SyncClip, SyncPairDataset, audio_input, collate_pairs, face_region, fit_length,
                                   shift_rows, syncnet_audio, video_input)
from pipeline.losses.syncnet import ContrastiveMarginLoss, pair_distance
from pipeline.models import count_parameters
from pipeline.models.syncnet import SyncNet, SyncNetConfig, load_syncnet, load_syncnet_v2
from pipeline.tracking import NullTracker
from pipeline.train.syncnet import TrainSyncNetConfig, evaluate_sync, shuffle_partner, train_syncnet

TINY = SyncNetConfig(image_size=64, face_region="lower", audio_channels=(8, 8, 8, 8, 8, 16),
                     lip_channels=(8, 8, 8, 8, 8, 16), fc_hidden=16, embed_dim=16)


# ----------------------------------------------------------------------------------------------------------------
# Model and syncnet_v2 compatibility
# ----------------------------------------------------------------------------------------------------------------
class ReferenceS(nn.Module):
    """syncnet_v2's `SyncNetModel.S` written out independently from the layer list of its public source."""

    def __init__(self) -> None:
        super().__init__()
        bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), bn2(64), nn.ReLU(), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), bn2(192), nn.ReLU(), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), bn2(384), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), bn2(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), bn2(256), nn.ReLU(), nn.MaxPool2d(3, (2, 2)),
            nn.Conv2d(256, 512, (5, 4)), bn2(512), nn.ReLU())
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), bn3(96), nn.ReLU(), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), bn3(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), nn.ReLU(), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), bn3(512), nn.ReLU())

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.view(mid.size(0), -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(x)
        return self.netfclip(mid.view(mid.size(0), -1))


def _randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that a wrong mapping of any tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point():
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def reference() -> ReferenceS:
    torch.manual_seed(0)
    return _randomised(ReferenceS())


def test_full_config_has_the_syncnet_v2_layout(reference: ReferenceS) -> None:
    model = SyncNet(SyncNetConfig.syncnet_v2())
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert own == ref
    assert count_parameters(model) == count_parameters(reference) == 13_631_616
    assert model.cfg.lip_last_kernel == 6


def _v2_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return 255 * torch.rand(2, 3, 5, 224, 224, generator=g), 10 * torch.randn(2, 1, 13, 20, generator=g)


@pytest.mark.parametrize("with_batch_counts", [False, True])
def test_syncnet_v2_file_loads_strictly_and_computes_the_same(reference: ReferenceS, tmp_path: Path,
                                                              with_batch_counts: bool) -> None:
    state = reference.state_dict()
    if not with_batch_counts:  # the public file predates BatchNorm's num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path, _use_new_zipfile_serialization=with_batch_counts)  # pre-1.6 format like the public file
    model = load_syncnet_v2(path)
    video, audio = _v2_inputs()
    with torch.no_grad():
        out = model(video, audio)
        assert out.video.shape == out.audio.shape == (2, 1024)
        assert torch.allclose(out.video, reference.forward_lip(video), atol=1e-5)
        assert torch.allclose(out.audio, reference.forward_aud(audio), atol=1e-5)


def test_wrong_weight_files_fail_with_the_file_and_keys(reference: ReferenceS, tmp_path: Path) -> None:
    small = tmp_path / "small.model"
    torch.save(SyncNet(TINY).state_dict(), small)
    with pytest.raises(WeightsError, match=r"small\.model.*other shapes.*netcnnaud\.0\.weight"):
        load_syncnet_v2(small)
    renamed = tmp_path / "prefixed.model"
    torch.save({f"__S__.{k}": v for k, v in reference.state_dict().items()}, renamed)
    with pytest.raises(WeightsError, match=r"prefixed\.model.*missing.*unexpected \[__S__\."):
        load_syncnet_v2(renamed)
    with pytest.raises(WeightsError, match="not found"):
        load_syncnet_v2(tmp_path / "absent.model")


def test_small_config_shapes_and_input_checks() -> None:
    model = SyncNet(TINY).eval()
    assert TINY.lip_last_kernel == 1
    out = model(255 * torch.rand(3, 3, 5, 64, 64), torch.randn(3, 1, 13, 20))
    assert out.video.shape == out.audio.shape == (3, 16)
    with pytest.raises(ValueError, match=r"\(B, 3, 5, 64, 64\)"):
        model.forward_lip(torch.zeros(3, 3, 5, 96, 96))
    with pytest.raises(ValueError, match=r"\(B, 1, 13, 20\)"):
        model.forward_aud(torch.zeros(3, 1, 20, 13))
    with pytest.raises(ValueError, match="too small"):
        SyncNet(SyncNetConfig(image_size=48))


# ----------------------------------------------------------------------------------------------------------------
# Loss (thesis Eq. 2.14)
# ----------------------------------------------------------------------------------------------------------------
def test_contrastive_loss_known_values_and_invariants() -> None:
    loss = ContrastiveMarginLoss(margin=2.0)
    d = torch.tensor([0.0, 1.0, 0.5, 3.0])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # (0 + 1 + (2 - 0.5)^2 + 0) / (2 * 4)
    assert float(loss(d, y)) == pytest.approx((0 + 1 + 2.25 + 0) / 8)
    assert float(loss(torch.zeros(3), torch.ones(3))) == 0.0  # perfect positives
    assert float(loss(torch.full((3,), 5.0), torch.zeros(3))) == 0.0  # negatives beyond the margin
    v = torch.randn(4, 8, requires_grad=True)
    loss(pair_distance(v, v.detach()), torch.ones(4)).backward()  # d = 0: gradient must stay finite
    assert torch.isfinite(v.grad).all()
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.allclose(pair_distance(a, b), torch.linalg.norm(a - b, dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="margin"):
        ContrastiveMarginLoss(0.0)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def _fake_clip(clip_id: str, speaker: str, frames: int, rng: np.random.Generator, size: int = 64,
               signal: np.ndarray | None = None) -> SyncClip:
    """A clip whose frame t is a flat image of brightness x[t] and whose MFCC rows 4t..4t+3 carry x[t]."""
    x = rng.uniform(0, 1, frames) if signal is None else signal
    faces = np.repeat((255 * x)[:, None, None, None], 3, axis=3) * np.ones((1, size, size, 3))
    mfcc = rng.normal(size=(4 * frames + 3, 13)).astype(np.float32)
    mfcc[:, 1] = np.repeat(x, 4).tolist() + [x[-1]] * 3
    clip = Clip(clip_id, speaker, "val", Path(f"{clip_id}.mp4"), Path(f"{clip_id}.npz"), frames)
    return SyncClip(clip=clip, faces=faces.astype(np.uint8), mfcc=mfcc, length=frames)


def test_audio_and_video_conventions() -> None:
    wav = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32)  # broadband: no empty band
    conv, flt = syncnet_audio(wav), syncnet_mfcc(wav)  # int16 scale vs float scale: only c0 differs, by 2 ln 32768
    assert np.allclose(conv[:, 0] - flt[:, 0], INT16_LOG_ENERGY_OFFSET, atol=1e-3)
    assert np.allclose(conv[:, 1:], flt[:, 1:], atol=1e-2)
    feat = np.arange(10)[:, None]
    assert shift_rows(feat, 3)[:, 0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]  # delayed by 3 rows, edge-padded
    assert shift_rows(feat, -2)[:, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert fit_length(feat, 12)[:, 0].tolist() == list(range(10)) + [9, 9]
    faces = np.zeros((2, 5, 4, 4, 3), np.uint8)
    faces[..., 0] = 200  # red in RGB
    v = video_input(faces)
    assert v.shape == (2, 3, 5, 4, 4) and float(v[0, 2].mean()) == 200.0 and float(v[0, 0].mean()) == 0.0  # BGR
    assert audio_input(np.zeros((2, 20, 13))).shape == (2, 1, 13, 20)
    frames = np.zeros((3, 128, 128, 3), np.uint8)
    frames[:, 64:] = 255
    assert face_region(frames, "lower", 32).shape == (3, 32, 32, 3) and face_region(frames, "lower", 32).min() == 255
    assert face_region(frames, "full", 32).min() == 0
    landmarks = np.zeros((3, 68, 3))
    landmarks[:, 48:68, :2] = 64.0  # mouth at (64, 64): the 48 px mouth region straddles dark top and bright bottom
    mouth = face_region(frames, "mouth", 32, landmarks)
    assert mouth.shape == (3, 32, 32, 3) and mouth[:, :8].max() == 0 and mouth[:, -8:].min() == 255
    with pytest.raises(ValueError, match="landmarks"):
        face_region(frames, "mouth", 32)


def test_pairs_are_keyed_balanced_and_shifted_within_the_clip() -> None:
    rng = np.random.default_rng(0)
    clips = [_fake_clip("a", "s1", 40, rng), _fake_clip("b", "s1", 30, rng)]
    ds = SyncPairDataset(clips, seed=7, min_shift=3, max_shift=50, flip=True)
    for step in range(20):
        for slot in range(4):
            faces, audio, label, shift = ds[(step, slot)]
            again = ds[(step, slot)]
            assert np.array_equal(faces, again[0]) and np.array_equal(audio, again[1]) and shift == again[3]
            assert label == (1 if slot % 2 == 0 else 0)
            assert (shift == 0) if label else (abs(shift) >= 3)
            assert faces.shape == (5, 64, 64, 3) and audio.shape == (20, 13)
            # the fake clip's MFCC column 1 carries the brightness of frame row // 4: positives line up, negatives not
            aligned = np.allclose(faces[:, 0, 0, 0] / 255, audio[::4, 1], atol=0.01)
            assert aligned == bool(label)
    batch = collate_pairs([ds[(0, s)] for s in range(6)])
    assert batch.video.shape == (6, 3, 5, 64, 64) and batch.label.tolist() == [1, 0, 1, 0, 1, 0]
    assert ds[(1, 0)][1].tobytes() != ds[(2, 0)][1].tobytes() or ds[(1, 0)][0].tobytes() != ds[(2, 0)][0].tobytes()
    with pytest.raises(ValueError, match="too short"):
        SyncPairDataset([_fake_clip("c", "s1", 10, rng)], seed=0, min_shift=3, max_shift=5, flip=False)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation protocol: sign convention with an oracle "network"
# ----------------------------------------------------------------------------------------------------------------
class Oracle(nn.Module):
    """Embeds a window by the brightness of its 5 frames / the MFCC column 1 of its 5 x 4 rows: perfectly synced
    windows get identical embeddings."""

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, 5, S, S) -> (B, 5)
        return video.mean(dim=(1, 3, 4)) / 255

    def forward_aud(self, audio: torch.Tensor) -> torch.Tensor:  # (B, 1, 13, 20) -> (B, 5)
        return audio[:, 0, 1].reshape(-1, 5, 4).mean(dim=2)


def test_artificial_shifts_give_the_expected_offsets() -> None:
    rng = np.random.default_rng(3)
    clips = [_fake_clip(f"c{i}", f"s{i % 2}", 60 + 5 * i, rng) for i in range(3)]
    ev = evaluate_sync(Oracle(), clips, max_shift=5, vshift=15, batch=16)
    by_shift = {(r["clip"], r["shift"]): r for r in ev.rows}
    # audio delayed by 2 frames: video window k matches audio window k + 2 -> syncnet_python offset -2
    assert by_shift[("c0", 2)]["offset"] == -2 and by_shift[("c0", -4)]["offset"] == 4
    assert all(r["offset"] == r["expected"] == -r["shift"] for r in ev.rows)
    m = ev.metrics
    assert m["offset_acc_pm1"] == m["offset_acc_exact"] == 1.0 and m["shifted_cases"] == 33
    assert m["synced"]["lse_c"] > m["shuffled"]["lse_c"] and m["synced"]["lse_d"] < m["shuffled"]["lse_d"]
    assert m["synced_beats_shuffled"] == 1.0
    assert [p["shuffled_from"] for p in ev.pairs] == ["c1", "c2", "c1"]  # another speaker's audio when there is one
    assert shuffle_partner(clips[:1] + clips[2:], 0) == 1  # same speaker only: the next clip


def test_a_blind_model_fails_the_offset_test() -> None:
    """Guards against a protocol that scores well whatever the network: constant audio embeddings."""
    class Blind(Oracle):
        def forward_aud(self, audio: torch.Tensor) -> torch.Tensor:
            return torch.zeros(audio.shape[0], 5)

    rng = np.random.default_rng(4)
    clips = [_fake_clip(f"c{i}", f"s{i}", 60, rng) for i in range(2)]
    ev = evaluate_sync(Blind(), clips, max_shift=5, vshift=15, batch=16)
    assert ev.metrics["offset_acc_pm1"] < 0.5


# ----------------------------------------------------------------------------------------------------------------
# Training run on the tiny corpus
# ----------------------------------------------------------------------------------------------------------------
def _train_cfg(**over: object) -> TrainSyncNetConfig:
    base = dict(model=TINY, pretrained=None, steps=4, batch_size=8, lr=1e-3, margin=5.0, min_neg_shift=3,
                max_neg_shift=20, flip=True, train_splits=("train",), eval_splits=("val", "test"), eval_max_shift=2,
                vshift=6, eval_batch=32, workers=0, log_every=1, eval_every=2, checkpoint_every=2)
    base.update(over)
    return TrainSyncNetConfig(**base)  # type: ignore[arg-type]


class KillAt(NullTracker):
    """Simulates a killed run: raises when the loss of `step` is logged."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step == self.step and "loss" in metrics:
            raise KeyboardInterrupt(f"killed at step {step}")
        super().log_metrics(metrics, step)


@pytest.mark.slow
def test_training_resumes_to_the_same_weights(processed_corpus: Path, tmp_path: Path) -> None:
    cfg = _train_cfg(eval_every=0)
    full = train_syncnet(cfg, 0, processed=processed_corpus, out=tmp_path / "a", reports=tmp_path / "ra",
                         tracker=NullTracker(), progress=False)
    assert (tmp_path / "a" / "checkpoint.pt").is_file()
    assert [r["step"] for r in full.history.rows if "loss" in r] == [1, 2, 3, 4]
    assert {"offset_acc_pm1", "synced", "shuffled", "extractor", "targets"} <= set(full.metrics)
    assert full.metrics["shifted_cases"] == 5 * full.metrics["eval_clips"] and full.metrics["eval_clips"] >= 2

    with pytest.raises(KeyboardInterrupt):
        train_syncnet(cfg, 0, processed=processed_corpus, out=tmp_path / "b", reports=tmp_path / "rb",
                      tracker=KillAt(3), progress=False)
    resumed = train_syncnet(cfg, 0, processed=processed_corpus, out=tmp_path / "b", reports=tmp_path / "rb",
                            tracker=NullTracker(), progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.metrics["offset_acc_pm1"] == full.metrics["offset_acc_pm1"]

    for name in ("metrics.json", "offsets.csv", "synced_vs_shuffled.csv", "curves.png", "offsets.png"):
        assert (tmp_path / "ra" / name).is_file(), name
    model = load_syncnet(tmp_path / "a" / "checkpoint.pt")
    assert model.cfg == cfg.model and not model.training
    for a, b in zip(model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)

    other = train_syncnet(_train_cfg(lr=2e-3), 0, processed=processed_corpus, out=tmp_path / "a",
                          reports=tmp_path / "ra", tracker=NullTracker(), progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(),
                                                      full.model.state_dict().values()))


@pytest.mark.slow
def test_stage_cli(processed_corpus: Path, tmp_path: Path) -> None:
    from pipeline.config import to_dict
    from stages import train_syncnet as stage

    with pytest.raises(SystemExit) as exc:
        stage.main(["--help"])
    assert exc.value.code == 0
    section = to_dict(_train_cfg(steps=2, eval_every=1, model=replace(TINY, face_region="mouth")))
    params = {"common": {"seed": 0, "fps": 25, "sample_rate": 16000, "image_size": 128, "device": "cpu", "precision": "fp32", "launcher": "python",
                         "paths": {"raw": "r", "processed": str(processed_corpus), "reports": "rep"}},
              "train_syncnet": section}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    reports = tmp_path / "reports"
    args = ["--params", str(tmp_path / "params.yaml"), "--processed", str(processed_corpus), "--out",
            str(tmp_path / "model"), "--reports", str(reports), "--no-progress", "--no-track"]
    assert stage.main(args) == 0
    for name in ("metrics.json", "curves.png", "offsets.png", "offsets.csv", "synced_vs_shuffled.csv"):
        assert (reports / name).is_file(), name
    first = (reports / "metrics.json").read_text()
    assert stage.main(args) == 0  # finished checkpoint: evaluates only, same numbers
    assert (reports / "metrics.json").read_text() == first
    section["bogus"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match="train_syncnet.bogus"):
        stage.main(args)


def test_report_marks_the_metric_out_of_domain_when_ground_truth_is_not_recognised() -> None:
    """Metric sanity: an extractor that finds the synced audio at offset 0 and is more confident on it than on
    shuffled audio is in domain; one that finds ground truth at a wrong offset (here, video lagging its own features
    by 4 frames: a model out of its domain) or is blind is marked out_of_domain, with the reasons."""
    class Lagging(Oracle):
        def forward_aud(self, audio: torch.Tensor) -> torch.Tensor:
            return super().forward_aud(audio).roll(4, dims=0)  # window k gets window k - 4's audio (batch = clip)

    class Blind(Oracle):
        def forward_aud(self, audio: torch.Tensor) -> torch.Tensor:
            return torch.zeros(audio.shape[0], 5)

    rng = np.random.default_rng(5)
    clips = [_fake_clip(f"c{i}", f"s{i}", 60, rng) for i in range(3)]
    good = evaluate_sync(Oracle(), clips, max_shift=2, vshift=8, batch=64).metrics
    assert good["status"] == "in_domain" and good["domain"]["reasons"] == []
    assert good["domain"]["ground_truth_offset_acc_pm1"] == 1.0 and good["domain"]["clips"] == 3
    lagging = evaluate_sync(Lagging(), clips, max_shift=2, vshift=8, batch=64).metrics
    assert lagging["status"] == "out_of_domain" and lagging["domain"]["ground_truth_offset_acc_pm1"] == 0.0
    assert "within ±1 frame for 0% of 3 clips" in lagging["domain"]["reasons"][0]
    blind = evaluate_sync(Blind(), clips, max_shift=2, vshift=8, batch=64).metrics
    assert blind["status"] == "out_of_domain" and any("not above shuffled" in r for r in blind["domain"]["reasons"])
