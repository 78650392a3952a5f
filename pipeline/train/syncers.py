"""Training and evaluation of the MS-Sync syncers (method.md §6.2; MS-Sync §3.1, §4.3).

Two families of small syncers (`pipeline.models.syncer.Syncer`), trained one after the other by the same loop:

- ``ms1`` .. ``ms4``: the syncer pyramid on all 68 landmarks, InfoNCE (MS-Sync Eq. 2) with N same-clip hard negatives at
  the finer levels and N_coarse cross-clip negatives at the coarsest level. Frozen, they make the multi-scale sync
  loss (`pipeline.losses.syncers.MultiScaleSyncLoss`, `pipeline.losses.syncers.load_pyramid`).
- ``rigid1`` .. ``rigid3``: the rigid AV-offset metric (MS-Sync §4.3, Table 2): the 31 rigid landmarks 17-47,
  triplet loss, same-clip negatives, 200/400/800 ms.

All syncers live in one ``nn.ModuleDict`` with one AdamW optimizer; only the syncer of the current phase gets
gradients (``zero_grad(set_to_none=True)``), and AdamW skips parameters without a gradient, so the phases are
independent while one checkpoint with one global step counter describes the whole run (resume mid-phase included).

Evaluation on the held-out speakers (`eval_splits`):
- per syncer: top-1 accuracy of the positive among 1 + N candidates (chance 1 / (1 + N)) and the mean loss;
- per family and level: the offset search of `pipeline.metrics.lse.lse` on sequences of `sequence_frames` frames
  (windows with stride 1 at that level; offsets in steps of that level), |AV-Off| of the ground truth vs the same
  motion re-paired with audio of another held-out clip (`random_draws` seeded draws per sequence); mean +- std and a
  one-sided Mann-Whitney U test (ground truth smaller), as MS-Sync Table 2;
- metric sanity (`pipeline.metrics.lse.DomainCheck`) per cell (``domain``), and ``status: out_of_domain`` when a rigid
  scale does not recognise the held-out ground truth (offset within ±1 step for most sequences, LSE-C above the
  re-paired audio's).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.checkpoint import save_checkpoint
from pipeline.config import to_dict
from pipeline.data.corpus import RIGID, load_split_clips
from pipeline.data.sampling import sample_rng, seed_everything, step_loader
from pipeline.data.syncers import (ClipStreams, NegativeSource, SyncerWindows, eval_sequences, load_streams,
                                   sequence_pyramids)
from pipeline.io import file_digest, write_json
from pipeline.losses.syncers import InfoNCELoss, TripletLoss
from pipeline.metrics.lse import domain_check, lse
from pipeline.models import count_parameters, module_device
from pipeline.models.syncer import CHECKPOINT_KIND, Syncer, SyncerConfig
from pipeline.pyramid import level_windows
from pipeline.tracking import Tracker
from pipeline.train.common import History, fingerprint, restore, resumable, torch_threads
from pipeline.train.distributed import Distributed
from pipeline.viz import plot_curves

log = logging.getLogger(__name__)

ALL_POINTS = slice(0, 68)
FAMILY_POINTS = {"ms": ALL_POINTS, "rigid": RIGID}
FRAME_MS = 40  # one video frame at 25 fps


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncerSize:
    """Encoder widths shared by every syncer (see `SyncerConfig`)."""

    hidden: int = 64
    embed_dim: int = 64


@dataclass(frozen=True)
class PyramidConfig:
    """The MS-Sync syncer pyramid (all 68 landmarks, InfoNCE)."""

    levels: int = 4  # 200, 400, 800, 1600 ms
    steps: int = 1000  # optimiser steps per syncer
    negatives: int = 12  # N same-clip hard negatives (levels 1 .. levels-1)
    coarse_negatives: int = 48  # N cross-clip negatives at the coarsest level
    coarse_negatives_from: Literal["same_speaker", "any_clip"] = "same_speaker"  # which other clips
    min_offset: int = 2  # hard negatives start at least this many steps (of their level) from the positive
    temperature: float = 1.0  # InfoNCE softmax temperature (paper: 1)


@dataclass(frozen=True)
class RigidConfig:
    """Syncers of the rigid AV-offset metric (31 rigid landmarks, triplet loss, same-clip negatives)."""

    levels: int = 3  # 200, 400, 800 ms
    steps: int = 1000
    negatives: int = 1  # negatives per anchor (1 = plain triplets; more are averaged)
    min_offset: int = 3
    margin: float = 0.2  # on the L2 distance of unit embeddings (range [0, 2])
    padding_negative: bool = True  # also push in-sync distances below 1, the offset search's zero padding


@dataclass(frozen=True)
class OffsetEvalConfig:
    """Offset search on held-out sequences (MS-Sync Table 2 protocol)."""

    sequence_frames: int = 80  # frames per test sequence (whole clip when shorter)
    stride_frames: int = 40  # between sequence starts in one clip
    vshift: int = 15  # offsets -vshift..vshift, in steps of each level
    random_draws: int = 5  # random audio re-pairings per sequence


@dataclass(frozen=True)
class TrainSyncersConfig:
    """`train_syncers` section of params.yaml."""

    model: SyncerSize
    pyramid: PyramidConfig
    rigid: RigidConfig
    evaluation: OffsetEvalConfig
    window: int = 5  # motion steps per syncer window (20 audio rows)
    batch_size: int = 64
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    eval_samples: int = 512  # held-out windows for the accuracy of each syncer
    log_every: int = 25
    eval_every: int = 250  # held-out accuracy during training (0 = only at the end)
    checkpoint_every: int = 500
    workers: int = 0  # DataLoader workers (windows are cut from in-memory arrays: 0 is fastest)
    threads: int = 1  # torch intra-op threads while training (0 = leave torch's default); tiny nets: 1 is fastest

    def validate(self) -> None:
        if not 1 <= self.rigid.levels <= self.pyramid.levels:
            raise ValueError(f"rigid.levels {self.rigid.levels} must be within 1..pyramid.levels")
        if self.window < 2:
            raise ValueError("window must be >= 2")
        for name, v in (("batch_size", self.batch_size), ("log_every", self.log_every),
                        ("checkpoint_every", self.checkpoint_every), ("eval_samples", self.eval_samples),
                        ("pyramid.negatives", self.pyramid.negatives), ("rigid.negatives", self.rigid.negatives),
                        ("pyramid.coarse_negatives", self.pyramid.coarse_negatives),
                        ("evaluation.random_draws", self.evaluation.random_draws),
                        ("evaluation.stride_frames", self.evaluation.stride_frames)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.pyramid.steps < 0 or self.rigid.steps < 0 or self.eval_every < 0 or self.workers < 0:
            raise ValueError("steps, eval_every and workers must be >= 0")
        if set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"train_splits {self.train_splits} and eval_splits {self.eval_splits} overlap")
        if self.evaluation.sequence_frames < 2 ** (self.pyramid.levels - 1) * (self.window - 1) + 1:
            raise ValueError("evaluation.sequence_frames too short for one window at the coarsest level")


@dataclass(frozen=True)
class SyncerSpec:
    """One training phase: which syncer, on which level and points, with which loss and negatives."""

    name: str
    family: str  # "ms" | "rigid"
    level: int
    loss: str  # "infonce" | "triplet"
    steps: int
    negatives: int
    negatives_from: NegativeSource
    min_offset: int


def syncer_specs(cfg: TrainSyncersConfig) -> list[SyncerSpec]:
    """The 4 + 3 phases in training order."""
    p, r = cfg.pyramid, cfg.rigid
    specs = [SyncerSpec(f"ms{i}", "ms", i, "infonce", p.steps, p.negatives, "same_clip", p.min_offset)
             for i in range(1, p.levels)]
    specs.append(SyncerSpec(f"ms{p.levels}", "ms", p.levels, "infonce", p.steps, p.coarse_negatives,
                            p.coarse_negatives_from, p.min_offset))
    specs += [SyncerSpec(f"rigid{i}", "rigid", i, "triplet", r.steps, r.negatives, "same_clip", r.min_offset)
              for i in range(1, r.levels + 1)]
    return specs


def scale_ms(level: int, window: int) -> int:
    """Duration of one window at `level`: 200, 400, 800, 1600 ms for 5-frame windows."""
    return window * FRAME_MS * 2 ** (level - 1)


def syncer_config(cfg: TrainSyncersConfig, family: str) -> SyncerConfig:
    """Builder: the `SyncerConfig` of a family (motion channels = 2 x its landmark count)."""
    points = FAMILY_POINTS[family]
    return SyncerConfig(motion_channels=2 * len(range(68)[points]), window=cfg.window, hidden=cfg.model.hidden,
                        embed_dim=cfg.model.embed_dim)


def training_part(cfg: TrainSyncersConfig) -> dict[str, Any]:
    """The config keys that change the trained weights or their curves (what the resume fingerprint covers):
    evaluation-only keys, the worker count (batches do not depend on it) and threads are left out."""
    d = to_dict(cfg)
    for key in ("evaluation", "eval_samples", "workers", "threads"):
        d.pop(key)
    return d


def build_syncers(cfg: TrainSyncersConfig) -> nn.ModuleDict:
    return nn.ModuleDict({s.name: Syncer(syncer_config(cfg, s.family)) for s in syncer_specs(cfg)})


def make_loss(spec: SyncerSpec, cfg: TrainSyncersConfig) -> nn.Module:
    """Builder: InfoNCE (MS-Sync Eq. 2) for the pyramid, the triplet loss (with the padding reference) for the rigid
    family."""
    if spec.loss == "infonce":
        return InfoNCELoss(cfg.pyramid.temperature)
    return TripletLoss(cfg.rigid.margin, reference=1.0 if cfg.rigid.padding_negative else None)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SyncersResult:
    """What `train_syncers` returns: the metrics (JSON-able), the curves and the raw offsets for plots."""

    metrics: dict[str, Any]
    history: History
    offsets: dict[str, dict[int, dict[str, np.ndarray]]] = field(default_factory=dict)  # family -> level -> gt/random
    trained_steps: int = 0
    seconds: float = 0.0  # training wall time (MLflow and the log; not metrics.json)


def _held_out_batch(dataset: SyncerWindows, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[(0, slot)] for slot in range(n)]
    audio = torch.from_numpy(np.stack([a for a, _ in items]))  # (n, 26, 20)
    motion = torch.from_numpy(np.stack([m for _, m in items]))  # (n, 1 + N, C, 5)
    return audio, motion


@torch.no_grad()
def window_accuracy(syncer: Syncer, loss_fn: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                    chunk: int = 256) -> tuple[float, float]:
    """(top-1 accuracy of the positive, mean loss) over a held-out batch."""
    audio, motion = batch
    dev = module_device(syncer)
    scores = torch.cat([syncer(audio[i:i + chunk].to(dev), motion[i:i + chunk].to(dev))
                        for i in range(0, len(audio), chunk)])
    return float((scores.argmax(dim=1) == 0).float().mean()), float(loss_fn(scores))


def train_syncers(cfg: TrainSyncersConfig, seed: int, *, processed: str | os.PathLike[str],
                  out: str | os.PathLike[str], reports: str | os.PathLike[str], tracker: Tracker,
                  progress: bool = True, dist: Distributed | None = None) -> SyncersResult | None:
    """Train (or resume, or reuse) the 7 syncers into ``out/checkpoint.pt``, evaluate them held-out, write the report.

    Args:
        cfg: the `train_syncers` params section.
        seed: common seed (model init and every sample).
        processed: the preprocess stage's output folder.
        out: model folder; ``checkpoint.pt`` there is resumed when its fingerprint (config, seed, manifest
            digest) matches, and reused without training when it is complete.
        reports: report folder: metrics.json, history.json, offsets.png (MS-Sync Table 2 as box plots), curves.png.
        tracker: receives per-step losses, held-out accuracies and the training time.
        dist: this process's place in a torchrun run (None: one plain process; its device is `common.device`);
            ranks other than 0 train their share of every batch and return None.

    Runs with ``cfg.threads`` torch threads (restored afterwards) when it is not 0.
    """
    with torch_threads(cfg.threads):
        result = _train_syncers(Path(processed), Path(out), cfg, seed, tracker, progress, dist or Distributed())
    if result is None:
        return None
    tracker.log_metrics({"train/seconds": result.seconds})
    write_report(result, cfg, reports)
    return result


def write_report(result: SyncersResult, cfg: TrainSyncersConfig, reports: str | os.PathLike[str]) -> None:
    """metrics.json, history.json, offsets.png and curves.png."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", result.metrics)
    result.history.save(reports / "history.json")
    plot_offsets(result.offsets, cfg.window, reports / "offsets.png")
    names = [s.name for s in syncer_specs(cfg)]
    plot_curves(result.history, reports / "curves.png", {
        "train loss": [f"{n}_loss" for n in names],
        "held-out loss": [f"{n}_val_loss" for n in names],
        "held-out top-1 accuracy": [f"{n}_val_acc" for n in names]}, title="train_syncers")


