"""Stage `train_syncnet`: train the SyncNet lip-sync expert and report AV offset / LSE-D / LSE-C on held-out speakers.

    python -m stages.train_syncnet --processed data/processed --out models/syncnet --reports reports/train_syncnet

Trains the two-stream SyncNet (5 frames of the face region `model.face_region` - mouth square, lower half or
whole crop - vs 20 MFCC rows) with the contrastive margin loss on the
`train_splits` speakers, resuming from <out>/checkpoint.pt when it was written with the same params and data. Then,
on the `eval_splits` speakers, runs syncnet_python's offset search: the AV offset predicted for audio shifted by
-S..+S frames (accuracy within ±1 frame) and LSE-D / LSE-C of synced vs shuffled audio. Writes <reports>/metrics.json,
curves.png, offsets.png, offsets.csv (one row per clip and shift) and
synced_vs_shuffled.csv (one row per clip). With `pretrained: <syncnet_v2.model>` and `steps: 0` it evaluates the
public weights instead (every number is labelled with the extractor that produced it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.io import atomic_path, write_json
from pipeline.train.syncnet import TrainSyncNetConfig, plot_report, train_syncnet
from stages import common as sc

log = logging.getLogger("tavce.train_syncnet")
STAGE = "train_syncnet"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.train_syncnet", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--out", type=Path, required=True, help="model folder (checkpoint.pt; resumed when compatible)")
    p.add_argument("--reports", type=Path, default=Path("reports") / STAGE, help="report folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, STAGE, TrainSyncNetConfig, args.params)

    with sc.tracked_stage(STAGE, args, {"common": common, STAGE: cfg}, [args.processed / "manifest.parquet"]) as tracker:
        run = train_syncnet(cfg, common.seed, args.processed, args.out, tracker, progress=not args.no_progress)
        args.reports.mkdir(parents=True, exist_ok=True)
        write_json(args.reports / "metrics.json", run.metrics)
        for name, table in (("offsets.csv", run.evaluation.rows), ("synced_vs_shuffled.csv", run.evaluation.pairs)):
            with atomic_path(args.reports / name) as tmp:
                pd.DataFrame(table).to_csv(tmp, index=False, float_format="%.4f")
        plot_report(run, args.reports, cfg.vshift)
        tracker.log_metrics(sc.numeric_metrics(run.metrics))
        sc.log_report_folder(tracker, args.reports)
    m = run.metrics
    log.info("%s: offset within ±1 for %.0f%% of %d shifted clips; LSE-D/LSE-C synced %.3f/%.3f vs shuffled %.3f/%.3f",
             m["extractor"], 100 * m["offset_acc_pm1"], m["shifted_cases"], m["synced"]["lse_d"], m["synced"]["lse_c"],
             m["shuffled"]["lse_d"], m["shuffled"]["lse_c"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
