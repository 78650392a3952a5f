"""Scaling benchmark (issue 15, item 5): preprocessing clips/s, local engine vs Ray, with 1 and 2 workers.

    python benchmarks/scaling.py [--raw data/raw] [--clips 8] [--params params.yaml] [--ray-address ADDR]

Each row preprocesses the same clips into a fresh folder (cold cache) with `run_preprocess`; clips/s is over the
whole call, so the Ray rows include starting (or attaching to) Ray and each worker's landmark backend. With
`--ray-address` the Ray rows run on that cluster (its CPUs, not the worker count, set the parallelism). Training
steps/s at 1 vs 2 processes needs DDP under torchrun (issue 15, item 1), which is not built yet: that row says so.
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

import yaml  # noqa: E402

from pipeline.config import CommonConfig, from_dict  # noqa: E402
from pipeline.preprocess import PreprocessConfig, discover, run_preprocess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of raw videos (default: data/raw)")
    ap.add_argument("--clips", type=int, default=8, help="number of clips to use (default: 8)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local instance per row)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    params = yaml.safe_load(args.params.read_text())
    common = from_dict(CommonConfig, params["common"], "common")
    cfg = from_dict(PreprocessConfig, params["preprocess"], "preprocess")
    jobs, _ = discover(args.raw, cfg.extensions, cfg.speaker_regex)
    jobs = jobs[: args.clips]
    if not jobs:
        raise SystemExit(f"no videos under {args.raw} (run `dvc repro synth` first)")

    rows: list[tuple[str, str]] = []
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
    for procs in (1, 2):
        rows.append((f"train steps/s, {procs} process(es)", "not available yet (DDP not built)"))
        print(f"{rows[-1][0]:<40} {rows[-1][1]}", flush=True)


if __name__ == "__main__":
    main()
