"""Small, repeatable renderer-training experiments behind the diagnosis in docs/decisions.md ("Why the small renderer
lost to copying the source").

    python benchmarks/renderer_diagnosis.py --steps 300 --variant estimator_batch=separate --variant estimator_batch=joint
    python benchmarks/renderer_diagnosis.py --steps 300 --train-clips 1 --variant estimator_batch=joint   # overfit one clip

Each variant trains the `pretrain_renderer` config of --params (overridden by ``key=value`` pairs, dotted for nested
keys; `steps` by --steps) from scratch on the processed corpus with the stage's own trainer, then prints:
- held-out speakers, near-static pairs (the stage's uniform pairs ≥ 5 frames apart) and large-motion pairs (largest
  mouth-opening + head-pose differences): L1 and mouth-region L1 of the reconstruction vs "copy the source" and vs
  "the renderer with the source's own motion", and mouth-landmark distance on the motion pairs;
- the train/eval gap: L1 on training pairs with the networks in eval mode (running BatchNorm statistics, as at
  inference) vs training mode (batch statistics, as in training);
- gradient norms per network (mean over the logged steps).
With --train-clips N the model trains on the first N training clips only and is ALSO evaluated on large-motion pairs
of those clips (can it learn motion at all?). Every number names the data it was measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import from_dict, to_dict  # noqa: E402
from pipeline.data.corpus import load_split_clips  # noqa: E402
from pipeline.data.renderer import RendererDataset, build_eval_set  # noqa: E402
from pipeline.data.sampling import seed_everything, step_loader  # noqa: E402
from pipeline.models.tavc import load_tavc  # noqa: E402
from pipeline.train.renderer import (RendererTrainer, TrainRendererConfig, _landmark_backend,  # noqa: E402
                                     evaluate_heldout, summarize)

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("appearance", "cerl", "kp_detector", "he_estimator", "mapping", "generator")


def _override(section: dict, assignment: str) -> dict:
    key, _, value = assignment.partition("=")
    node = section
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)
    return section


def run_variant(name: str, cfg: TrainRendererConfig, processed: Path, tavc_path: Path | None, seed: int,
                train_clips: int, landmarks: bool) -> dict:
    train, held = load_split_clips(processed, cfg.train_splits, cfg.eval_splits, 2)
    if train_clips:
        train = train[:train_clips]
    seed_everything(seed)
    tavc = load_tavc(tavc_path) if (cfg.model.cerl.enabled and tavc_path) else None
    trainer = RendererTrainer(cfg, seed, tavc, None, torch.device("cpu"))
    window = 0 if trainer.from_images else cfg.model.mapping.window  # as the stage: MappingNet's windows, no flip
    dataset = RendererDataset(train, seed, cfg.model.image_size, cfg.cache_mb, augment=cfg.augment,
                              pair_sampling=cfg.pair_sampling, coeff_window=window, flip=trainer.from_images)
    grads = {n: [] for n in NETWORKS}
    t0 = time.perf_counter()
    losses = []
    for step, batch in enumerate(step_loader(dataset, cfg.batch_size, 0, cfg.steps, 0)):
        losses.append(trainer.train_step(batch, step)["generator_total"])  # the stage's own step
        if step % 10 == 0:  # the renderer's gradients of this step are still in .grad (cleared at the next one)
            for n in NETWORKS:
                module = getattr(trainer.renderer, n)
                norms = [p.grad.norm() for p in module.parameters() if p.grad is not None] if module else []
                if norms:
                    grads[n].append(float(torch.linalg.vector_norm(torch.stack(norms))))
    seconds = time.perf_counter() - t0
    backend = _landmark_backend() if landmarks else None
    out = {"variant": name, "steps": cfg.steps, "train_clips": len(train), "seconds": round(seconds, 1),
           "final_generator_total": float(np.mean(losses[-10:])),
           "grad_norm": {n: float(np.mean(v)) if v else None for n, v in grads.items()}}
    sets = {"heldout_static": build_eval_set(held, seed, cfg.model.image_size, cfg.eval_pairs_per_clip,
                                             coeff_window=window),
            "heldout_motion": build_eval_set(held, seed, cfg.model.image_size, cfg.eval_pairs_per_clip,
                                             selection="motion", coeff_window=window)}
    if train_clips:
        sets["train_motion"] = build_eval_set(train, seed, cfg.model.image_size, cfg.eval_pairs_per_clip,
                                              selection="motion", coeff_window=window)
    for key, data in sets.items():
        res, _ = evaluate_heldout(trainer, data, cfg.landmark_size, backend if key != "heldout_static" else None,
                                  source_motion=True)
        summary = summarize(res, data.clip_ids, 500, seed)
        summary["mouth_delta"] = float(data.mouth_delta.mean())
        summary["pose_delta_deg"] = float(data.pose_delta.mean())
        out[key] = summary
    out["pose_estimate"] = pose_diagnostic(trainer, sets["heldout_motion"], held)
    seen = build_eval_set(train, seed, cfg.model.image_size, 2, coeff_window=window)
    drv = seen.driving.float()
    out["train_pairs_l1"] = {
        mode: float((trainer.reconstruct(seen, train_mode=(mode == "train_mode")) - drv).abs().mean())
        for mode in ("eval_mode", "train_mode")}
    out["train_pairs_l1"]["source"] = float((seen.source.float() - drv).abs().mean())
    if backend is not None:
        backend.close()
    return out


@torch.no_grad()
def pose_diagnostic(trainer: RendererTrainer, data, clips) -> dict:
    """Does H see the head pose? Pearson r and spread of its yaw/pitch/roll vs preprocessing's on the held-out frames
    of `data` (sources and drivings), in eval mode (running statistics) and training mode (batch statistics)."""
    from pipeline.data.corpus import FeatureStore

    by_id = {c.clip_id: c for c in clips}
    store = FeatureStore()
    truth = np.concatenate([
        np.degrees(store.get_array(by_id[c], "coeffs")[list(p), 64:67]) for c, p in zip(data.clip_ids, data.positions)])
    frames = torch.stack([x for pair in zip(data.source, data.driving) for x in pair])  # (2N, 3, S, S)
    out = {}
    for mode in ("eval", "train"):
        trainer.renderer.train(mode == "train")
        if trainer.from_images:
            motion = trainer.renderer.estimate_motion(frames)
        else:  # MappingNet on the same frames' coefficient windows, in the same (source, driving) order
            motion = trainer.renderer.map_motion(data.coeffs.flatten(0, 1))
        est = torch.stack(motion.degrees(), dim=1).numpy()  # (2N, 3)
        exp = motion.exp.flatten(1).numpy()  # (2N, K*3)
        out[mode] = {name: {"r": float(np.corrcoef(est[:, k], truth[:, k])[0, 1]) if est[:, k].std() > 0 else 0.0,
                            "std_est": float(est[:, k].std()), "std_true": float(truth[:, k].std())}
                     for k, name in enumerate(("yaw", "pitch", "roll"))}
        out[mode]["exp_std"] = float(exp.std(axis=0).mean())
    trainer.renderer.eval()
    return out


def _print(row: dict) -> None:
    print(f"\n## {row['variant']} ({row['steps']} steps, {row['train_clips']} train clips, {row['seconds']} s)")
    print("grad norms: " + ", ".join(f"{k} {v:.3g}" for k, v in row["grad_norm"].items() if v is not None))
    for mode, d in row["pose_estimate"].items():
        print(f"H vs preprocessing pose ({mode} mode): " + ", ".join(
            f"{k} r {v['r']:+.2f} (std {v['std_est']:.1f}° vs {v['std_true']:.1f}°)" for k, v in d.items()
            if k != "exp_std") + f"; std of δ {d['exp_std']:.4f}")
    tl = row["train_pairs_l1"]
    print(f"training pairs L1: eval mode {tl['eval_mode']:.4f}, train mode {tl['train_mode']:.4f}, "
          f"copy source {tl['source']:.4f}")
    print("| set | Δmouth (IOD) | Δpose (°) | metric | generated | copy source | source's own motion | "
          "gain vs copy [95 %] | gain vs own motion [95 %] |")
    print("|---|---:|---:|---|---:|---:|---:|---|---|")
    for key in ("heldout_static", "heldout_motion", "train_motion"):
        if key not in row:
            continue
        s = row[key]
        for metric in ("l1", "mouth_l1", "mouth_lmd"):
            if metric not in s or s[metric].get("generated") is None:
                continue
            m = s[metric]
            print(f"| {key} | {s['mouth_delta']:.3f} | {s['pose_delta_deg']:.1f} | {metric} | {m['generated']:.4f} | "
                  f"{m['source_baseline']:.4f} | {m['source_motion_baseline']:.4f} | {m['improvement']:+.4f} "
                  f"[{m['improvement_ci_low']:+.4f}, {m['improvement_ci_high']:+.4f}] | "
                  f"{m['improvement_vs_source_motion']:+.4f} [{m['improvement_vs_source_motion_ci_low']:+.4f}, "
                  f"{m['improvement_vs_source_motion_ci_high']:+.4f}] |")


def experiment_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The arguments every renderer experiment script shares (params, data, TAVC, steps, variants, threads, JSON)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--processed", type=Path, default=ROOT / "data/processed")
    ap.add_argument("--tavc", type=Path, default=ROOT / "models/tavc/checkpoint.pt")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--variant", action="append", default=[],
                    help="name-less override list 'k=v[,k=v...]' (repeatable; one run each; none = the params as is)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    return ap


def variant_configs(args: argparse.Namespace) -> tuple[int, list[tuple[str, TrainRendererConfig]]]:
    """(seed, [(variant name, config)]): the `pretrain_renderer` section of --params with --steps and each
    --variant's overrides applied (one entry for the params as they are when no variant is given)."""
    torch.set_num_threads(args.threads)
    params = yaml.safe_load(args.params.read_text())
    out = []
    for variant in args.variant or [""]:
        section = json.loads(json.dumps(params["pretrain_renderer"]))
        section["steps"] = args.steps
        for assignment in filter(None, variant.split(",")):
            _override(section, assignment)
        out.append((variant or "params as is", from_dict(TrainRendererConfig, section, "pretrain_renderer")))
    return params["common"]["seed"], out


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, steps=300)
    ap.add_argument("--train-clips", type=int, default=0, help="train on the first N training clips only (0: all)")
    ap.add_argument("--no-landmarks", action="store_true", help="skip the landmark metrics (faster)")
    args = ap.parse_args(argv)
    seed, configs = variant_configs(args)
    rows = []
    for name, cfg in configs:
        row = run_variant(name, cfg, args.processed, args.tavc, seed, args.train_clips, not args.no_landmarks)
        row["config"] = to_dict(cfg)
        _print(row)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
