"""Audio2Coeff training on the tiny synthetic corpus: losses fall, kill/resume, checkpoint round trip, report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from killing import KillAt, Killed
from test_audio2coeff import TINY
from torch import nn

from pipeline.checkpoint import save_checkpoint
from pipeline.config import ConfigError, from_dict, to_dict
from pipeline.data.audio2coeff import load_motion_clips, speaker_styles, window_sample
from pipeline.data.corpus import load_split_clips
from pipeline.faces.coeffs import ExpressionBasis
from pipeline.losses.audio2coeff import CoeffLandmarks
from pipeline.models.audio2coeff import generate_motion, load_audio2coeff
from pipeline.models.syncer import CHECKPOINT_KIND as SYNCERS_KIND
from pipeline.models.syncer import Syncer, SyncerConfig
from pipeline.tracking import NullTracker
from pipeline.train.audio2coeff import (EvaluationConfig, LossWeights, MSSyncGeneratorLoss, MSSyncLossConfig,
                                        TrainAudio2CoeffConfig, WeightsConfig, build_model, load_experts,
                                        train_audio2coeff, train_step)


@pytest.fixture(scope="module")
def syncers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight train_syncers checkpoint: ms1, ms2 (68 points; two levels fit 9-frame windows) and
    rigid1..3 (31 points)."""
    torch.manual_seed(0)
    cfgs = {f"ms{i}": SyncerConfig(motion_channels=136, hidden=4, embed_dim=8) for i in (1, 2)}
    cfgs |= {f"rigid{i}": SyncerConfig(motion_channels=62, hidden=4, embed_dim=8) for i in (1, 2, 3)}
    model = nn.ModuleDict({k: Syncer(c) for k, c in cfgs.items()})
    path = tmp_path_factory.mktemp("syncers") / "checkpoint.pt"
    save_checkpoint(path, kind=SYNCERS_KIND, config={}, model=model, optimizer=None, step=0,
                    extra={"syncers": {k: to_dict(c) for k, c in cfgs.items()}})
    return path


def tiny_config(pose_generator: str = "posevae", steps: int = 6, ms_weight: float = 1.0) -> TrainAudio2CoeffConfig:
    return TrainAudio2CoeffConfig(
        model=replace(TINY, pose_generator=pose_generator), loss_weights=LossWeights(),
        ms_sync=MSSyncLossConfig(weight=ms_weight), ms_sync_generator=MSSyncGeneratorLoss(), weights=WeightsConfig(),
        evaluation=EvaluationConfig(seeds=(0, 1), sequence_frames=40, stride_frames=40, random_draws=1,
                                    video_clips=1, bootstrap=20),
        steps=steps, batch_size=2, lr=1e-3, lr_discriminator=1e-3, betas=(0.5, 0.999), log_every=1, eval_every=3,
        checkpoint_every=2, threads=1)


@pytest.mark.parametrize("pose_generator", ["posevae", "ms_sync"])
def test_short_run_on_one_batch_lowers_every_fitted_loss(processed_corpus: Path, syncers: Path,
                                                         pose_generator: str) -> None:
    """20 steps on one fixed batch lower the expression, landmark, lip-sync, multi-scale sync and pose
    reconstruction losses and the total. (KL starts at its minimum, with the posterior at the prior, and the GAN
    terms are adversarial: neither is expected to fall.)"""
    cfg = tiny_config(pose_generator)
    basis = ExpressionBasis.load(processed_corpus / "expression_basis.npz")
    train, _ = load_split_clips(processed_corpus, cfg.train_splits, cfg.eval_splits, cfg.window)
    clips = load_motion_clips(train, basis, speaker_styles(train))
    samples = [window_sample(clips[i % len(clips)], 3 * i, cfg.window, 2 * i) for i in range(2)]
    batch = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    if pose_generator == "ms_sync":  # MS-Sync's generator starts still (x_t = x_0, near the truth of 9 frames): move it
        for branch in model.pose.generator.branches:
            torch.nn.init.normal_(branch[-1].weight, std=0.3)
    experts = load_experts(syncers)
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=2e-3, betas=cfg.betas)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=2e-3, betas=cfg.betas)
    noise = torch.zeros(2, cfg.model.posevae.latent)
    logs = [train_step(model, CoeffLandmarks(basis), experts, batch, cfg, noise, opt_g, opt_d) for _ in range(20)]
    for key in ("expression", "landmark", "lip_sync", "ms_sync", "pose_rec", "total"):
        assert logs[-1][key] < logs[0][key], (key, logs[0][key], logs[-1][key])


