"""Training and held-out evaluation of the SyncNet lip-sync expert (method.md §6.1; thesis §2.3.1).

Training: Adam on the contrastive margin loss (thesis Eq. 2.14) over balanced positive / same-clip shifted-audio negative
pairs (:mod:`pipeline.data.syncnet`), resumable from ``<out>/checkpoint.pt``.

Evaluation on the held-out speakers (``eval_splits``), with syncnet_python's protocol (:func:`pipeline.metrics.lse.lse`,
embeddings of every window, vshift 15):
- **artificial shifts**: the clip's audio delayed by s = -S..+S video frames (MFCC rows moved by 4 s, edge-padded).
  Delayed audio means video window k matches audio window k + s, which syncnet_python reports as offset **-s**; a
  clip counts as correct when the predicted offset is within ±1 frame of -s;
- **synced vs shuffled**: LSE-D / LSE-C of the clip's own audio (s = 0) and of another held-out clip's audio
  (preferably another speaker's), cut or edge-padded to the clip's length;
- **metric sanity** (:class:`pipeline.metrics.lse.DomainCheck`): the held-out clips are ground truth, so the report's
  ``status`` is ``out_of_domain`` (with the reasons under ``domain``) when the offset of their own audio is not
  within ±1 frame for most clips or their LSE-C is not above shuffled audio's: its numbers then mean nothing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.audio import MFCC_ROWS_PER_VIDEO_FRAME
from pipeline.checkpoint import save_checkpoint
from pipeline.data.corpus import CorpusError, load_split_clips
from pipeline.data.sampling import seed_everything, step_loader
from pipeline.data.syncnet import (WINDOW, SyncClip, SyncPairDataset, audio_input, audio_windows, collate_pairs,
                                   fit_length, load_sync_clips, shift_rows, video_input)
from pipeline.io import atomic_path, file_digest, write_json
from pipeline.losses.syncnet import ContrastiveMarginLoss, pair_distance
from pipeline.metrics.bootstrap import bootstrap_ci
from pipeline.metrics.lse import domain_check, lse
from pipeline.models import count_parameters, module_device
from pipeline.models.syncnet import CHECKPOINT_KIND, SyncNet, SyncNetConfig, load_syncnet_v2
from pipeline.tracking import Tracker
from pipeline.train.common import History, fingerprint, restore, resumable
from pipeline.train.distributed import Distributed
from pipeline.viz import plot_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSyncNetConfig:
    """`train_syncnet` section of params.yaml: the model and how it is trained and evaluated.

    Attributes:
        model: network size and input region (:class:`SyncNetConfig`).
        pretrained: path of a ``syncnet_v2.model`` to start from (null: random init). Needs the syncnet_v2 layout;
            with ``steps: 0`` the stage just evaluates the public weights.
        steps: optimizer steps.
        batch_size: pairs per step (half positives, half negatives).
        lr: Adam learning rate.
        margin: T_m of thesis Eq. 2.14 (scale of the embedding distances).
        min_neg_shift / max_neg_shift: |audio shift| range of negatives, in video frames.
        flip: random horizontal flips of the video window.
        train_splits / eval_splits: manifest splits used for training / held-out evaluation (speaker-disjoint).
        eval_max_shift: artificial audio shifts -S..+S frames in the offset test.
        vshift: offsets searched by the LSE protocol (syncnet_python: 15).
        eval_batch: windows per forward pass when embedding held-out clips.
        workers: DataLoader worker processes (0 = load in the training process).
        log_every / eval_every / checkpoint_every: steps between loss logs, held-out evaluations (0: only at the
            end) and checkpoints.
    """

    model: SyncNetConfig
    pretrained: str | None
    steps: int
    batch_size: int
    lr: float
    margin: float
    min_neg_shift: int
    max_neg_shift: int
    flip: bool
    train_splits: tuple[str, ...]
    eval_splits: tuple[str, ...]
    eval_max_shift: int
    vshift: int
    eval_batch: int
    workers: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"need steps >= 0 and an even batch_size >= 2 (half positives), got {self.steps}, "
                             f"{self.batch_size}")
        if not 1 <= self.min_neg_shift <= self.max_neg_shift:
            raise ValueError(f"need 1 <= min_neg_shift <= max_neg_shift, got {self.min_neg_shift}, "
                             f"{self.max_neg_shift}")
        if set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"train_splits {list(self.train_splits)} and eval_splits {list(self.eval_splits)} overlap")
        if not 0 <= self.eval_max_shift < self.vshift:
            raise ValueError(f"need 0 <= eval_max_shift < vshift, got {self.eval_max_shift}, {self.vshift}")
        if min(self.log_every, self.checkpoint_every, self.eval_batch) < 1 or self.eval_every < 0 or self.workers < 0:
            raise ValueError("log_every, checkpoint_every, eval_batch must be >= 1; eval_every, workers >= 0")
        if self.pretrained is not None:
            v2 = SyncNetConfig.syncnet_v2()
            if (self.model.image_size, self.model.audio_channels, self.model.lip_channels, self.model.fc_hidden,
                    self.model.embed_dim) != (v2.image_size, v2.audio_channels, v2.lip_channels, v2.fc_hidden,
                                              v2.embed_dim):
                raise ValueError("pretrained syncnet_v2 weights need the syncnet_v2 model size (image_size 224, "
                                 "audio_channels [64, 192, 384, 256, 256, 512], lip_channels [96, 256, 256, 256, 256, "
                                 "512], fc_hidden 512, embed_dim 1024)")


# ----------------------------------------------------------------------------------------------------------------
# Held-out evaluation
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_video(model: SyncNet, clip: SyncClip, batch: int) -> torch.Tensor:
    """v for every window k = 0 .. n_windows - 1 of the clip -> (N, D)."""
    out = []
    for i in range(0, clip.n_windows, batch):
        ks = range(i, min(clip.n_windows, i + batch))
        faces = np.stack([clip.faces[k:k + WINDOW] for k in ks])  # (b, 5, S, S, 3)
        out.append(model.forward_lip(video_input(faces).to(module_device(model))).cpu())
    return torch.cat(out)  # (N, D)


@torch.no_grad()
def embed_audio(model: SyncNet, mfcc: np.ndarray, n_windows: int, batch: int) -> torch.Tensor:
    """a for every window k = 0 .. n_windows - 1 of an (N, 13) int16-scale MFCC -> (N, D)."""
    out = []
    for i in range(0, n_windows, batch):
        windows = audio_input(audio_windows(mfcc, range(i, min(n_windows, i + batch))))
        out.append(model.forward_aud(windows.to(module_device(model))).cpu())
    return torch.cat(out)  # (N, D)


def shuffle_partner(clips: list[SyncClip], i: int) -> int:
    """Index of the clip whose audio replaces clip i's in the shuffled test: the first clip of another speaker from
    half-way round the list on (so the partners differ from clip to clip), else the clip half-way round."""
    n = len(clips)
    half = max(1, n // 2)
    for j in [(i + half + d) % n for d in range(n)]:
        if clips[j].clip.speaker != clips[i].clip.speaker:
            return j
    return (i + half) % n


@dataclass
class SyncEvaluation:
    """Held-out results. `rows`: one dict per (clip, artificial shift); `pairs`: one per clip (synced vs shuffled);
    `curves`: clip id -> {'synced': mean distance per offset, 'shuffled': ...}; `metrics`: the summary."""

    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    curves: dict[str, dict[str, np.ndarray]]
    metrics: dict[str, Any]


def evaluate_sync(model: SyncNet, clips: list[SyncClip], max_shift: int, vshift: int, batch: int) -> SyncEvaluation:
    """Offset accuracy under artificial shifts and LSE-D / LSE-C of synced vs shuffled audio (module docstring)."""
    if len(clips) < 2:
        raise CorpusError(f"the shuffled-audio test needs >= 2 held-out clips, got {len(clips)}")
    was_training = model.training
    model.eval()
    rows, pairs, curves = [], [], {}
    try:
        for i, c in enumerate(clips):
            v = embed_video(model, c, batch)  # (N, D)
            for s in range(-max_shift, max_shift + 1):
                a = embed_audio(model, shift_rows(c.mfcc, MFCC_ROWS_PER_VIDEO_FRAME * s), c.n_windows, batch)
                r = lse(v, a, vshift)
                rows.append({"clip": c.clip.clip_id, "speaker": c.clip.speaker, "shift": s, "expected": -s,
                             "offset": r.offset, "lse_d": r.lse_d, "lse_c": r.lse_c})
                if s == 0:
                    synced = r
            other = clips[shuffle_partner(clips, i)]
            shuffled = lse(v, embed_audio(model, fit_length(other.mfcc, c.mfcc.shape[0]), c.n_windows, batch), vshift)
            pairs.append({"clip": c.clip.clip_id, "speaker": c.clip.speaker, "shuffled_from": other.clip.clip_id,
                          "synced_offset": synced.offset, "synced_lse_d": synced.lse_d, "synced_lse_c": synced.lse_c,
                          "shuffled_offset": shuffled.offset, "shuffled_lse_d": shuffled.lse_d,
                          "shuffled_lse_c": shuffled.lse_c, "windows": c.n_windows})
            curves[c.clip.clip_id] = {"synced": synced.mean_dist, "shuffled": shuffled.mean_dist}
    finally:
        model.train(was_training)
    return SyncEvaluation(rows=rows, pairs=pairs, curves=curves, metrics=summarize(rows, pairs))


def summarize(rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary metrics of :func:`evaluate_sync` (means over clips; 95 % cluster-bootstrap interval over clips)."""
    err = np.array([abs(r["offset"] - r["expected"]) for r in rows], dtype=np.float64)
    groups = np.array([r["clip"] for r in rows])
    within = (err <= 1).astype(np.float64)
    lo, hi = bootstrap_ci(within, groups=groups)

    def mean(key: str) -> float:
        return float(np.mean([p[key] for p in pairs]))

    synced_c, shuffled_c = mean("synced_lse_c"), mean("shuffled_lse_c")
    # Metric sanity (pipeline.metrics.lse.DomainCheck): the held-out clips are ground truth, so an extractor that does
    # not find their own audio at offset 0, or is not more confident on it than on shuffled audio, is out of its domain.
    domain = domain_check([p["synced_offset"] for p in pairs], [p["synced_lse_c"] for p in pairs],
                          [p["shuffled_lse_c"] for p in pairs])
    return {
        "status": domain.status,
        "domain": domain.as_dict(),
        "offset_acc_pm1": float(within.mean()),
        "offset_acc_pm1_ci95": [lo, hi],
        "offset_acc_exact": float((err == 0).mean()),
        "offset_mae": float(err.mean()),
        "shifted_cases": len(rows),
        "synced": {"lse_d": mean("synced_lse_d"), "lse_c": synced_c,
                   "offset_acc_pm1": float(np.mean([abs(p["synced_offset"]) <= 1 for p in pairs]))},
        "shuffled": {"lse_d": mean("shuffled_lse_d"), "lse_c": shuffled_c},
        "lse_c_gap": synced_c - shuffled_c,
        "synced_beats_shuffled": float(np.mean([p["synced_lse_c"] > p["shuffled_lse_c"] for p in pairs])),
        "eval_clips": len(pairs),
        "eval_windows": int(sum(p["windows"] for p in pairs)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SyncNetRun:
    """What :func:`train_syncnet` produced: the trained model, its curves, the final held-out evaluation and
    the summary `metrics` (evaluation + training facts)."""

    model: SyncNet
    history: History
    evaluation: SyncEvaluation
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training wall time (MLflow and the log; not metrics.json)


def extractor_name(cfg: TrainSyncNetConfig) -> str:
    """Name every reported number carries (method.md §6.5): public weights vs a self-trained proxy."""
    if cfg.pretrained is not None:
        return "syncnet_v2" if cfg.steps == 0 else "syncnet_v2 fine-tuned on this corpus"
    m = cfg.model
    return f"tavce SyncNet (self-trained, {m.face_region} face {m.image_size}px, embed {m.embed_dim})"


def build_model(cfg: TrainSyncNetConfig) -> SyncNet:
    """A fresh SyncNet of `cfg.model`, initialised from `cfg.pretrained` when given."""
    model = SyncNet(cfg.model)
    if cfg.pretrained is not None:
        model.load_state_dict(load_syncnet_v2(cfg.pretrained).state_dict())
    return model


def train_syncnet(cfg: TrainSyncNetConfig, seed: int, *, processed: str | os.PathLike[str],
                  out: str | os.PathLike[str], reports: str | os.PathLike[str], tracker: Tracker,
                  progress: bool = True, dist: Distributed | None = None) -> SyncNetRun | None:
    """Train (or resume, or skip when finished) and evaluate a SyncNet, and write its report.

    Args:
        cfg: the `train_syncnet` params section.
        seed: common seed (model init and every sample's randomness).
        processed: preprocess stage output (manifest, clips, features).
        out: model folder; ``checkpoint.pt`` there is resumed when it has the same fingerprint.
        reports: report folder: metrics.json, offsets.csv (one row per clip and shift), synced_vs_shuffled.csv
            (one row per clip), curves.png, offsets.png.
        tracker: receives per-step losses, held-out curves and the training time.
        progress: show a tqdm bar.
        dist: this process's place in a torchrun run (None: one plain process); ranks other than 0 train their
            share of every batch and return None.
    """
    run = _train_syncnet(cfg, seed, Path(processed), Path(out), tracker, progress, dist or Distributed())
    if run is None:
        return None
    tracker.log_metrics({"train/seconds": run.seconds})
    write_report(run, reports, cfg.vshift)
    return run


def write_report(run: SyncNetRun, reports: str | os.PathLike[str], vshift: int) -> None:
    """metrics.json, the two per-clip tables and the figures of :func:`plot_report`."""
    import pandas as pd

    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", run.metrics)
    for name, table in (("offsets.csv", run.evaluation.rows), ("synced_vs_shuffled.csv", run.evaluation.pairs)):
        with atomic_path(reports / name) as tmp:
            pd.DataFrame(table).to_csv(tmp, index=False, float_format="%.4f")
    plot_report(run, reports, vshift)


def _train_syncnet(cfg: TrainSyncNetConfig, seed: int, processed: Path, out_dir: Path, tracker: Tracker,
                   progress: bool, dist: Distributed) -> SyncNetRun | None:
    ckpt_path = out_dir / "checkpoint.pt"
    manifest = processed / "manifest.parquet"
    if not manifest.is_file():
        raise CorpusError(f"{manifest}: not found (run the preprocess stage first)")
    weights_version = file_digest(cfg.pretrained) if cfg.pretrained is not None else None
    fp = fingerprint(cfg, seed, file_digest(manifest), weights_version)

    dist.check_batch(cfg.batch_size, "train_syncnet.batch_size")
    seed_everything(seed)
    model, = dist.prepare(build_model(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history, start = History(), 0
    state = resumable(ckpt_path, fp, CHECKPOINT_KIND)
    if state is not None:
        start, history = restore(state, model, optimizer, str(ckpt_path))
        log.info("resuming %s at step %d of %d", ckpt_path, start, cfg.steps)
    log.info("SyncNet %s: %.2f M parameters", cfg.model, count_parameters(model) / 1e6)

    train, held = load_split_clips(processed, cfg.train_splits, cfg.eval_splits,
                                   min_train_frames=WINDOW + 2 * cfg.min_neg_shift + 1, min_eval_frames=WINDOW + 1)
    log.info("cutting %s face regions of %d held-out clips", cfg.model.face_region, len(held))
    held_clips = load_sync_clips(held, cfg.model.face_region, cfg.model.image_size)

    def save(step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, config=cfg, model=model, optimizer=optimizer, step=step,
                        fingerprint=fp, extra={"history": history.rows})

    train_seconds = 0.0
    if start < cfg.steps:
        t_train = time.perf_counter()
        log.info("cutting %s face regions of %d train clips", cfg.model.face_region, len(train))
        train_clips = load_sync_clips(train, cfg.model.face_region, cfg.model.image_size)
        dataset = SyncPairDataset(train_clips, seed, cfg.min_neg_shift, cfg.max_neg_shift, cfg.flip)
        loader = step_loader(dataset, cfg.batch_size, start, cfg.steps, cfg.workers, collate_pairs,
                             span=dist.span(cfg.batch_size))
        loss_fn = ContrastiveMarginLoss(cfg.margin)
        sums = {"loss": 0.0, "d_pos": 0.0, "d_neg": 0.0}
        count = 0
        model.train()
        bar = tqdm(loader, total=cfg.steps, initial=start, desc="train_syncnet", disable=not progress, leave=False)
        for step, batch in zip(range(start, cfg.steps), bar):
            label = batch.label.to(dist.device)
            with dist.autocast():
                out = model(batch.video.to(dist.device), batch.audio.to(dist.device))  # v, a: (B, D)
                d = pair_distance(out.video.float(), out.audio.float())  # (B,)
                loss = loss_fn(d, label)
            optimizer.zero_grad(set_to_none=True)
            dist.backward(loss, optimizer)
            dist.step(optimizer)

            done = step + 1
            pos = label > 0.5
            d = d.detach()
            sums["loss"] += loss.item()
            sums["d_pos"] += d[pos].mean().item()
            sums["d_neg"] += d[~pos].mean().item()
            count += 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                values = dist.mean_values({k: v / count for k, v in sums.items()})
                history.add(done, **values)
                tracker.log_metrics(values, step=done)
                bar.set_postfix(loss=f"{values['loss']:.3f}", d_pos=f"{values['d_pos']:.2f}",
                                d_neg=f"{values['d_neg']:.2f}")
                sums, count = dict.fromkeys(sums, 0.0), 0
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps and dist.is_main:
                _log_eval(evaluate_sync(model, held_clips, cfg.eval_max_shift, cfg.vshift, cfg.eval_batch).metrics,
                          done, history, tracker)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        bar.close()
        train_seconds = time.perf_counter() - t_train
    elif state is None:  # steps == 0: evaluate the initial (pretrained) weights, keep them as the output
        save(0)
    else:
        log.info("%s already holds all %d steps: evaluating only", ckpt_path, cfg.steps)
    dist.barrier()  # the final checkpoint is written before any rank leaves
    if not dist.is_main:
        return None

    evaluation = evaluate_sync(model, held_clips, cfg.eval_max_shift, cfg.vshift, cfg.eval_batch)
    _log_eval(evaluation.metrics, cfg.steps, history, tracker)
    last = history.rows[-1] if history.rows else {}
    metrics = {
        "extractor": extractor_name(cfg),
        **evaluation.metrics,
        "targets": {"in_domain": evaluation.metrics["status"] == "in_domain",
                    "offset_acc_pm1_ge_0.8": evaluation.metrics["offset_acc_pm1"] >= 0.8,
                    "lse_c_synced_gt_shuffled": evaluation.metrics["lse_c_gap"] > 0},
        "train": {"steps": cfg.steps, "clips": len(train), "parameters": count_parameters(model),
                  **{k: last[k] for k in ("loss", "d_pos", "d_neg") if k in last}},
    }
    return SyncNetRun(model=model.eval(), history=history, evaluation=evaluation, metrics=metrics,
                      seconds=round(train_seconds, 1))


def _log_eval(m: dict[str, Any], step: int, history: History, tracker: Tracker) -> None:
    values = {"eval_offset_acc_pm1": m["offset_acc_pm1"], "eval_lse_d_synced": m["synced"]["lse_d"],
              "eval_lse_c_synced": m["synced"]["lse_c"], "eval_lse_d_shuffled": m["shuffled"]["lse_d"],
              "eval_lse_c_shuffled": m["shuffled"]["lse_c"]}
    if m["status"] != "in_domain":
        log.warning("SyncNet at step %d is out of its domain on the held-out clips: %s", step, "; ".join(
            m["domain"]["reasons"]))
    if history.rows and history.rows[-1]["step"] == step:
        history.rows[-1].update(values)
    else:
        history.add(step, **values)
    tracker.log_metrics(values, step=step)


# ----------------------------------------------------------------------------------------------------------------
# Report figures
# ----------------------------------------------------------------------------------------------------------------
def plot_report(run: SyncNetRun, folder: str | os.PathLike[str], vshift: int) -> list[Path]:
    """Write curves.png (training + held-out curves) and offsets.png (offset test, distance-vs-offset curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves = folder / "curves.png"
    plot_curves(run.history, curves, {
        "contrastive loss (thesis Eq. 2.14)": ["loss"],
        "pair distance": ["d_pos", "d_neg"],
        "held-out offset accuracy (±1)": ["eval_offset_acc_pm1"],
        "held-out LSE-C": ["eval_lse_c_synced", "eval_lse_c_shuffled"],
    }, title=run.metrics.get("extractor", ""))

    ev = run.evaluation
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    exp = np.array([r["expected"] for r in ev.rows])
    pred = np.array([r["offset"] for r in ev.rows])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(pred))
    lim = max(int(np.abs(exp).max()) + 2, int(np.abs(pred).max()) + 1)
    ax0.fill_between([-lim, lim], [-lim - 1, lim - 1], [-lim + 1, lim + 1], color="g", alpha=0.12, label="±1 frame")
    ax0.plot([-lim, lim], [-lim, lim], "g--", lw=1)
    ax0.scatter(exp + jitter, pred, s=12, alpha=0.7)
    ax0.set(xlabel="expected offset (frames) = -audio delay", ylabel="predicted AV offset",
            title=("OUT OF DOMAIN - " if ev.metrics["status"] != "in_domain" else "")
            + f"artificial shifts: {ev.metrics['offset_acc_pm1']:.0%} within ±1",
            xlim=(-lim, lim), ylim=(-vshift - 1, vshift + 1))
    ax0.legend(fontsize=8)
    offsets = vshift - np.arange(2 * vshift + 1)  # offset of each mean_dist entry (syncnet_python sign)
    for i, (clip, c) in enumerate(ev.curves.items()):
        ax1.plot(offsets, c["synced"], color="tab:blue", alpha=0.7, label="synced" if i == 0 else None)
        ax1.plot(offsets, c["shuffled"], color="tab:red", alpha=0.7, label="shuffled" if i == 0 else None)
    ax1.set(xlabel="AV offset (frames)", ylabel="mean distance",
            title=f"LSE-C synced {ev.metrics['synced']['lse_c']:.2f} vs shuffled {ev.metrics['shuffled']['lse_c']:.2f}")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    fig.suptitle(run.metrics.get("extractor", ""))
    fig.tight_layout()
    offsets_png = folder / "offsets.png"
    with atomic_path(offsets_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [curves, offsets_png]


__all__ = ["TrainSyncNetConfig", "SyncEvaluation", "SyncNetRun", "evaluate_sync", "train_syncnet", "write_report",
           "plot_report", "build_model", "extractor_name"]
