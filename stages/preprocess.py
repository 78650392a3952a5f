"""Stage `preprocess`: raw videos -> cropped 25 fps clips, landmarks, 73-d coefficients, audio features.

Runs under DVC (`dvc repro preprocess`) or on any folder:

    python -m stages.preprocess --raw DIR --out DIR [--params params.yaml] [--reports DIR]

Outputs under --out: clips/<id>.mp4 (256x256 crops with audio), features/<id>.npz, manifest.parquet,
rejected.csv, expression_basis.npz, cache/ (per-clip pass-1 results: a rerun only processes new or changed
videos). Under --reports: metrics.json, contact_sheet.png, sample_landmarks.mp4/.gif (one clip with its landmarks, head
angles and audio).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from pipeline.io import NotWritable
from pipeline.preprocess import NoUsableClips, PreprocessConfig
from pipeline.preprocess_report import preprocess_and_report
from stages import common as sc

log = logging.getLogger("tavce.preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stages.preprocess",
        description=__doc__.split("\n\n")[0],
        epilog="Rejected videos are listed with a reason in OUT/rejected.csv; the run continues past them. "
               "See README.md for the feature file layout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--raw", type=Path, required=True, help="folder of raw videos (nested folders; mp4 mkv avi mov webm)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--reports", type=Path, default=Path("reports/preprocess"),
                   help="folder for metrics.json and the contact sheet (default: reports/preprocess)")
    p.add_argument("--workers", type=int, default=None, help="override preprocess.workers")
    p.add_argument("--dry-run", action="store_true", help="list what would be processed and exit")
    sc.add_common_args(p)
    return p.parse_args(argv)


def _weights_dir(cfg: PreprocessConfig) -> str | None:
    if cfg.backend != "face_alignment":
        return None
    if cfg.face_alignment_weights:
        return cfg.face_alignment_weights
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, "preprocess", PreprocessConfig, args.params)
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=args.workers)
        cfg.validate()
    if args.dry_run:
        from pipeline.preprocess import discover

        jobs, dup = discover(args.raw, cfg.extensions, cfg.speaker_regex)
        for j in jobs:
            print(f"{j.speaker}\t{j.clip_id}\t{j.src}")
        print(f"{len(jobs)} video(s), {len(dup)} unusable id(s); config: {dataclasses.asdict(cfg)}")
        return 0

    sc.require_writable("preprocess", args.out, args.reports)
    with sc.tracked_stage("preprocess", args, {"common": common, "preprocess": cfg}, [args.raw]) as tracker:
        try:
            summary = preprocess_and_report(args.raw, args.out, args.reports, cfg, common,
                                            weights_dir=_weights_dir(cfg))
        except (FileNotFoundError, NotWritable, NoUsableClips) as err:  # a message, not a traceback
            raise SystemExit(f"preprocess: {err}") from err
        metrics = summary.metrics()
        tracker.log_metrics(sc.numeric_metrics(metrics))
        sc.log_report_folder(tracker, args.reports)
        for name in ("manifest.parquet", "rejected.csv"):
            if (args.out / name).is_file():
                tracker.log_artifact(args.out / name, "data")
    log.info("preprocess: %d/%d clips usable (%d processed, %d cached), %d rejected %s, %s frames/s, %.1f s in all",
             metrics["clips_out"], metrics["clips_in"], metrics["processed"], metrics["cached"],
             metrics["rejected_total"], metrics["rejected"],
             f"{metrics['throughput_fps']:.1f}" if metrics["throughput_fps"] else "-", metrics["seconds_total"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
