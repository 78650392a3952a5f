"""Ablation of the multi-scale sync loss on Audio2Coeff (method.md §5.4): `ms_sync.weight` on vs off, over seeds.

    python benchmarks/audio2coeff_ablation.py --seeds 0 1 --on 0.05
    python benchmarks/audio2coeff_ablation.py --seeds 0 1 --on 0.05 --set model.pose_generator=ms_sync

Each run trains the `train_audio2coeff` section of --params (overridden by --set key=value pairs, dotted for nested
keys) from scratch with the stage's own trainer (no MLflow), once with `ms_sync.weight` = 0 and once with --on, for
each seed (the common seed: init, samples, latent noise), into a temporary folder, and prints one table row per run
and the mean per setting: held-out mouth-opening r, mouth LMD and its gain over the training-mean baseline, the
lip AV offset for the true audio, whether the offset follows a +-5-frame audio shift, the rigid |AV-Off| of the
generated motion vs random pairs per scale, pose diversity and the training time. --json writes every metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import from_dict  # noqa: E402
from pipeline.tracking import NullTracker  # noqa: E402
from pipeline.train.audio2coeff import TrainAudio2CoeffConfig, train_audio2coeff  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def set_key(section: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        section = section[k]
    if keys[-1] not in section:
        raise SystemExit(f"--set {dotted}: no such key in train_audio2coeff")
    section[keys[-1]] = yaml.safe_load(value)


def row(metrics: dict, seconds: float) -> dict[str, float]:
    lips, sync, rigid = metrics["lips"], metrics["sync"], metrics["rigid_offset"]
    out = {"mouth_r": lips["mouth_opening_r"]["mean"], "mouth_lmd": lips["mouth_lmd"]["model"]["mean"],
           "lmd_gain_vs_mean": lips["lmd_gain_vs_train_mean"]["mean"],
           "abs_offset": sync["abs_offset_true_audio"]["mean"], "follows_shift": sync["follows_shift"]}
    for scale, cell in rigid.items():
        out[f"rigid_{scale}"] = cell["generated"]["gt_mean"]
        out[f"random_{scale}"] = cell["generated"]["random_mean"]
    out["pose_std_deg"] = metrics["pose_diversity"]["model_std_deg"]["mean"]
    out["seconds"] = seconds
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--processed", type=Path, default=ROOT / "data/processed")
    p.add_argument("--syncers", type=Path, default=ROOT / "models/syncers/checkpoint.pt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--on", type=float, default=None, help="ms_sync.weight of the 'on' runs (default: --params')")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the section")
    p.add_argument("--json", type=Path, help="write every run's metrics here")
    args = p.parse_args()
    section = yaml.safe_load(args.params.read_text())["train_audio2coeff"]
    for kv in args.set:
        key, _, value = kv.partition("=")
        set_key(section, key, value)
    on = section["ms_sync"]["weight"] if args.on is None else args.on
    if on <= 0:
        raise SystemExit("the 'on' weight must be > 0 (set it with --on)")
    runs, table = [], {}
    with tempfile.TemporaryDirectory(prefix="a2c_ablation_") as tmp:
        for weight in (on, 0.0):
            for seed in args.seeds:
                sec = json.loads(json.dumps(section))
                sec["ms_sync"]["weight"] = weight
                cfg = from_dict(TrainAudio2CoeffConfig, sec, "train_audio2coeff")
                name = f"w{weight:g}_s{seed}"
                res = train_audio2coeff(cfg, seed, processed=args.processed, out=Path(tmp) / name / "model",
                                        reports=Path(tmp) / name / "reports", tracker=NullTracker(), progress=False,
                                        syncers=args.syncers)
                table[(weight, seed)] = row(res.metrics, res.seconds)
                runs.append({"ms_sync_weight": weight, "seed": seed, "metrics": res.metrics, "seconds": res.seconds})
                print(f"done {name}: {table[(weight, seed)]}", flush=True)
    cols = list(next(iter(table.values())))
    print(f"\npose_generator {section['model']['pose_generator']}, steps {section['steps']}\n")
    print("| ms_sync.weight | seed | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for (weight, seed), r in table.items():
        print(f"| {weight:g} | {seed} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    for weight in (on, 0.0):
        mean = {c: float(np.mean([r[c] for (w, _), r in table.items() if w == weight])) for c in cols}
        print(f"| {weight:g} | mean | " + " | ".join(f"{mean[c]:.4f}" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
