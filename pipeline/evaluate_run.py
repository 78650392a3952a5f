"""The ``evaluate`` stage's library call (TAVCE Table I protocol; issue 13): generate the systems' videos on the
test speakers of one or more processed corpora, then score them with :mod:`pipeline.evaluate`.

Per dataset and test clip (at most ``max_clips``, each cut to ``max_frames``):

- **ground truth**: the real clip, resized to the renderer's side (every row is judged at the size the model makes);
- **ours**: the trained model (`pipeline.animate`'s networks: Audio2Coeff -> MappingNet -> renderer with CERL) driven
  by the clip's audio from the clip's first frame (source = frame 0, reference coefficients = its preprocessing fit);
- **static source frame**: frame 0 held still for the clip's duration, with the audio (a floor for every sync metric).

All three are written as H.264 + AAC mp4 (``videos/<dataset>/<system>/<clip>.mp4``) and scored by the same code as
``tavce evaluate`` against the ground-truth files, so encoding affects every row alike. Outputs (``out``):
metrics.json, table.md, clips.csv, metrics.png, comparison.mp4 / .gif (ground truth | ours | static).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline import audio as audio_mod
from pipeline import media
from pipeline.animate import AnimateModels, _relation, load_models, speech_motion
from pipeline.data.corpus import Clip, FeatureStore, load_clips
from pipeline.evaluate import (EvaluateError, Extractors, MetricsConfig, Pair, ReferenceCache, SyncModels,
                               SystemResult, evaluate_pairs, sync_domain_check, write_report)
from pipeline.faces.coeffs import coefficient_windows
from pipeline.render import render
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

SYSTEMS = ("ground truth", "static source frame", "ours")
SYSTEM_DIRS = {"ground truth": "ground_truth", "static source frame": "static", "ours": "ours"}


@dataclass(frozen=True)
class DatasetConfig:
    """One processed corpus (the preprocess stage's output folder) and its name in the tables."""

    name: str
    processed: str


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml ``evaluate`` section.

    Attributes:
        datasets: corpora to evaluate on; one group of table rows each (Table I's per-dataset columns).
        splits: manifest splits scored (test speakers).
        max_clips: clips per dataset (0 = all); max_frames: frames per clip (0 = whole clip).
        pose_style / seed: Audio2Coeff's PoseVAE style class and sampling seed.
        batch_size: renderer frames per forward pass; device: cpu | cuda | auto.
        metrics: how the metrics are computed (:class:`pipeline.evaluate.MetricsConfig`).
    """

    datasets: tuple[DatasetConfig, ...]
    splits: tuple[str, ...] = ("test",)
    max_clips: int = 3
    max_frames: int = 75
    pose_style: int = 0
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        if not self.datasets:
            raise ValueError("datasets: at least one processed corpus is needed")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must differ, got {names}")
        if self.max_clips < 0 or self.max_frames < 0 or self.batch_size < 1:
            raise ValueError("max_clips >= 0, max_frames >= 0 and batch_size >= 1 are required")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu | cuda | auto, got {self.device!r}")


def clip_stem(clip: Clip) -> str:
    """File stem of a clip's videos: ``spk002/clip000`` -> ``spk002_clip000``."""
    return clip.clip_id.replace("/", "_")


@torch.no_grad()
def generate_from_frame(models: AnimateModels, face: np.ndarray, reference: np.ndarray, wav: np.ndarray, *,
                        pose_style: int = 0, seed: int = 0, batch_size: int = 8,
                        device: str | torch.device = "cpu") -> np.ndarray:
    """`tavce animate`'s generation for an already cropped source: (S, S, 3) uint8 face at the renderer's side,
    its (73,) reference coefficients and (N,) 16 kHz speech -> (T, S, S, 3) uint8 frames, T = the audio's frames."""
    renderer = models.renderer.to(device)
    torch.manual_seed(seed)
    windows, coeffs = speech_motion(models, wav, reference, pose_style=pose_style, seed=seed)  # (T,1,80,16), (T,70)
    T, W = len(coeffs), renderer.cfg.mapping.window
    source_motion = renderer.map_motion(torch.from_numpy(coefficient_windows(reference[None], [0], W)).to(device))
    motion = renderer.map_motion(torch.from_numpy(coefficient_windows(coeffs, range(T), W)).to(device))
    rel = _relation(models.tavc, windows, 0, T, torch.device(device)) if renderer.cerl is not None else None
    return render(renderer, face, motion, source_motion=source_motion, relation=rel, batch_size=batch_size,
                  device=device)  # (T, S, S, 3)


def _resize(frames: np.ndarray, side: int) -> np.ndarray:
    if frames.shape[1:3] == (side, side):
        return frames
    return np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in frames])