def test_train_resume_checkpoint_and_report(processed_corpus: Path, syncers: Path, tmp_path: Path) -> None:
    cfg = tiny_config(steps=6)
    kw = {"processed": processed_corpus, "reports": tmp_path / "rep", "progress": False, "syncers": syncers}
    full = train_audio2coeff(cfg, 0, out=tmp_path / "a", tracker=NullTracker(), **kw)
    with pytest.raises(Killed):
        train_audio2coeff(cfg, 0, out=tmp_path / "b", tracker=KillAt(3), **kw)
    resumed = train_audio2coeff(cfg, 0, out=tmp_path / "b", tracker=NullTracker(), **kw)
    assert resumed.trained_steps == 4  # resumed from the step-2 checkpoint
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert full.history.rows == resumed.history.rows

    # checkpoint round trip: the loaded model is the trained one and generates
    model = load_audio2coeff(tmp_path / "a" / "checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, a["model"][k]), k
    rng = np.random.default_rng(0)
    motion = generate_motion(model, rng.normal(size=(20, 1, 80, 16)).astype(np.float32), np.zeros(73), seed=1)
    assert motion.shape == (20, 70) and np.isfinite(motion).all()
    again = train_audio2coeff(cfg, 0, out=tmp_path / "a", tracker=NullTracker(), **kw)
    assert again.trained_steps == 0  # complete: evaluated only

    rep = tmp_path / "rep"
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["lip_expert"].startswith("train_syncers ms1")
    lips = metrics["lips"]
    assert -1 <= lips["mouth_opening_r"]["mean"] <= 1
    assert lips["mouth_lmd"]["model"]["ci_low"] <= lips["mouth_lmd"]["model"]["mean"] <= \
        lips["mouth_lmd"]["model"]["ci_high"]
    assert set(metrics["rigid_offset"]) == {"200ms", "400ms", "800ms"}
    assert len(metrics["sync"]["offset_shift_plus"]) == metrics["eval_clips"]
    for name in ("curves.png", "mouth_opening.png", "history.json", "heldout.mp4"):
        assert (rep / name).stat().st_size > 0, name


def test_params_section_types_are_checked() -> None:
    import yaml

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train_audio2coeff"]
    cfg = from_dict(TrainAudio2CoeffConfig, section, "train_audio2coeff")
    assert cfg.model.pose_generator in ("posevae", "ms_sync")
    with pytest.raises(ConfigError, match="train_audio2coeff.model.pose_generator"):
        from_dict(TrainAudio2CoeffConfig, section | {"model": section["model"] | {"pose_generator": "lstm"}},
                  "train_audio2coeff")
    with pytest.raises(ConfigError, match="train_audio2coeff.ms_sync.weight"):
        from_dict(TrainAudio2CoeffConfig, section | {"ms_sync": {"weight": "1e-3"}}, "train_audio2coeff")
    with pytest.raises(ConfigError, match="loss weights must be >= 0"):
        from_dict(TrainAudio2CoeffConfig, section | {"ms_sync": {"weight": -1.0}}, "train_audio2coeff")


def test_stage_help_describes_the_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from stages.train_audio2coeff import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--syncers" in out and "pose_generator" in out and "ms_sync.weight" in out
