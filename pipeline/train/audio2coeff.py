"""Training and held-out evaluation of Audio2Coeff (method.md §5.1–5.5; TAVCE §III-E, MS-Sync §3.2–3.3).

One loop trains ExpNet together with the configured pose model (``model.pose_generator``):

- **ExpNet**: expression distance + landmark loss through the landmark 3DMM + lip-sync expert loss
  (``1 - S`` of the frozen 200 ms syncer ``ms1`` of `train_syncers`, on the landmarks of the predicted
  expression with the true pose; SadTalker's lip-reading expert is not available, which expert was used is
  recorded in metrics.json and the MLflow tags);
- **PoseVAE** (SadTalker): L1 reconstruction of the pose residuals, KL, least-squares GAN with ``netD_motion``
  (weights 1 / 1 / 0.7);
- **MS-Sync generator**: L2 reconstruction (MS-Sync Eq. 14), geometric GAN with D_f and D_s (MS-Sync Eq. 11–13),
  lambda_rec 1, lambda_adv 0.1, Adam betas (0, 0.999) at full size;
- **multi-scale sync loss** (MS-Sync Eq. 6–7) on the 68 landmarks of the whole generated motion (predicted
  expression and generated pose), frozen syncer pyramid ``ms1..ms4`` of `train_syncers`, weight ``ms_sync.weight``
  (lambda_av; 0 = off) for either pose model.

Each step is a generator step then a discriminator step; two Adam optimisers; keyed samples and keyed latent noise
(``sample_generator(seed, step)``), so a resumed run follows the uninterrupted one exactly.

Held-out evaluation (speakers never trained on; reference = each clip's frame 0; every figure with a clip-bootstrap
interval, against the reference held still and the training-set mean expression): mouth-opening Pearson r and
mouth LMD, the lip AV offset of the predicted mouth motion (true audio and audio shifted by +-``shift_frames``),
the rigid |AV-Off| of generated vs true vs randomly re-paired motion (MS-Sync Table 2) and pose diversity over
seeds. See `evaluate`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.checkpoint import save_checkpoint
from pipeline.config import to_dict
from pipeline.data.audio2coeff import (Audio2CoeffWindows, MotionClip, coefficient_landmarks, load_motion_clips,
                                       pose_statistics, speaker_styles)
from pipeline.data.corpus import MOUTH, RIGID, load_split_clips
from pipeline.data.sampling import sample_generator, sample_rng, seed_everything, step_loader
from pipeline.data.syncers import motion_features
from pipeline.faces.coeffs import EXPRESSION, ExpressionBasis, mouth_opening
from pipeline.io import atomic_path, file_digest, write_json
from pipeline.losses.audio2coeff import (CoeffLandmarks, coefficient_loss, hinge_discriminator_loss,
                                         hinge_generator_loss, kl_divergence, landmark_loss, lip_sync_loss,
                                         lsgan_discriminator_loss, lsgan_generator_loss, pose_reconstruction_loss,
                                         syncer_motion)
from pipeline.losses.syncers import MultiScaleSyncLoss
from pipeline.metrics.bootstrap import bootstrap_ci
from pipeline.models import count_parameters
from pipeline.models.audio2coeff import (CHECKPOINT_KIND, Audio2Coeff, Audio2CoeffConfig, generate_motion,
                                         load_sadtalker_weights)
from pipeline.models.audio2coeff.posevae import PoseVAE
from pipeline.models.syncer import Syncer, load_syncers
from pipeline.pyramid import build_pyramid
from pipeline.tracking import Tracker
from pipeline.train.common import History, LRSchedule, fingerprint, restore, resumable, scheduled_lr, torch_threads
from pipeline.train.distributed import Distributed
from pipeline.train.syncers import compare_offsets, sequence_offset
from pipeline.viz import draw_landmarks, plot_curves

log = logging.getLogger(__name__)

LIP_EXPERT = "train_syncers ms1 (200 ms, 68 landmarks, InfoNCE)"
MIN_EVAL_FRAMES = 17  # shortest held-out clip: one 5-step window at the 800 ms rigid level (4 x 4 + 1 frames)


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """Weights of ExpNet's and PoseVAE's terms (PoseVAE: SadTalker's 1 / 1 / 0.7)."""

    expression: float = 1.0  # coefficient distance
    landmark: float = 1.0  # frontalised 68-point distance (template units)
    lip_sync: float = 0.1  # lip-sync expert (1 - S)
    pose_reconstruction: float = 1.0
    kl: float = 1.0
    gan: float = 0.7


@dataclass(frozen=True)
class MSSyncLossConfig:
    """The multi-scale sync loss (MS-Sync Eq. 6) on the generated landmarks, for either pose model."""

    weight: float = 8.0  # lambda_av (MS-Sync 8); 0 = off


@dataclass(frozen=True)
class MSSyncGeneratorLoss:
    """Weights of the MS-Sync generator's own terms (MS-Sync Eq. 16)."""

    reconstruction: float = 1.0  # lambda_rec
    adversarial: float = 0.1  # lambda_adv


@dataclass(frozen=True)
class WeightsConfig:
    """Public weights to start from (null = random init)."""

    sadtalker: str | None = None  # SadTalker_V0.0.2_256.safetensors (or .pth with its keys) or the folder of the
    # auido2exp / auido2pose .pth files; needs the full model size and pose_generator posevae


@dataclass(frozen=True)
class EvaluationConfig:
    """Held-out report."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)  # PoseVAE samples for pose diversity (the first is the reported one)
    shift_frames: int = 5  # audio shifted by +- this many frames for the lip-offset test
    vshift: int = 15  # offsets searched (frames of each level)
    sequence_frames: int = 80  # rigid |AV-Off| sequences (MS-Sync Table 2)
    stride_frames: int = 40
    random_draws: int = 5  # random audio re-pairings per sequence
    video_clips: int = 2  # held-out clips in heldout.mp4
    bootstrap: int = 2000  # clip-bootstrap resamples


@dataclass(frozen=True)
class TrainAudio2CoeffConfig:
    """`train_audio2coeff` section of params.yaml."""

    model: Audio2CoeffConfig
    loss_weights: LossWeights
    ms_sync: MSSyncLossConfig
    ms_sync_generator: MSSyncGeneratorLoss
    weights: WeightsConfig
    evaluation: EvaluationConfig
    lip_expert: Literal["syncers", "none"] = "syncers"
    steps: int = 30000
    batch_size: int = 32
    lr: float = 1.0e-4
    lr_discriminator: float = 1.0e-4
    betas: tuple[float, float] = (0.0, 0.999)
    lr_schedule: LRSchedule = "constant"
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    log_every: int = 50
    eval_every: int = 0  # steps between held-out lip figures on the curves (0 = only at the end)
    checkpoint_every: int = 1000
    workers: int = 0
    threads: int = 1

    def validate(self) -> None:
        for name in ("steps", "eval_every", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_discriminator <= 0:
            raise ValueError("lr and lr_discriminator must be positive")
        weights = to_dict(self.loss_weights) | {"ms_sync.weight": self.ms_sync.weight} | {
            f"ms_sync_generator.{k}": v for k, v in to_dict(self.ms_sync_generator).items()}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {negative}")
        if set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"train_splits {self.train_splits} and eval_splits {self.eval_splits} overlap")
        if not self.evaluation.seeds or self.evaluation.shift_frames < 1 or self.evaluation.random_draws < 1:
            raise ValueError("evaluation needs >= 1 seed, shift_frames >= 1 and random_draws >= 1")

    @property
    def window(self) -> int:
        """Frames per training window: the pose reference + seq_len generated frames."""
        return self.model.seq_len + 1


def training_part(cfg: TrainAudio2CoeffConfig) -> dict[str, Any]:
    """What the resume fingerprint covers: everything but evaluation and run-environment keys."""
    d = to_dict(cfg)
    for key in ("evaluation", "eval_every", "workers", "threads"):
        d.pop(key)
    return d


# ----------------------------------------------------------------------------------------------------------------
# Frozen experts
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Experts:
    """The frozen syncers of `train_syncers`: the pyramid (multi-scale loss), ms1 (lip expert), rigid1..3."""

    pyramid: MultiScaleSyncLoss
    lip: MultiScaleSyncLoss
    ms1: Syncer
    rigid: list[Syncer]


def load_experts(path: str | os.PathLike[str], device: str = "cpu") -> Experts:
    syncers = load_syncers(path, device=device)
    ms = sorted((n for n in syncers if n.startswith("ms")), key=lambda n: int(n[2:]))
    rigid = sorted((n for n in syncers if n.startswith("rigid")), key=lambda n: int(n[5:]))
    if not ms or not rigid:
        raise ValueError(f"{path}: needs ms* and rigid* syncers, has {sorted(syncers)}")
    return Experts(MultiScaleSyncLoss([syncers[n] for n in ms]), MultiScaleSyncLoss([syncers[ms[0]]]),
                   syncers[ms[0]], [syncers[n] for n in rigid])


# ----------------------------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------------------------
def train_step(model: Audio2Coeff, lm3dmm: CoeffLandmarks, experts: Experts | None, batch: dict[str, torch.Tensor],
               cfg: TrainAudio2CoeffConfig, noise: torch.Tensor, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, dist: Distributed | None = None) -> dict[str, float]:
    """A generator step, then a discriminator step on the same (detached) generated poses; returns the losses.
    `dist`: gradient averaging over torchrun ranks and the autocast precision (None: one plain fp32 process)."""
    dist = dist or Distributed()
    with dist.autocast():
        return _train_step(model, lm3dmm, experts, batch, cfg, noise, opt_g, opt_d, dist)


def _train_step(model: Audio2Coeff, lm3dmm: CoeffLandmarks, experts: Experts | None, batch: dict[str, torch.Tensor],
                cfg: TrainAudio2CoeffConfig, noise: torch.Tensor, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, dist: Distributed) -> dict[str, float]:
    w, b = cfg.loss_weights, batch
    coeffs = b["coeffs"]  # (B, W, 70)
    mean, std = model.pose_mean, model.pose_std
    exp = model.expnet(b["mel"], b["ref_expression"], b["ratio"])  # (B, W, 64)
    pose_true = coeffs[..., 64:70]  # (B, W, 6)
    pose_ref = pose_true[:, 0]  # (B, 6)
    logs: dict[str, torch.Tensor] = {}

    if isinstance(model.pose, PoseVAE):
        res_true = (pose_true[:, 1:] - pose_ref[:, None]) / std  # (B, L, 6)
        out = model.pose(b["mel"][:, 1:], res_true, (pose_ref - mean) / std, b["style"], noise)
        real_seq, fake_seq = res_true, out.motion
        logs["pose_rec"] = pose_reconstruction_loss(out.motion, res_true)
        logs["kl"] = kl_divergence(out.mu, out.logvar)
        logs["gan_g"] = lsgan_generator_loss(model.pose.netD_motion(out.motion))
        pose_loss = w.pose_reconstruction * logs["pose_rec"] + w.kl * logs["kl"] + w.gan * logs["gan_g"]
        pose_pred = pose_ref[:, None] + out.motion * std  # (B, L, 6)
    else:
        x0 = (pose_ref - mean) / std  # (B, 6)
        xs = model.pose.generator(x0, b["mel"][:, 1:])  # (B, L, 6)
        x_true = (pose_true[:, 1:] - mean) / std
        real_seq, fake_seq = torch.cat([x0[:, None], x_true], 1), torch.cat([x0[:, None], xs], 1)  # (B, W, 6)
        logs["pose_rec"] = F.mse_loss(xs, x_true)  # MS-Sync Eq. 14
        logs["gan_g"] = hinge_generator_loss(model.pose.frame_disc(xs)) + \
            hinge_generator_loss(model.pose.window_disc(fake_seq))  # MS-Sync Eq. 11 + 12
        g = cfg.ms_sync_generator
        pose_loss = g.reconstruction * logs["pose_rec"] + g.adversarial * logs["gan_g"]
        pose_pred = xs * std + mean

    logs["expression"] = coefficient_loss(exp, coeffs[..., EXPRESSION])
    logs["landmark"] = landmark_loss(lm3dmm.aligned(exp, b["identity"][:, None]),
                                     lm3dmm.aligned(coeffs[..., EXPRESSION], b["identity"][:, None]))
    total = pose_loss + w.expression * logs["expression"] + w.landmark * logs["landmark"]
    if experts is not None and cfg.lip_expert == "syncers" and w.lip_sync > 0:
        lm = lm3dmm(torch.cat([exp, pose_true], -1), b["identity"], b["scale"])  # (B, W, 68, 3)
        logs["lip_sync"] = lip_sync_loss(experts.lip, b["fbank"], syncer_motion(lm, b["point_mean"], b["iod"]))
        total = total + w.lip_sync * logs["lip_sync"]
    if experts is not None and cfg.ms_sync.weight > 0:
        motion = torch.cat([exp, torch.cat([pose_ref[:, None], pose_pred], 1)], -1)  # (B, W, 70)
        lm = lm3dmm(motion, b["identity"], b["scale"])
        logs["ms_sync"] = experts.pyramid(b["fbank"], syncer_motion(lm, b["point_mean"], b["iod"]))
        total = total + cfg.ms_sync.weight * logs["ms_sync"]
    opt_g.zero_grad(set_to_none=True)
    dist.backward(total, opt_g)
    dist.step(opt_g)

    # discriminator step (the generator's parameters get no gradient here)
    if isinstance(model.pose, PoseVAE):
        d = model.pose.netD_motion
        d_loss = lsgan_discriminator_loss(d(real_seq), d(fake_seq.detach()))
    else:
        fake = fake_seq.detach()
        d_loss = hinge_discriminator_loss(model.pose.frame_disc(real_seq[:, 1:]), model.pose.frame_disc(fake[:, 1:])) \
            + hinge_discriminator_loss(model.pose.window_disc(real_seq), model.pose.window_disc(fake))  # MS-Sync Eq. 15
    opt_d.zero_grad(set_to_none=True)
    dist.backward(d_loss, opt_d)
    dist.step(opt_d)
    return {**{k: float(v.detach()) for k, v in logs.items()}, "total": float(total.detach()),
            "gan_d": float(d_loss.detach())}


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Audio2CoeffResult:
    """What `train_audio2coeff` returns (metrics JSON-able) and what the report plots need."""

    metrics: dict[str, Any]
    history: History
    traces: list[dict[str, np.ndarray]] = field(default_factory=list)  # mouth openings per held-out clip
    trained_steps: int = 0
    seconds: float = 0.0


def build_model(cfg: TrainAudio2CoeffConfig) -> Audio2Coeff:
    model = Audio2Coeff(cfg.model)
    if cfg.weights.sadtalker:
        load_sadtalker_weights(model, cfg.weights.sadtalker)
    return model


def _to_device(batch: dict[str, Any], dev: str | torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(dev) for k, v in batch.items()}


def train_audio2coeff(cfg: TrainAudio2CoeffConfig, seed: int, *, processed: str | os.PathLike[str],
                      out: str | os.PathLike[str], reports: str | os.PathLike[str], tracker: Tracker,
                      progress: bool = True, syncers: str | os.PathLike[str],
                      dist: Distributed | None = None) -> Audio2CoeffResult | None:
    """Train (or resume, or re-evaluate) Audio2Coeff into ``out/checkpoint.pt``; evaluate held-out; write the report.

    Args:
        cfg: the `train_audio2coeff` params section.
        seed: common seed (init, samples, latent noise).
        processed: the preprocess stage's folder (manifest, features, ``expression_basis.npz``).
        out: model folder (``checkpoint.pt`` resumed when its fingerprint matches, re-evaluated when complete).
        reports: metrics.json, history.json, curves.png, mouth_opening.png, pose.png, heldout.mp4.
        tracker: receives the losses, the held-out lip figures and the training time.
        syncers: the ``train_syncers`` checkpoint (lip expert, multi-scale loss pyramid, rigid metric).
        dist: this process's place in a torchrun run (None: one plain process; its device is `common.device`);
            ranks other than 0 train their share of every batch and return None.
    """
    with torch_threads(cfg.threads):
        result = _train(Path(processed), Path(out), Path(syncers), cfg, seed, tracker, progress, Path(reports),
                        dist or Distributed())
    if result is None:
        return None
    tracker.log_metrics({"train/seconds": result.seconds})
    tracker.set_tags({"lip_expert": result.metrics["lip_expert"],
                      "pose_generator": cfg.model.pose_generator,
                      "ms_sync_loss": "on" if cfg.ms_sync.weight > 0 else "off"})
    return result


def _train(processed: Path, out_dir: Path, syncers_path: Path, cfg: TrainAudio2CoeffConfig, seed: int,
           tracker: Tracker, progress: bool, reports: Path, dist: Distributed) -> Audio2CoeffResult | None:
    dist.check_batch(cfg.batch_size, "train_audio2coeff.batch_size")
    ckpt_path = out_dir / "checkpoint.pt"
    basis = ExpressionBasis.load(processed / "expression_basis.npz")
    train_clips, eval_clips = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, cfg.window,
                                               MIN_EVAL_FRAMES)
    styles = speaker_styles(train_clips)
    if len(styles) > cfg.model.posevae.num_classes:
        raise ValueError(f"{len(styles)} training speakers but model.posevae.num_classes is "
                         f"{cfg.model.posevae.num_classes}")
    train_set = load_motion_clips(train_clips, basis, styles)
    held_out = load_motion_clips(eval_clips, basis, {})
    log.info("audio2coeff: %d train clips (%d speakers), %d held-out clips, pose generator %s, ms_sync.weight %g",
             len(train_set), len(styles), len(held_out), cfg.model.pose_generator, cfg.ms_sync.weight)
    experts = load_experts(syncers_path, str(dist.device))
    levels, win = len(experts.pyramid.syncers), experts.ms1.cfg.window
    if cfg.ms_sync.weight > 0 and cfg.window < 2 ** (levels - 1) * (win - 1) + 1:
        raise ValueError(f"model.posevae.seq_len {cfg.model.seq_len}: windows of {cfg.window} frames are too short for "
                         f"the {levels}-level syncer pyramid of {syncers_path} (needs {2 ** (levels - 1) * (win - 1)} "
                         f"+ 1 frames); use a longer seq_len or ms_sync.weight 0")
    fp = fingerprint(training_part(cfg), seed, file_digest(processed / "manifest.parquet"),
                     file_digest(processed / "expression_basis.npz"), file_digest(syncers_path))

    seed_everything(seed)
    model = build_model(cfg)
    model.set_pose_statistics(*pose_statistics(train_set))
    model, lm3dmm = dist.prepare(model, CoeffLandmarks(basis))
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr_discriminator, betas=cfg.betas)
    start, history = 0, History()
    state = resumable(ckpt_path, fp, CHECKPOINT_KIND)
    if state is not None:
        start, history = restore(state, model, opt_g, str(ckpt_path))
        opt_d.load_state_dict(state["extra"]["optimizer_d"])
        if start < cfg.steps:
            log.info("resuming %s at step %d of %d", ckpt_path, start, cfg.steps)

    def save(step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, config=cfg, model=model, optimizer=opt_g, step=step,
                        fingerprint=fp, extra={"history": history.rows, "seed": seed, "styles": styles,
                                               "optimizer_d": opt_d.state_dict(), "lip_expert": LIP_EXPERT})

    mean_expr = np.concatenate([c.coeffs[:, EXPRESSION] for c in train_set]).mean(0)
    t0 = time.perf_counter()
    if start < cfg.steps:
        dataset = Audio2CoeffWindows(train_set, cfg.window, seed)
        first, stop = span = dist.span(cfg.batch_size)
        loader = step_loader(dataset, cfg.batch_size, start, cfg.steps, cfg.workers, span=span)
        bar = tqdm(loader, total=cfg.steps - start, desc="audio2coeff", disable=not progress, leave=False)
        model.train()
        for s, batch in zip(range(start, cfg.steps), bar):
            for opt, lr in ((opt_g, cfg.lr), (opt_d, cfg.lr_discriminator)):
                for group in opt.param_groups:
                    group["lr"] = scheduled_lr(lr, s, cfg.steps, cfg.lr_schedule)
            noise = torch.randn(cfg.batch_size, cfg.model.posevae.latent, generator=sample_generator(seed, s))
            losses = train_step(model, lm3dmm, experts, _to_device(batch, dist.device), cfg,
                                noise[first:stop].to(dist.device), opt_g, opt_d, dist)
            done = s + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                losses = dist.mean_values(losses)  # over ranks: the global batch's losses (one all-reduce per log)
                row = {f"train/{k}": v for k, v in losses.items()}
                if ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps) and dist.is_main:
                    quick = lip_figures(model, held_out, basis, mean_expr)
                    row |= {"val/mouth_r": quick["mouth_r"], "val/mouth_lmd": quick["mouth_lmd"]}
                    model.train()
                history.add(done, **row)
                tracker.log_metrics(row, step=done)
                bar.set_postfix(total=f"{losses['total']:.3f}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        bar.close()
    trained = max(0, cfg.steps - start)
    seconds = time.perf_counter() - t0 if trained else 0.0
    if trained:
        log.info("trained %d steps in %.0f s", trained, seconds)
    else:
        log.info("%s is complete (%d steps): evaluating only", ckpt_path, cfg.steps)
    if cfg.steps == 0:
        save(0)
    dist.barrier()  # the final checkpoint is written before any rank leaves
    if not dist.is_main:
        return None

    model.eval()
    metrics, traces, videos = evaluate(model, held_out, train_set, basis, experts, cfg, seed)
    metrics["lip_expert"] = LIP_EXPERT if cfg.lip_expert == "syncers" else "none"
    metrics["pose_generator"] = cfg.model.pose_generator
    metrics["ms_sync_weight"] = cfg.ms_sync.weight
    metrics["parameters"] = {"expnet": count_parameters(model.expnet), "pose": count_parameters(model.pose)}
    metrics["steps"], metrics["train_clips"], metrics["eval_clips"] = cfg.steps, len(train_set), len(held_out)
    result = Audio2CoeffResult(metrics, history, traces, trained, round(seconds, 1))
    write_report(result, cfg, reports, videos)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Held-out evaluation
# ----------------------------------------------------------------------------------------------------------------
def shifted_mel(clip: MotionClip, shift: int) -> np.ndarray:
    """The clip's mel windows with the audio delayed by `shift` frames (frame k gets the window of frame k - shift,
    clamped at the clip's ends)."""
    idx = np.clip(np.arange(clip.frames) - shift, 0, clip.frames - 1)
    return clip.mel[idx]


def predict(model: Audio2Coeff, clip: MotionClip, seed: int = 0, shift: int = 0) -> np.ndarray:
    """(T, 70) generated motion of a held-out clip from its frame 0 (style 0: held-out speakers have no class)."""
    return generate_motion(model, shifted_mel(clip, shift), clip.coeffs[0], pose_style=0, seed=seed)


def _aligned(expr: np.ndarray, clip: MotionClip, basis: ExpressionBasis) -> np.ndarray:
    return clip.identity + basis.reconstruct(expr).reshape(len(expr), 68, 3)  # (T, 68, 3)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def mouth_lmd(expr: np.ndarray, true_expr: np.ndarray, clip: MotionClip, basis: ExpressionBasis) -> float:
    """Mean distance of the 20 mouth points of the frontalised shapes (template units = inter-ocular distances)."""
    d = _aligned(expr, clip, basis)[:, MOUTH] - _aligned(true_expr, clip, basis)[:, MOUTH]
    return float(np.linalg.norm(d, axis=-1).mean())


@torch.no_grad()
def lip_figures(model: Audio2Coeff, clips: Sequence[MotionClip], basis: ExpressionBasis,
                mean_expr: np.ndarray) -> dict[str, float]:
    """Mean over held-out clips of the mouth-opening r and mouth LMD (the curves' held-out figures)."""
    model.eval()
    rs, lmds = [], []
    for clip in clips:
        expr = predict(model, clip)[:, EXPRESSION]
        true = clip.coeffs[:, EXPRESSION]
        rs.append(_pearson(mouth_opening(_aligned(expr, clip, basis)), mouth_opening(_aligned(true, clip, basis))))
        lmds.append(mouth_lmd(expr, true, clip, basis))
    return {"mouth_r": float(np.nanmean(rs)), "mouth_lmd": float(np.mean(lmds))}


def _interval(values: Sequence[float], cfg: TrainAudio2CoeffConfig, seed: int) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    lo, hi = bootstrap_ci(v, n_boot=cfg.evaluation.bootstrap, seed=seed)
    return {"mean": float(v.mean()), "ci_low": lo, "ci_high": hi, "n": len(v)}


def _offset(syncer: Syncer, audio: np.ndarray, landmarks: np.ndarray, points: slice, vshift: int) -> int:
    """AV offset (frames) of one clip's landmark motion against its audio rows, at the syncer's level 1."""
    return sequence_offset(syncer, audio, motion_features(landmarks, points), vshift)[0]


def _shift_motion(lm: np.ndarray, shift: int) -> np.ndarray:
    idx = np.clip(np.arange(len(lm)) - shift, 0, len(lm) - 1)
    return lm[idx]


def rigid_offsets(experts: Experts, motion: Sequence[np.ndarray], audio: Sequence[np.ndarray],
                  cfg: TrainAudio2CoeffConfig, seed: int) -> dict[str, dict[int, list[float]]]:
    """|AV-Off| per rigid level for each (landmarks, audio) pair of `motion` / `audio` on sequences of
    ``sequence_frames``, and for the same motion re-paired with the audio of another clip (``random``,
    ``random_draws`` seeded draws per sequence); MS-Sync Table 2 protocol."""
    ev = cfg.evaluation
    levels = len(experts.rigid)
    out: dict[str, dict[int, list[float]]] = {"pair": {i: [] for i in range(1, levels + 1)},
                                              "random": {i: [] for i in range(1, levels + 1)}}
    lengths = np.array([len(m) for m in motion])
    q = 0
    for c, (lm, a) in enumerate(zip(motion, audio)):
        length = min(ev.sequence_frames, len(lm))
        x_full = motion_features(lm, RIGID)
        for start in range(0, len(lm) - length + 1, ev.stride_frames):
            x = build_pyramid(x_full[start:start + length], levels)
            rows = slice(4 * start, 4 * (start + length))
            draws = [build_pyramid(a[rows], levels)]
            cands = np.flatnonzero((lengths >= length) & (np.arange(len(motion)) != c))
            rng = sample_rng(seed, q, 0)
            for _ in range(ev.random_draws if len(cands) else 0):
                o = int(rng.choice(cands))
                s = int(rng.integers(lengths[o] - length + 1))
                draws.append(build_pyramid(audio[o][4 * s:4 * (s + length)], levels))
            for i, syncer in enumerate(experts.rigid):
                for k, a_pyr in enumerate(draws):
                    off, _ = sequence_offset(syncer, a_pyr[i], x[i], ev.vshift)
                    out["pair" if k == 0 else "random"][i + 1].append(abs(off))
            q += 1
    return out


@torch.no_grad()
def evaluate(model: Audio2Coeff, clips: Sequence[MotionClip], train_set: Sequence[MotionClip],
             basis: ExpressionBasis, experts: Experts, cfg: TrainAudio2CoeffConfig, seed: int
             ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The held-out report (module docstring): metrics, mouth-opening traces, (pred, true landmarks, wav) for videos."""
    ev = cfg.evaluation
    mean_expr = np.concatenate([c.coeffs[:, EXPRESSION] for c in train_set]).mean(0)
    rows: dict[str, list[float]] = {k: [] for k in (
        "r_model", "lmd_model", "lmd_reference", "lmd_train_mean", "gain_vs_reference", "gain_vs_train_mean",
        "offset_true_audio", "offset_truth", "offset_shift_plus", "offset_shift_minus", "expected_plus",
        "expected_minus")}
    traces, videos = [], []
    gen_lm, true_lm, audio = [], [], []
    diversity: dict[str, list[float]] = {"model_std_deg": [], "truth_std_deg": [], "across_seed_std_deg": []}
    sh = ev.shift_frames
    for n, clip in enumerate(clips):
        true = clip.coeffs[:, :70]
        pred = predict(model, clip, seed=ev.seeds[0])
        expr, true_expr = pred[:, EXPRESSION], true[:, EXPRESSION]
        ref_expr = np.repeat(true_expr[:1], clip.frames, 0)
        mean_e = np.repeat(mean_expr[None], clip.frames, 0)
        open_true = mouth_opening(_aligned(true_expr, clip, basis))
        open_pred = mouth_opening(_aligned(expr, clip, basis))
        rows["r_model"].append(_pearson(open_pred, open_true))
        lmd = {k: mouth_lmd(e, true_expr, clip, basis) for k, e in
               (("model", expr), ("reference", ref_expr), ("train_mean", mean_e))}
        for k, v in lmd.items():
            rows[f"lmd_{k}"].append(v)
        rows["gain_vs_reference"].append(lmd["reference"] - lmd["model"])
        rows["gain_vs_train_mean"].append(lmd["train_mean"] - lmd["model"])
        traces.append({"clip": clip.clip_id, "truth": open_true, "model": open_pred,
                       "reference": mouth_opening(_aligned(ref_expr, clip, basis)),
                       "train_mean": mouth_opening(_aligned(mean_e, clip, basis))})

        # lip sync: predicted expression with the pose held at the reference (only the face moves)
        def still(e: np.ndarray, clip: MotionClip = clip) -> np.ndarray:
            c = np.concatenate([e, np.repeat(clip.coeffs[:1, 64:70], len(e), 0), clip.coeffs[:, 70:71]], 1)
            return coefficient_landmarks(c, clip.identity, basis)
        off = {name: _offset(experts.ms1, clip.fbank, still(e), slice(0, 68), ev.vshift) for name, e in (
            ("offset_true_audio", expr), ("offset_truth", true_expr),
            ("offset_shift_plus", predict(model, clip, ev.seeds[0], sh)[:, EXPRESSION]),
            ("offset_shift_minus", predict(model, clip, ev.seeds[0], -sh)[:, EXPRESSION]))}
        off["expected_plus"] = _offset(experts.ms1, clip.fbank, _shift_motion(still(true_expr), sh), slice(0, 68),
                                       ev.vshift)
        off["expected_minus"] = _offset(experts.ms1, clip.fbank, _shift_motion(still(true_expr), -sh), slice(0, 68),
                                        ev.vshift)
        for k, v in off.items():
            rows[k].append(float(v))

        # head motion: the whole generated motion (expression + pose) as landmarks
        full = np.concatenate([pred, clip.coeffs[:, 70:71]], 1)
        gen_lm.append(coefficient_landmarks(full, clip.identity, basis))
        true_lm.append(clip.landmarks)
        audio.append(clip.fbank)
        seeds_pose = [pred[:, 64:67]] + [predict(model, clip, seed=s)[:, 64:67] for s in ev.seeds[1:]]
        diversity["model_std_deg"].append(float(np.degrees(np.mean([p.std(0).mean() for p in seeds_pose]))))
        diversity["truth_std_deg"].append(float(np.degrees(true[:, 64:67].std(0).mean())))
        diversity["across_seed_std_deg"].append(float(np.degrees(np.std(seeds_pose, axis=0).mean())))
        if n < ev.video_clips:
            videos.append((gen_lm[-1], clip.landmarks, clip.wav))

    metrics: dict[str, Any] = {"lips": {
        "mouth_opening_r": _interval(rows["r_model"], cfg, seed),
        "mouth_lmd": {k: _interval(rows[f"lmd_{k}"], cfg, seed) for k in ("model", "reference", "train_mean")},
        "lmd_gain_vs_reference": _interval(rows["gain_vs_reference"], cfg, seed),
        "lmd_gain_vs_train_mean": _interval(rows["gain_vs_train_mean"], cfg, seed),
        "lmd_unit": "inter-ocular distance (frontalised)",
        "baselines_r": "undefined (constant mouth opening)"}}
    expected_p, expected_m = np.array(rows["expected_plus"]), np.array(rows["expected_minus"])
    o_true, o_p, o_m = (np.array(rows[k]) for k in ("offset_true_audio", "offset_shift_plus", "offset_shift_minus"))
    metrics["sync"] = {
        "expert": LIP_EXPERT,
        "abs_offset_true_audio": _interval(np.abs(o_true), cfg, seed),
        "abs_offset_truth": _interval(np.abs(rows["offset_truth"]), cfg, seed),
        "offset_true_audio": rows["offset_true_audio"],
        "offset_shift_plus": rows["offset_shift_plus"], "offset_shift_minus": rows["offset_shift_minus"],
        "expected_shift_plus": rows["expected_plus"], "expected_shift_minus": rows["expected_minus"],
        "within_1_frame_true_audio": float(np.mean(np.abs(o_true) <= 1)),
        "follows_shift": float(np.mean(np.concatenate([np.abs(o_p - expected_p) <= 1, np.abs(o_m - expected_m) <= 1]))),
        "shift_frames": sh}
    rig_gen = rigid_offsets(experts, gen_lm, audio, cfg, seed)
    rig_true = rigid_offsets(experts, true_lm, audio, cfg, seed)
    metrics["rigid_offset"] = {
        f"{200 * 2 ** (lvl - 1)}ms": {"generated": compare_offsets(np.array(rig_gen["pair"][lvl]),
                                                                  np.array(rig_true["random"][lvl])),
                                      "ground_truth": compare_offsets(np.array(rig_true["pair"][lvl]),
                                                                     np.array(rig_true["random"][lvl]))}
        for lvl in rig_gen["pair"]}
    metrics["rigid_generated_better_than_random"] = {k: v["generated"]["gt_better"]
                                                     for k, v in metrics["rigid_offset"].items()}
    metrics["pose_diversity"] = {k: _interval(v, cfg, seed) for k, v in diversity.items()} | {
        "seeds": list(ev.seeds), "unit": "degrees, std over time of yaw/pitch/roll (mean of the three)"}
    return metrics, traces, videos


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def write_report(result: Audio2CoeffResult, cfg: TrainAudio2CoeffConfig, reports: str | os.PathLike[str],
                 videos: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """metrics.json, history.json, curves.png, mouth_opening.png and heldout.mp4."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", result.metrics)
    result.history.save(reports / "history.json")
    names = ["expression", "landmark", "lip_sync", "ms_sync", "pose_rec", "kl", "gan_g", "gan_d"]
    plot_curves(result.history, reports / "curves.png", {
        "expression losses": [f"train/{k}" for k in names[:4]],
        "pose losses": [f"train/{k}" for k in names[4:]],
        "held-out lips": ["val/mouth_r", "val/mouth_lmd"]}, title=f"train_audio2coeff ({cfg.model.pose_generator})")
    plot_traces(result.traces, reports / "mouth_opening.png")
    write_landmark_video(videos, reports / "heldout.mp4")


def plot_traces(traces: Sequence[dict[str, np.ndarray]], path: Path, max_clips: int = 4) -> None:
    """Mouth opening over time: truth, model and the two baselines, one panel per held-out clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(traces)[:max_clips]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.2 * len(shown)), squeeze=False)
    for ax, tr in zip(axes[:, 0], shown):
        for key, color in (("truth", "black"), ("model", "tab:red"), ("reference", "tab:gray"),
                           ("train_mean", "tab:blue")):
            ax.plot(tr[key], color=color, label=key, lw=1.2 if key in ("truth", "model") else 0.8)
        ax.set_title(str(tr["clip"]), fontsize=9)
        ax.set_ylabel("inner-lip gap")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=4)
    axes[-1, 0].set_xlabel("frame (25 fps)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_landmark_video(videos: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path,
                         size: int = 256) -> None:
    """Predicted (left, red) beside true (right, green) 68 landmarks of held-out clips, audio muxed."""
    from pipeline.audio import FPS, SAMPLE_RATE
    from pipeline.media import write_video

    if not videos:
        return
    frames, wavs = [], []
    per_frame = SAMPLE_RATE // FPS
    for pred, true, wav in videos:
        for p, t in zip(pred, true):
            left = draw_landmarks(np.zeros((size, size, 3), np.uint8), p * size, (255, 80, 80))
            right = draw_landmarks(np.zeros((size, size, 3), np.uint8), t * size, (80, 255, 80))
            frames.append(np.concatenate([left, right], 1))
        w = np.zeros(len(pred) * per_frame, np.float32)
        w[:min(len(w), len(wav))] = wav[:len(w)]
        wavs.append(w)
    write_video(path, np.stack(frames), fps=FPS, audio=np.concatenate(wavs), sample_rate=SAMPLE_RATE)
