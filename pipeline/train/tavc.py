"""Training stage 1 of TAVCE: learn the TAVC metric (TAVCE §III-B, TAVCE Eq. 1-4, Algorithm 1 stage 1; method.md §3).

:func:`train_tavc` trains ``E^a`` and ``E^v`` with the TAVCE Eq. 3/4 loss on positive (i-1, i) and negative (i-1, j)
samples of the training speakers, checkpoints (resumable), and evaluates on the held-out speakers: mean positive and
negative similarity ``⟨C^a, C^v⟩`` (paper 0.507 vs 0.158), their ratio with a clip-cluster bootstrap interval, and
the fraction of samples whose positive beats their negative.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.checkpoint import save_checkpoint
from pipeline.data.corpus import load_split_clips
from pipeline.data.sampling import seed_everything, step_loader
from pipeline.data.tavc import TAVCDataset, TAVCEvalSet, build_eval_set, min_clip_frames
from pipeline.io import atomic_path, file_digest, write_json
from pipeline.losses.tavc import TAVCLoss, tavc_similarity
from pipeline.metrics.bootstrap import bootstrap_ci
from pipeline.models import count_parameters, module_device
from pipeline.models.tavc import CHECKPOINT_KIND, TAVC, TAVCConfig, load_pretrained
from pipeline.tracking import Tracker
from pipeline.train.common import (History, LRSchedule, fingerprint, restore, resumable, scheduled_lr,
                                   torch_threads)
from pipeline.train.distributed import Distributed
from pipeline.viz import plot_curves

log = logging.getLogger(__name__)

PAPER_POS_SIM = 0.507  # TAVCE §IV: mean positive similarity on HDTF (method.md §7)
PAPER_NEG_SIM = 0.158  # ... and negative
# Held-out positive / negative similarity ratio the default corpus must reach (the paper's is 3.2 on HDTF); with the
# lower end of its clip-bootstrap interval above 1, i.e. a positive gap that is not an accident of a few clips.
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class TAVCWeightsConfig:
    """Public checkpoints to initialise the encoders from (null = random initialisation).

    Attributes:
        audio: wav2lip.pth / lipsync_expert.pth / SadTalker checkpoint (needs model.audio_width 1.0).
        visual: torchvision resnet18-*.pth or arcface_torch IResNet18 backbone.pth, matching model.visual_backbone
            (needs model.visual_width 1.0).
    """

    audio: str | None = None
    visual: str | None = None


@dataclass(frozen=True)
class TrainTAVCConfig:
    """`train_tavc` section of params.yaml (with `common.seed`): model dimensions plus training settings."""

    model: TAVCConfig = TAVCConfig()
    weights: TAVCWeightsConfig = TAVCWeightsConfig()
    tau: int = 3  # τ: negatives j satisfy |j - i| >= τ
    alpha: float = 1.0  # α, weight of the negative term of TAVCE Eq. 3
    batch_size: int = 16
    lr: float = 1e-4  # Adam
    lr_schedule: LRSchedule = "constant"  # paper: constant; cosine decays lr to 0 at `steps`
    steps: int = 40_000
    augment: bool = False
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_samples_per_clip: int = 48
    eval_every: int = 1000  # held-out curve every N steps (0: only at the end)
    bootstrap: int = 2000  # resamples of the clip-cluster bootstrap
    log_every: int = 50
    checkpoint_every: int = 1000
    workers: int = 2
    roi_cache_mb: int = 512
    prefetch_frames: int = 24  # ROIs decoded and cached on each side of a seek (cheap next to the seek itself)
    threads: int = 0  # torch intra-op threads while training (0 = torch's default); results depend on it (float sums)

    def validate(self) -> None:
        for name in ("tau", "batch_size", "eval_samples_per_clip", "log_every", "checkpoint_every", "bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "eval_every", "workers", "roi_cache_mb", "prefetch_frames", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or self.alpha < 0:
            raise ValueError(f"lr must be > 0 and alpha >= 0, got lr {self.lr}, alpha {self.alpha}")
        if not self.train_splits or not self.eval_splits:
            raise ValueError("train_splits and eval_splits must not be empty")
        if set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"eval_splits {list(self.eval_splits)} overlap train_splits {list(self.train_splits)}")
        self.model.validate()


@dataclass(frozen=True)
class HeldOutResult:
    """Per-sample similarities of the held-out evaluation set."""

    pos: np.ndarray  # (N,) ⟨C^a_{i-1,i}, C^v_{i-1,i}⟩
    neg: np.ndarray  # (N,) ⟨C^a_{i-1,i}, C^v_{i-1,j}⟩
    clip_ids: np.ndarray  # (N,)
    speakers: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 2) (i, j)


@dataclass(frozen=True)
class TAVCRunResult:
    """What :func:`train_tavc` hands back: the report metrics (as in metrics.json), curves, held-out samples, and
    the training wall time (kept out of metrics.json: the same params and data give the same file)."""

    metrics: dict[str, Any]
    history: History
    heldout: HeldOutResult
    seconds: float = 0.0


def learning_rate(cfg: TrainTAVCConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based), see :func:`pipeline.train.common.scheduled_lr`."""
    return scheduled_lr(cfg.lr, step, cfg.steps, cfg.lr_schedule)