def make_videos(cfg: EvaluateConfig, models: AnimateModels, clips: list[Clip], folder: Path,
                device: torch.device) -> list[str]:
    """Write the three systems' mp4 of every clip into ``folder/<system dir>/<stem>.mp4``; returns the stems."""
    side = models.renderer.cfg.image_size
    store = FeatureStore()
    for d in SYSTEM_DIRS.values():
        (folder / d).mkdir(parents=True, exist_ok=True)
    stems = []
    for clip in clips:
        stem = clip_stem(clip)
        frames = media.read_video(clip.video, fps=audio_mod.FPS).frames  # (T, 256, 256, 3)
        wav = store.get_array(clip, "wav").astype(np.float32)  # (N,) 16 kHz
        T = min(len(frames), len(wav) * audio_mod.FPS // audio_mod.SAMPLE_RATE)
        if cfg.max_frames:
            T = min(T, cfg.max_frames)
        frames, wav = _resize(frames[:T], side), wav[:T * audio_mod.SAMPLE_RATE // audio_mod.FPS]
        reference = store.get_array(clip, "coeffs")[0].astype(np.float32)  # (73,)
        ours = generate_from_frame(models, frames[0], reference, wav, pose_style=cfg.pose_style, seed=cfg.seed,
                                   batch_size=cfg.batch_size, device=device)
        static = np.repeat(frames[:1], len(frames), axis=0)
        for system, video in (("ground truth", frames), ("ours", ours[:T]), ("static source frame", static)):
            media.write_video(folder / SYSTEM_DIRS[system] / f"{stem}.mp4", video, fps=audio_mod.FPS, audio=wav,
                              sample_rate=audio_mod.SAMPLE_RATE)
        stems.append(stem)
    return stems


def comparison_video(folder: Path, stem: str, out: Path) -> None:
    """ground truth | ours | static side by side, with the clip's audio, and a GIF preview."""
    parts = []
    for system in ("ground truth", "ours", "static source frame"):
        parts.append(media.read_video(folder / SYSTEM_DIRS[system] / f"{stem}.mp4", fps=audio_mod.FPS).frames)
    T = min(len(p) for p in parts)
    wav = media.read_audio(folder / SYSTEM_DIRS["ground truth"] / f"{stem}.mp4")
    side = parts[0].shape[1]
    scale = max(1, 128 // side)  # small renderers: show them at >= 128 px
    grid = np.concatenate([p[:T] for p in parts], axis=2)  # (T, S, 3S, 3)
    if scale > 1:
        grid = np.stack([cv2.resize(g, (g.shape[1] * scale, g.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
                         for g in grid])
    media.write_video(out, grid, fps=audio_mod.FPS, audio=wav, sample_rate=audio_mod.SAMPLE_RATE)
    media.video_to_gif(out, out.with_suffix(".gif"), width=min(576, grid.shape[2]))


@dataclass
class EvaluationRun:
    metrics: dict[str, Any]
    seconds: float


def run_evaluation(cfg: EvaluateConfig, *, models: str | os.PathLike[str], out: str | os.PathLike[str],
                   tracker: Tracker | None = None, progress: bool = True,
                   expression_basis: str | os.PathLike[str] | None = None) -> EvaluationRun:
    """Generate and score every dataset's test clips (module docstring); writes the report into `out`.

    Args:
        models: a pipeline run's ``models/`` folder (train, audio2coeff, tavc, syncnet, syncers checkpoints).
        expression_basis: the basis `animate` loads (default: models/../data/processed/expression_basis.npz).
    """
    t0 = time.perf_counter()
    out = Path(out)
    root = Path(models)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    anim = load_models(root, device="cpu", expression_basis=expression_basis)
    sync = SyncModels(*(str(p) if p.is_file() else None for p in (root / "syncnet/checkpoint.pt",
                                                                    root / "syncers/checkpoint.pt",
                                                                    root / "tavc/checkpoint.pt")))
    ext = Extractors(cfg.metrics, sync, device)
    results: dict[str, dict[str, SystemResult]] = {}
    checks: dict[str, Any] = {}
    first: tuple[Path, str] | None = None
    for ds in cfg.datasets:
        clips = load_clips(ds.processed, cfg.splits, min_frames=2 * audio_mod.MFCC_WINDOW_VIDEO_FRAMES)
        clips = clips[:cfg.max_clips] if cfg.max_clips else clips
        folder = out / "videos" / ds.name
        log.info("%s: generating %d clips of %s", ds.name, len(clips), ds.processed)
        stems = make_videos(cfg, anim, clips, folder, device)
        first = first or (folder, stems[0])
        refs = ReferenceCache(ext)
        gt_dir = folder / SYSTEM_DIRS["ground truth"]
        results[ds.name] = {}
        for system in SYSTEMS:
            pairs = [Pair(s, folder / SYSTEM_DIRS[system] / f"{s}.mp4", gt_dir / f"{s}.mp4") for s in stems]
            results[ds.name][system] = evaluate_pairs(ext, pairs, references=refs,
                                                      reference_row=system == "ground truth", progress=progress,
                                                      seed=cfg.seed)
        check = sync_domain_check(ext, [Pair(s, gt_dir / f"{s}.mp4", gt_dir / f"{s}.mp4") for s in stems], refs)
        checks[ds.name] = check.as_dict() if check else None
    if first is None:
        raise EvaluateError("no dataset was evaluated")
    comparison_video(first[0], first[1], out / "comparison.mp4")
    extra = {"sync_domain_check": checks, "models": anim.sources,
             "errors": {d: {s: r.errors for s, r in sy.items()} for d, sy in results.items()}}
    metrics = write_report(out, results, ext.names, extra, title="Evaluation (TAVCE Table I protocol)")
    seconds = time.perf_counter() - t0
    if tracker is not None:
        flat = {f"{d}/{s.replace(' ', '_')}/{k}": float(v) for d, sy in metrics["results"].items()
                for s, summ in sy.items() for k, v in summ.items() if isinstance(v, (int, float))}
        tracker.log_metrics(flat)
        tracker.set_tags({f"extractor.{k}": v for k, v in ext.names.items()})
    return EvaluationRun(metrics, round(seconds, 1))
