"""Scaling benchmark (issue 15, item 5): preprocessing clips/s (local engine vs Ray, 1 and 2 workers) and training
steps/s of the training stages at 1 and 2 torchrun processes.

    python benchmarks/scaling.py [--raw data/raw] [--clips 8] [--params params.yaml] [--ray-address ADDR]
    python benchmarks/scaling.py --skip-preprocess --train-stages train_syncnet train_tavc --procs 1 2 \
        [--train-steps 40] [--device cuda --precision bf16]        # training rows only (on a GPU: per-GPU figures)

Preprocessing: each row preprocesses the same clips into a fresh folder (cold cache) with `run_preprocess`; clips/s
is over the whole call, so the Ray rows include starting (or attaching to) Ray and each worker's landmark backend.
With `--ray-address` the Ray rows run on that cluster (its CPUs, not the worker count, set the parallelism).

Training: each row runs the stage exactly as dvc.yaml does (`python -m stages.<stage>` for 1 process, `torchrun
--nproc_per_node=N -m stages.<stage>` otherwise) on `--processed` with the params file's section, `--train-steps`
steps, no held-out evaluation during training and no MLflow run; steps/s is the stage's own training time (the loop,
without start-up and the final evaluation, which rank 0 runs alone). The global batch is the section's, split over
the processes, so every row computes the same samples per step. On a CPU the cores are shared out: each process
gets cores / N torch threads (OMP_NUM_THREADS), so N processes use the same cores as 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import re  # noqa: E402
import subprocess  # noqa: E402

import yaml  # noqa: E402

from pipeline.config import CommonConfig, from_dict  # noqa: E402
from pipeline.preprocess import PreprocessConfig, discover, run_preprocess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of raw videos (default: data/raw)")
    ap.add_argument("--clips", type=int, default=8, help="number of clips to use (default: 8)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local instance per row)")
    ap.add_argument("--skip-preprocess", action="store_true", help="training rows only")
    ap.add_argument("--processed", type=Path, default=Path("data/processed"), help="preprocessed corpus for training")
    ap.add_argument("--train-stages", nargs="*", default=["train_syncnet", "train_tavc"],
                    help="training stages to time (default: train_syncnet train_tavc; needs only --processed)")
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2], help="process counts (default: 1 2)")
    ap.add_argument("--train-steps", type=int, default=40, help="optimizer steps per training row (default: 40)")
    ap.add_argument("--device", default="cpu", help="common.device of the training rows (default: cpu)")
    ap.add_argument("--precision", default="fp32", help="common.precision of the training rows (default: fp32)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    params = yaml.safe_load(args.params.read_text())
    common = from_dict(CommonConfig, params["common"], "common")

    rows: list[tuple[str, str]] = []
    if not args.skip_preprocess:
        cfg = from_dict(PreprocessConfig, params["preprocess"], "preprocess")
        jobs, _ = discover(args.raw, cfg.extensions, cfg.speaker_regex)
        jobs = jobs[: args.clips]
        if not jobs:
            raise SystemExit(f"no videos under {args.raw} (run `dvc repro synth` first)")
        preprocess_rows(args, cfg, common, jobs, rows)
    for stage in args.train_stages:
        for procs in args.procs:
            rows.append((f"{stage} ({args.device}, {args.precision}), {procs} process(es)",
                         train_row(stage, procs, args, params)))
            print(f"{rows[-1][0]:<40} {rows[-1][1]}", flush=True)


def preprocess_rows(args: argparse.Namespace, cfg: PreprocessConfig, common: CommonConfig, jobs: list,
                    rows: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "raw"
        for j in jobs:  # a folder with just these clips (symlinks), same ids
            dst = subset / j.src.relative_to(args.raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(j.src.resolve())
        for engine in ("local", "ray"):
            for workers in (1, 2):
                run_cfg = dataclasses.replace(cfg, engine=engine, workers=workers, ray_address=args.ray_address)
                t0 = time.perf_counter()
                summary = run_preprocess(subset, Path(tmp) / f"out-{engine}-{workers}", run_cfg, common,
                                         progress=False)
                seconds = time.perf_counter() - t0
                where = " (cluster)" if engine == "ray" and args.ray_address else ""
                rows.append((f"preprocess {engine}{where}, {workers} worker(s)",
                             f"{summary.processed / seconds:.3f} clips/s ({summary.processed} clips, {seconds:.1f} s)"))
                print(f"{rows[-1][0]:<40} {rows[-1][1]}", flush=True)


def train_row(stage: str, procs: int, args: argparse.Namespace, params: dict) -> str:
    """Steps/s of one training stage at `procs` processes (module docstring)."""
    section = dict(params[stage])
    section.update(steps=args.train_steps, eval_every=0, checkpoint_every=args.train_steps, log_every=10)
    if "threads" in section:
        section["threads"] = 0  # torch's default, i.e. OMP_NUM_THREADS below
    if section["batch_size"] % procs:
        return f"skipped: batch_size {section['batch_size']} is not a multiple of {procs}"
    common = dict(params["common"], device=args.device, precision=args.precision)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        pfile = Path(tmp) / "params.yaml"
        pfile.write_text(yaml.safe_dump({"common": common, stage: section}))
        launcher = [sys.executable, "-m", f"stages.{stage}"] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
            str(29400 + os.getpid() % 1000), "-m", f"stages.{stage}"]
        env = {**os.environ, "TAVCE_NO_TRACKING": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
        proc = subprocess.run(launcher + ["--params", str(pfile), "--processed", str(args.processed), "--out",
                                          str(Path(tmp) / "model"), "--reports", str(Path(tmp) / "reports"),
                                          "--no-progress"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    found = re.findall(r"(\d+(?:\.\d+)?) s of training", proc.stderr)
    if not found:
        return "no training time in the stage's log"
    seconds = float(found[-1])
    return f"{args.train_steps / seconds:.2f} steps/s ({args.train_steps} steps of batch {section['batch_size']}, {seconds:.1f} s)"


if __name__ == "__main__":
    main()
