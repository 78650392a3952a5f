"""Benchmark the TAVC training input pipeline against the model step it feeds.

    python benchmarks/tavc_loader.py [--processed data/processed] [--steps 40] [--params params.yaml]

Measured in one run on the same keyed batches (figures are batches/s; ratios matter on a noisy machine):
- "loader, cold, stored ROIs": a fresh DataLoader with 0 / 1 / 2 workers reading the mouth ROIs that preprocessing
  stored with the features (`preprocess.mouth_roi_quality`; one small JPEG decode per ROI, no seek), empty caches;
- "loader, cold, decoding": the same without the stored ROIs (decord seeks + mouth ROI crops, empty ROI cache),
  without and with the prefetch of `prefetch_frames` neighbours per seek;
- "loader, warm": the same batches again through a dataset whose ROI cache is filled (what later epochs see);
- "model step": forward + backward + Adam step of the small config (params.yaml) and of the full-size config
  (configs/params.full.yaml) on one prefetched batch.
The loader keeps up when its batches/s exceed the model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import from_dict  # noqa: E402
from pipeline.data.corpus import STORED_ROI_KEYS, FeatureStore, load_clips  # noqa: E402
from pipeline.data.tavc import TAVCDataset, min_clip_frames  # noqa: E402
from pipeline.losses.tavc import TAVCLoss  # noqa: E402
from pipeline.models.tavc import TAVC  # noqa: E402
from pipeline.data.sampling import step_loader  # noqa: E402
from pipeline.train.tavc import TrainTAVCConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def loader_rate(dataset: TAVCDataset, batch: int, steps: int, workers: int) -> float:
    t0 = time.perf_counter()
    for _ in step_loader(dataset, batch, 0, steps, workers):
        pass
    return steps / (time.perf_counter() - t0)


def model_rate(cfg: TrainTAVCConfig, batch: dict, steps: int) -> float:
    torch.manual_seed(0)
    model = TAVC(cfg.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = TAVCLoss(cfg.alpha)
    mel, roi = batch["mel"][: cfg.batch_size], batch["roi"][: cfg.batch_size]

    def step() -> None:
        f_a, f_v = model(mel, roi)
        res = loss_fn(f_a[:, 0], f_a[:, 1], f_v[:, 0], f_v[:, 1], f_v[:, 2])
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processed", type=Path, default=ROOT / "data/processed")
    ap.add_argument("--steps", type=int, default=40, help="batches per measurement (default: 40)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--full-params", type=Path, default=ROOT / "configs/params.full.yaml")
    ap.add_argument("--full-steps", type=int, default=3, help="model steps timed at full size (slow on a CPU)")
    args = ap.parse_args()

    small = from_dict(TrainTAVCConfig, yaml.safe_load(args.params.read_text())["train_tavc"], "train_tavc")
    full = from_dict(TrainTAVCConfig, yaml.safe_load(args.full_params.read_text())["train_tavc"], "train_tavc")
    clips = load_clips(args.processed, small.train_splits, min_clip_frames(small.tau))
    rows = []
    stored = FeatureStore().has(clips[0], STORED_ROI_KEYS[0])
    if stored:
        for workers in (0, 1, 2):
            ds = TAVCDataset(clips, 0, small.tau, small.augment, small.roi_cache_mb, small.prefetch_frames)
            rows.append((f"loader, cold, stored ROIs, {workers} worker(s)",
                         loader_rate(ds, small.batch_size, args.steps, workers)))
    for workers in (0, 1, 2):
        ds = TAVCDataset(clips, 0, small.tau, small.augment, small.roi_cache_mb, stored_rois=False)
        rows.append((f"loader, cold, decoding, no prefetch, {workers} worker(s)",
                     loader_rate(ds, small.batch_size, args.steps, workers)))
    for workers in (0, 1, 2):
        ds = TAVCDataset(clips, 0, small.tau, small.augment, small.roi_cache_mb, small.prefetch_frames,
                         stored_rois=False)
        rows.append((f"loader, cold, decoding, prefetch {small.prefetch_frames}, {workers} worker(s)",
                     loader_rate(ds, small.batch_size, args.steps, workers)))
    warm = TAVCDataset(clips, 0, small.tau, small.augment, small.roi_cache_mb)
    loader_rate(warm, small.batch_size, args.steps, 0)
    rows.append(("loader, warm ROI cache, 0 workers", loader_rate(warm, small.batch_size, args.steps, 0)))
    batch = next(iter(step_loader(warm, max(small.batch_size, full.batch_size), 0, 1, 0)))
    rows.append((f"model step, small config ({small.batch_size}/batch)", model_rate(small, batch, args.steps)))
    rows.append((f"model step, full config ({full.batch_size}/batch)", model_rate(full, batch, args.full_steps)))

    ref = rows[-2][1]
    print(f"\nTAVC input pipeline vs model, {len(clips)} train clips, torch threads {torch.get_num_threads()}"
          f"{'' if stored else ' (this corpus has no stored mouth ROIs: preprocess with mouth_roi_quality set)'}\n")
    print(f"| {'measurement':<52} | batches/s | vs small model step |")
    print(f"|{'-' * 54}|-----------|---------------------|")
    for name, rate in rows:
        print(f"| {name:<52} | {rate:9.2f} | {rate / ref:19.2f} |")


if __name__ == "__main__":
    main()