def _train_syncers(processed: Path, out_dir: Path, cfg: TrainSyncersConfig, seed: int, tracker: Tracker,
                   progress: bool, dist: Distributed) -> SyncersResult | None:
    dist.check_batch(cfg.batch_size, "train_syncers.batch_size")
    ckpt_path = out_dir / "checkpoint.pt"
    specs = syncer_specs(cfg)
    min_frames = 2 ** (cfg.pyramid.levels - 1) * (cfg.window - 1) + 1
    train_clips, eval_clips = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, min_frames)
    levels = cfg.pyramid.levels
    streams = {fam: (load_streams(train_clips, pts, levels), load_streams(eval_clips, pts, levels))
               for fam, pts in FAMILY_POINTS.items()}
    log.info("syncers: %d train clips (%s), %d held-out clips (%s)", len(train_clips), ",".join(cfg.train_splits),
             len(eval_clips), ",".join(cfg.eval_splits))

    fp = fingerprint(training_part(cfg), seed, file_digest(processed / "manifest.parquet"))
    seed_everything(seed)
    model, = dist.prepare(build_syncers(cfg))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = sum(s.steps for s in specs)
    start, history = 0, History()
    state = resumable(ckpt_path, fp, CHECKPOINT_KIND)
    if state is not None:
        start, history = restore(state, model, optimizer, str(ckpt_path))
        if start < total:
            log.info("resuming %s at step %d of %d", ckpt_path, start, total)

    def save(step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, config=cfg, model=model, optimizer=optimizer, step=step,
                        fingerprint=fp, extra={"history": history.rows, "seed": seed,
                                               "syncers": {s.name: to_dict(model[s.name].cfg) for s in specs},
                                               "specs": [to_dict(s) for s in specs]})

    t0 = time.perf_counter()
    offset = 0
    for spec in specs:
        begin, end = offset, offset + spec.steps
        offset = end
        if start >= end:
            continue
        train_set = SyncerWindows(streams[spec.family][0], spec.level, cfg.window, spec.negatives, spec.min_offset,
                                  spec.negatives_from, seed)
        held_out = _held_out_batch(SyncerWindows(streams[spec.family][1], spec.level, cfg.window, spec.negatives,
                                                 spec.min_offset, spec.negatives_from, seed + 1),
                                   min(cfg.eval_samples, 256))
        train_phase(model[spec.name], spec, make_loss(spec, cfg), optimizer, train_set, held_out, cfg,
                    max(start, begin), begin, end, tracker, history, save, progress and dist.is_main, dist)
    trained = max(0, total - start)
    seconds = time.perf_counter() - t0 if trained else 0.0
    if trained:
        log.info("trained %d steps in %.0f s", trained, seconds)
    else:
        log.info("%s is complete (%d steps): evaluating only", ckpt_path, total)
    dist.barrier()  # the final checkpoint is written before any rank leaves
    if not dist.is_main:
        return None

    metrics, offsets = evaluate_syncers(model, cfg, specs, streams, seed)
    metrics["parameters"] = {s.name: count_parameters(model[s.name]) for s in specs}
    metrics["steps"] = total
    metrics["train_clips"], metrics["eval_clips"] = len(train_clips), len(eval_clips)
    return SyncersResult(metrics, history, offsets, trained, round(seconds, 1))


