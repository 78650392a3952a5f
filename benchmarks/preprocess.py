"""Benchmark the preprocessing stage: whole-stage frames/s vs decode-only and landmark-only, 1 vs 2 workers.

    python benchmarks/preprocess.py [--raw data/raw] [--clips 12] [--params params.yaml]

All figures are measured in the same run on the same clips; ratios matter more than absolute numbers on a noisy
machine. "raw decord" is decord's own batch decode of every source frame (the reference); "decode" is our
read_video (decord + timestamp resampling to 25 fps); "landmarks" is the landmark backend alone on decoded frames
in the configured `preprocess.landmark_mode` (and, for reference, in the other mediapipe mode); "stage" is
run_preprocess end to end (decode, audio, detection, crop, coefficients, features, encoding, writing) with a cold
cache and the configured encoder preset and keyframe interval; with 2 workers it runs twice, with spawned workers
(each imports torch and mediapipe itself) and with the default start method (forkserver: imported once, workers
forked from it; `pipeline.preprocess.worker_context`). The last lines give the 2-worker stage in frames/s,
as a multiple of real time (common.fps), and as a fraction of the configured landmark-only throughput (issue 16
item 4 asks for >= 100 frames/s and >= 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import decord  # noqa: E402
import yaml  # noqa: E402

from pipeline import media  # noqa: E402
from pipeline.config import CommonConfig, from_dict  # noqa: E402
from pipeline.faces.landmarks import make_backend  # noqa: E402
from pipeline.preprocess import PreprocessConfig, discover, run_preprocess, worker_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of raw videos (default: data/raw)")
    ap.add_argument("--clips", type=int, default=12, help="number of clips to use (default: 12)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = yaml.safe_load(args.params.read_text())
    common = from_dict(CommonConfig, params["common"], "common")
    cfg = from_dict(PreprocessConfig, params["preprocess"], "preprocess")
    jobs, _ = discover(args.raw, cfg.extensions, cfg.speaker_regex)
    jobs = jobs[: args.clips]
    if not jobs:
        raise SystemExit(f"no videos under {args.raw} (run `dvc repro synth` first)")

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "raw"
        for j in jobs:  # a folder with just these clips (symlinks), same ids
            dst = subset / j.src.relative_to(args.raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(j.src.resolve())

        rows = []
        t0 = time.perf_counter()
        n_src = 0
        for j in jobs:
            vr = decord.VideoReader(str(j.src), ctx=decord.cpu(0))
            n_src += len(vr.get_batch(list(range(len(vr)))).asnumpy())
        t_raw = time.perf_counter() - t0
        rows.append(("raw decord (all source frames)", n_src, t_raw))

        t0 = time.perf_counter()
        decoded = [media.read_video(j.src, fps=common.fps).frames for j in jobs]
        t_dec = time.perf_counter() - t0
        n = sum(len(f) for f in decoded)
        rows.append(("decode + resample to 25 fps", n, t_dec))

        modes = [cfg.landmark_mode]
        if cfg.backend == "mediapipe":  # the other mode as a reference
            modes += [m for m in ("per_frame", "tracking") if m != cfg.landmark_mode]
        t_lm = {}
        for mode in modes:
            backend = make_backend(cfg.backend, min_confidence=cfg.min_confidence, mode=mode,
                                   detect_interval=cfg.detect_interval)
            t0 = time.perf_counter()
            for f in decoded:
                backend.process(f)
            t_lm[mode] = time.perf_counter() - t0
            backend.close()
            rows.append((f"landmarks only ({cfg.backend}, {mode})", n, t_lm[mode]))
        del decoded

        # The reference start method first (spawn: every worker imports torch/mediapipe itself), then the default
        # (forkserver where available, `worker_context`), whose server starts inside its own timed run.
        starts = [("spawn", "2 workers, spawned")] if worker_context().get_start_method() != "spawn" else []
        for method, label in starts:
            os.environ["TAVCE_WORKER_START"] = method
            try:
                s = run_preprocess(subset, Path(tmp) / f"out_{method}", dataclasses.replace(cfg, workers=2), common,
                                   progress=False)
            finally:
                del os.environ["TAVCE_WORKER_START"]
            rows.append((f"whole stage, {label}", s.frames_processed, s.seconds_pass1))
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            c = dataclasses.replace(cfg, workers=workers)
            s = run_preprocess(subset, out, c, common, progress=False)
            label = "1 worker (in process)" if workers == 1 else f"2 workers, {worker_context().get_start_method()}"
            rows.append((f"whole stage, {label}", s.frames_processed, s.seconds_pass1))

    ref = n / t_dec
    print(f"\npreprocess benchmark: {len(jobs)} clips, {n} frames at {common.fps} fps, crop {common.image_size}px\n")
    print(f"{'measurement':40s} {'frames':>7s} {'seconds':>8s} {'frames/s':>9s} {'vs decode':>9s}")
    for name, frames, secs in rows:
        fps = frames / secs if secs > 0 else float("nan")
        print(f"{name:40s} {frames:7d} {secs:8.2f} {fps:9.1f} {fps / ref:9.2f}")
    w1, w2 = rows[-2], rows[-1]
    if len(rows) > len(modes) + 4:
        sp = rows[-3]
        print(f"\n2 workers, {worker_context().get_start_method()} vs spawn: x{(w2[1] / w2[2]) / (sp[1] / sp[2]):.2f}")
    print(f"scaling 1 -> 2 workers: x{(w2[1] / w2[2]) / (w1[1] / w1[2]):.2f}")
    stage2, lm = w2[1] / w2[2], n / t_lm[cfg.landmark_mode]
    print(f"whole stage, 2 workers: {stage2:.1f} frames/s = {stage2 / common.fps:.2f}x real time at {common.fps} fps; "
          f"{stage2 / lm:.2f}x landmark-only ({cfg.landmark_mode}, {lm:.1f} frames/s)")
    print(f"settings: landmark_mode {cfg.landmark_mode}, detect_interval {cfg.detect_interval}, encoder_preset "
          f"{cfg.encoder_preset}, crf {cfg.crf}, keyframe_interval_s {cfg.keyframe_interval_s}")


if __name__ == "__main__":
    main()