def _fingerprint_config(cfg: TrainTAVCConfig) -> TrainTAVCConfig:
    # Worker count and ROI cache size change neither the batches nor the weights (keyed sampling), so a run may
    # resume with other values; nor do the evaluation settings.
    # Threads change float summation order only (a resumed run stays valid), like in the syncers stage.
    return dataclasses.replace(cfg, workers=0, roi_cache_mb=0, eval_every=0, bootstrap=1, log_every=1, threads=0,
                               prefetch_frames=0)


@torch.no_grad()
def evaluate(model: TAVC, data: TAVCEvalSet, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative similarity of every held-out sample, (N,) each, with the model in eval mode."""
    was_training = model.training
    model.eval()
    pos, neg = [], []
    dev = module_device(model)
    for s in range(0, len(data.mel), batch_size):
        f_a, f_v = model(data.mel[s:s + batch_size].to(dev), data.roi[s:s + batch_size].to(dev))  # (b,2,D),(b,3,D)
        pos.append(tavc_similarity(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 1]).cpu())
        neg.append(tavc_similarity(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 2]).cpu())
    model.train(was_training)
    return torch.cat(pos).numpy().astype(np.float64), torch.cat(neg).numpy().astype(np.float64)


def summarize(pos: np.ndarray, neg: np.ndarray, clip_ids: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Report numbers of the held-out evaluation.

    ``ratio`` = mean(pos) / mean(neg); its 95 % interval resamples whole clips (samples of a clip are correlated).
    """
    pairs = np.stack([pos, neg], axis=1)  # (N, 2)

    def ratio(rows: np.ndarray) -> float:
        return float(rows[:, 0].mean() / max(rows[:, 1].mean(), 1e-12))

    lo, hi = bootstrap_ci(pairs, ratio, n_boot=n_boot, seed=seed, groups=clip_ids)
    pos_lo, pos_hi = bootstrap_ci(pos, n_boot=n_boot, seed=seed, groups=clip_ids)
    neg_lo, neg_hi = bootstrap_ci(neg, n_boot=n_boot, seed=seed, groups=clip_ids)
    return {
        "pos_sim": float(pos.mean()), "pos_sim_ci_low": pos_lo, "pos_sim_ci_high": pos_hi,
        "neg_sim": float(neg.mean()), "neg_sim_ci_low": neg_lo, "neg_sim_ci_high": neg_hi,
        "ratio": ratio(pairs), "ratio_ci_low": lo, "ratio_ci_high": hi,
        "pos_gt_neg": float((pos > neg).mean()),
        "samples": int(len(pos)), "clips": int(len(np.unique(clip_ids))),
    }


def train_tavc(cfg: TrainTAVCConfig, seed: int, *, processed: str | os.PathLike[str], out: str | os.PathLike[str],
               reports: str | os.PathLike[str], tracker: Tracker, progress: bool = True,
               dist: Distributed | None = None) -> TAVCRunResult | None:
    """Train (or resume, or reuse) the TAVC metric, evaluate it on the held-out speakers and write the report.

    Args:
        cfg: model and training settings (the `train_tavc` params section).
        seed: `common.seed` (initialisation, sample draws, evaluation samples, bootstrap).
        processed: output folder of the preprocess stage (manifest, features, cropped clips).
        out: model folder; ``checkpoint.pt`` (kind ``tavc``) is written there every `checkpoint_every` steps and at
            the end. A checkpoint of the same config and data (fingerprint) is resumed; one at `steps` is only
            evaluated; any other is replaced.
        reports: report folder: metrics.json, heldout_samples.csv, curves.png, similarity_hist.png.
        tracker: receives per-step losses, held-out curves and the training time.
        progress: show a tqdm bar.
        dist: this process's place in a torchrun run (None: one plain process); ranks other than 0 train their
            share of every batch and return None.

    Runs with ``cfg.threads`` torch threads (restored afterwards) when it is not 0.
    """
    with torch_threads(cfg.threads):
        run = _train_tavc(Path(processed), Path(out), cfg, seed, tracker, progress, dist or Distributed())
    if run is None:
        return None
    tracker.log_metrics({"train/seconds": run.seconds})
    write_report(run, reports)
    return run


def write_report(run: TAVCRunResult, reports: str | os.PathLike[str]) -> None:
    """metrics.json, heldout_samples.csv (one row per held-out sample) and the plots of :func:`plot_report`."""
    import pandas as pd

    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", run.metrics)
    with atomic_path(reports / "heldout_samples.csv", suffix=".csv") as tmp:
        pd.DataFrame(heldout_table(run)).to_csv(tmp, index=False)
    plot_report(run, reports)


def _train_tavc(processed: Path, out: Path, cfg: TrainTAVCConfig, seed: int, tracker: Tracker,
                progress: bool, dist: Distributed) -> TAVCRunResult | None:
    cfg.validate()
    dist.check_batch(cfg.batch_size, "train_tavc.batch_size")
    min_frames = min_clip_frames(cfg.tau)
    train_clips, eval_clips = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, min_frames)

    fp = fingerprint(_fingerprint_config(cfg), seed, file_digest(processed / "manifest.parquet"))
    ckpt_path = out / "checkpoint.pt"
    seed_everything(seed)
    model = TAVC(cfg.model)
    state = resumable(ckpt_path, fp, CHECKPOINT_KIND)
    if state is None:
        load_pretrained(model, audio=cfg.weights.audio, visual=cfg.weights.visual)
    model, = dist.prepare(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if state is not None:
        start, history = restore(state, model, optimizer, str(ckpt_path))
        log.info("resuming %s at step %d of %d", ckpt_path, start, cfg.steps)
    else:
        start, history = 0, History()

    t0 = time.perf_counter()
    eval_set = build_eval_set(eval_clips, seed, cfg.tau, cfg.eval_samples_per_clip)
    log.info("TAVC: %d train clips, %d held-out clips (%d samples, built in %.1f s); %s parameters",
             len(train_clips), len(eval_clips), len(eval_set.mel), time.perf_counter() - t0,
             f"{count_parameters(model):,}")

    def eval_curve(step: int) -> None:
        if not dist.is_main:
            return
        pos, neg = evaluate(model, eval_set)
        row = {"heldout_pos": float(pos.mean()), "heldout_neg": float(neg.mean()),
               "heldout_ratio": float(pos.mean() / max(neg.mean(), 1e-12))}
        history.add(step, **row)
        tracker.log_metrics({k.replace("heldout_", "heldout/"): v for k, v in row.items()}, step=step)

    def checkpoint(step: int) -> None:
        if not dist.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, config=cfg, model=model, optimizer=optimizer, step=step,
                        fingerprint=fp, extra={"history": history.rows, "seed": seed})

    train_seconds = 0.0
    if start < cfg.steps:
        if start == 0 and cfg.eval_every:
            eval_curve(0)
        dataset = TAVCDataset(train_clips, seed, cfg.tau, cfg.augment, cfg.roi_cache_mb, cfg.prefetch_frames)
        loader = step_loader(dataset, cfg.batch_size, start, cfg.steps, cfg.workers, span=dist.span(cfg.batch_size))
        loss_fn = TAVCLoss(cfg.alpha)
        model.train()
        window: list[tuple[float, float, float]] = []
        t_train = time.perf_counter()
        bar = tqdm(loader, total=cfg.steps, initial=start, desc="train_tavc", disable=not progress, unit="step")
        for step, batch in enumerate(bar, start=start + 1):  # `step` = optimizer steps done after this batch
            with dist.autocast():
                f_a, f_v = model(batch["mel"].to(dist.device), batch["roi"].to(dist.device))  # (B,2,D), (B,3,D)
            f_a, f_v = f_a.float(), f_v.float()  # the similarities and the loss in fp32
            res = loss_fn(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 1], f_v[:, 2])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step - 1)
            optimizer.zero_grad(set_to_none=True)
            dist.backward(res.loss, optimizer)
            dist.step(optimizer)

            window.append((res.loss.item(), res.pos.mean().item(), res.neg.mean().item()))
            if step % cfg.log_every == 0 or step == cfg.steps:
                means = dist.mean_values(dict(zip(("loss", "pos", "neg"), np.mean(window, axis=0))))
                loss, pos, neg = means["loss"], means["pos"], means["neg"]
                window.clear()
                history.add(step, loss=loss, train_pos=pos, train_neg=neg)
                tracker.log_metrics({"train/loss": loss, "train/pos_sim": pos, "train/neg_sim": neg}, step=step)
                bar.set_postfix(loss=f"{loss:.3f}", pos=f"{pos:.3f}", neg=f"{neg:.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                eval_curve(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if step == cfg.steps and cfg.eval_every:
                    eval_curve(step)  # the final point of the curve goes into the final checkpoint
                checkpoint(step)
        bar.close()
        train_seconds = time.perf_counter() - t_train
    else:
        log.info("%s is complete (step %d): evaluating only", ckpt_path, start)
    dist.barrier()  # the final checkpoint is written before any rank leaves
    if not dist.is_main:
        return None

    pos, neg = evaluate(model, eval_set)
    heldout = summarize(pos, neg, eval_set.clip_ids, cfg.bootstrap, seed)
    heldout["speakers"] = sorted(set(eval_set.speakers.tolist()))
    metrics = {
        "heldout": heldout,
        "target": {"ratio_min": TARGET_RATIO,
                   "met": bool(heldout["ratio"] >= TARGET_RATIO and heldout["ratio_ci_low"] > 1.0)},
        "paper": {"pos_sim": PAPER_POS_SIM, "neg_sim": PAPER_NEG_SIM, "ratio": PAPER_POS_SIM / PAPER_NEG_SIM},
        "train": {"steps": cfg.steps, "resumed_from": start,
                  "final_loss": history.last("loss"), "clips": len(train_clips),
                  "speakers": len({c.speaker for c in train_clips})},
        "parameters": parameter_counts(model),
    }
    result = HeldOutResult(pos, neg, eval_set.clip_ids, eval_set.speakers, eval_set.positions)
    return TAVCRunResult(metrics=metrics, history=history, heldout=result, seconds=round(train_seconds, 1))


def parameter_counts(model: TAVC) -> dict[str, int]:
    """Parameters of E^a (encoder + FC), E^v (backbone + FC) and the whole metric."""
    audio = count_parameters(model.audio_encoder) + count_parameters(model.audio_fc)
    visual = count_parameters(model.visual_encoder) + count_parameters(model.visual_fc)
    return {"audio_encoder": audio, "visual_encoder": visual, "total": count_parameters(model)}


def plot_report(run: TAVCRunResult, folder: str | os.PathLike[str]) -> list[Path]:
    """``curves.png`` (loss and similarities over training) and ``similarity_hist.png`` (held-out distributions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves = folder / "curves.png"
    plot_curves(run.history, curves, {
        "loss (TAVCE Eq. 3)": ["loss"],
        "⟨C^a, C^v⟩ train (batch mean)": ["train_pos", "train_neg"],
        "⟨C^a, C^v⟩ held-out speakers": ["heldout_pos", "heldout_neg"],
    }, title="TAVC metric")
    hist = folder / "similarity_hist.png"
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bins = np.linspace(0, 1, 26)
    h = run.metrics["heldout"]
    ax.hist(run.heldout.pos, bins=bins, alpha=0.6, label=f"positive (i-1, i), mean {h['pos_sim']:.3f}")
    ax.hist(run.heldout.neg, bins=bins, alpha=0.6, label=f"negative (i-1, j), mean {h['neg_sim']:.3f}")
    ax.set_xlabel("⟨C^a, C^v⟩")
    ax.set_ylabel("samples")
    ax.set_title(f"held-out speakers: ratio {h['ratio']:.2f} [{h['ratio_ci_low']:.2f}, {h['ratio_ci_high']:.2f}]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(hist, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [curves, hist]


def heldout_table(run: TAVCRunResult) -> list[dict[str, Any]]:
    """One row per held-out sample (clip, speaker, i, j, pos, neg), for a CSV next to the report."""
    h = run.heldout
    return [{"clip_id": c, "speaker": s, "i": int(p[0]), "j": int(p[1]), "pos": float(a), "neg": float(b)}
            for c, s, p, a, b in zip(h.clip_ids, h.speakers, h.positions, h.pos, h.neg)]