def train_phase(syncer: Syncer, spec: SyncerSpec, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                dataset: SyncerWindows, held_out: tuple[torch.Tensor, torch.Tensor], cfg: TrainSyncersConfig,
                start: int, begin: int, end: int, tracker: Tracker, history: History,
                save: Callable[[int], None], progress: bool, dist: Distributed | None = None) -> None:
    """The loop of one syncer: global steps [start, end) of its phase [begin, end). Step s trains on the keys
    ``(s, slot)`` (this rank's slots of them under torchrun); the checkpoint's step counts completed steps (s + 1)."""
    dist = dist or Distributed()
    syncer.train()
    loader = step_loader(dataset, cfg.batch_size, start, end, cfg.workers, span=dist.span(cfg.batch_size))
    bar = tqdm(loader, total=end - start, desc=f"{spec.name} ({spec.loss}, level {spec.level})", disable=not progress,
               initial=0, leave=False)
    dev = module_device(syncer)
    for s, (audio, motion) in zip(range(start, end), bar):
        with dist.autocast():
            scores = syncer(audio.to(dev), motion.to(dev)).float()  # (B, 1 + N)
        loss = loss_fn(scores)
        optimizer.zero_grad(set_to_none=True)
        dist.backward(loss, optimizer)
        dist.step(optimizer)

        done, local = s + 1, s + 1 - begin
        if local % cfg.log_every == 0 or done == end:
            acc = float((scores.detach().argmax(dim=1) == 0).float().mean())
            row = dist.mean_values({f"{spec.name}_loss": float(loss.detach()), f"{spec.name}_acc": acc})
            if ((cfg.eval_every and local % cfg.eval_every == 0) or done == end) and dist.is_main:
                syncer.eval()
                row[f"{spec.name}_val_acc"], row[f"{spec.name}_val_loss"] = window_accuracy(syncer, loss_fn, held_out)
                syncer.train()
            history.add(done, **row)
            tracker.log_metrics(row, step=done)
            bar.set_postfix(loss=f"{row[f'{spec.name}_loss']:.3f}", acc=f"{row[f'{spec.name}_acc']:.2f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            save(done)
    bar.close()
    syncer.eval()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def sequence_offset(syncer: Syncer, audio: np.ndarray, motion: np.ndarray, vshift: int) -> tuple[int, float]:
    """(AV offset in steps of the syncer's level, LSE-C confidence) of one level of one sequence."""
    a_win, x_win = level_windows(audio, motion, syncer.cfg.window)  # (N, 26, 20), (N, C, 5)
    dev = module_device(syncer)
    e_a = syncer.audio(torch.from_numpy(a_win).to(dev)).cpu()  # (N, D)
    e_x = syncer.motion(torch.from_numpy(x_win).to(dev)).cpu()  # (N, D)
    res = lse(e_x, e_a, vshift=vshift)
    return res.offset, res.lse_c


def offset_table(model: nn.ModuleDict, specs: Sequence[SyncerSpec], family: str, streams: Sequence[ClipStreams],
                 cfg: TrainSyncersConfig, seed: int) -> dict[int, dict[str, np.ndarray]]:
    """|AV-Off| (and LSE-C) of ground truth vs random audio pairs at every level of `family`.

    Random pairs: for each sequence and draw, the audio of the same length at a random start of another held-out
    clip at least that long (``sample_rng(seed, sequence, draw)``).
    """
    ev = cfg.evaluation
    fam_specs = [s for s in specs if s.family == family]
    levels = max(s.level for s in fam_specs)
    seqs = eval_sequences(streams, ev.sequence_frames, ev.stride_frames)
    out = {s.level: {"gt": [], "random": [], "gt_conf": [], "random_conf": []} for s in fam_specs}
    lengths = np.array([len(s.motion[0]) for s in streams])
    for q, seq in enumerate(seqs):
        gt_a, gt_x = sequence_pyramids(streams, seq, levels)
        draws = []
        candidates = np.flatnonzero((lengths >= seq.length) & (np.arange(len(streams)) != seq.clip))
        rng = sample_rng(seed, q, 0)
        if not len(candidates):
            log.warning("no other held-out clip of >= %d frames to re-pair sequence %d with", seq.length, q)
        for _ in range(ev.random_draws if len(candidates) else 0):
            c = int(rng.choice(candidates))
            start = int(rng.integers(lengths[c] - seq.length + 1))
            draws.append(sequence_pyramids(streams, seq, levels, audio_clip=c, audio_start=start)[0])
        for spec in fam_specs:
            i = spec.level - 1
            syncer = model[spec.name]
            off, conf = sequence_offset(syncer, gt_a[i], gt_x[i], ev.vshift)
            out[spec.level]["gt"].append(abs(off))
            out[spec.level]["gt_conf"].append(conf)
            for rand_a in draws:
                off, conf = sequence_offset(syncer, rand_a[i], gt_x[i], ev.vshift)
                out[spec.level]["random"].append(abs(off))
                out[spec.level]["random_conf"].append(conf)
    return {lvl: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for lvl, d in out.items()}


def compare_offsets(gt: np.ndarray, rand: np.ndarray) -> dict[str, float]:
    """Table 2 cell: means, stds and the one-sided Mann-Whitney U p-value (H1: ground truth |AV-Off| smaller)."""
    from scipy.stats import mannwhitneyu

    if not len(gt) or not len(rand):
        nan = float("nan")
        return {"gt_mean": nan, "gt_std": nan, "random_mean": nan, "random_std": nan, "p_value": nan,
                "n_gt": int(len(gt)), "n_random": int(len(rand)), "gt_better": False}
    p = float(mannwhitneyu(gt, rand, alternative="less").pvalue)
    return {"gt_mean": float(np.mean(gt)), "gt_std": float(np.std(gt)), "random_mean": float(np.mean(rand)),
            "random_std": float(np.std(rand)), "p_value": p, "n_gt": int(len(gt)), "n_random": int(len(rand)),
            "gt_better": bool(p < 0.05)}


def _domain(d: dict[str, np.ndarray]) -> dict[str, object]:
    """:class:`pipeline.metrics.lse.DomainCheck` of one offset-table cell (ground truth vs re-paired audio)."""
    if not len(d["gt"]) or not len(d["random_conf"]):
        return {"status": "out_of_domain", "reasons": ["no ground-truth sequence or no re-paired audio to check"]}
    return domain_check(d["gt"], d["gt_conf"], d["random_conf"]).as_dict()


def evaluate_syncers(model: nn.ModuleDict, cfg: TrainSyncersConfig, specs: Sequence[SyncerSpec],
                     streams: dict[str, tuple[list[ClipStreams], list[ClipStreams]]], seed: int
                     ) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, np.ndarray]]]]:
    """Held-out metrics of every syncer (see the module docstring)."""
    model.eval()
    windows: dict[str, Any] = {}
    for spec in specs:
        held_out = _held_out_batch(SyncerWindows(streams[spec.family][1], spec.level, cfg.window, spec.negatives,
                                                 spec.min_offset, spec.negatives_from, seed + 2), cfg.eval_samples)
        acc, loss = window_accuracy(model[spec.name], make_loss(spec, cfg), held_out)
        windows[spec.name] = {"accuracy": acc, "chance": 1.0 / (1 + spec.negatives), "loss": loss,
                              "level": spec.level, "window_ms": scale_ms(spec.level, cfg.window)}
    offsets = {fam: offset_table(model, specs, fam, streams[fam][1], cfg, seed) for fam in FAMILY_POINTS}
    metrics: dict[str, Any] = {"windows": windows}
    for fam, table in offsets.items():
        metrics[f"{fam}_offset"] = {
            f"{scale_ms(lvl, cfg.window)}ms": {**compare_offsets(d["gt"], d["random"]),
                                               "gt_conf_mean": float(d["gt_conf"].mean()),
                                               "random_conf_mean": float(d["random_conf"].mean()),
                                               "domain": _domain(d)}
            for lvl, d in table.items()}
    rigid = metrics["rigid_offset"]
    metrics["rigid_gt_better_all_scales"] = bool(all(v["gt_better"] for v in rigid.values()))
    # Metric sanity (pipeline.metrics.lse.DomainCheck) of the AV-offset metric: every rigid scale must recognise the
    # held-out ground truth, else the metric is out of its domain on this data.
    metrics["status"] = ("in_domain" if all(v["domain"]["status"] == "in_domain" for v in rigid.values())
                         else "out_of_domain")
    return metrics, offsets


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------
def plot_offsets(offsets: dict[str, dict[int, dict[str, np.ndarray]]], window: int, path: str | Path) -> None:
    """Box plots of |AV-Off| ground truth vs random pairs per scale, one panel per family (MS-Sync Table 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    fams = list(offsets)
    fig, axes = plt.subplots(1, len(fams), figsize=(4.8 * len(fams), 3.6), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        levels = sorted(offsets[fam])
        data, pos, colors = [], [], []
        for j, lvl in enumerate(levels):
            for k, (key, color) in enumerate((("gt", "tab:green"), ("random", "tab:gray"))):
                data.append(offsets[fam][lvl][key])
                pos.append(3 * j + k)
                colors.append(color)
        parts = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showmeans=True)
        for patch, color in zip(parts["boxes"], colors):
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax.set_xticks([3 * j + 0.5 for j in range(len(levels))])
        ax.set_xticklabels([f"{scale_ms(lvl, window)} ms" for lvl in levels])
        ax.set_ylabel("|AV-Off| (steps of the level)")
        ax.set_title(f"{fam} syncers: ground truth (green) vs random pairs (grey)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
