"""Stage `train_tavc`: train the TAVC metric (TAVCE §III-B, Eq. 1-4; SPEC §3) and report it on held-out speakers.

    python -m stages.train_tavc --processed data/processed --out models/tavc --reports reports/train_tavc

Trains the audio encoder (Wav2Lip mel encoder + FC) and the mouth-ROI visual encoder (ResNet18 | IResNet18 + FC) so
that the relationship matrices of consecutive audio windows and of the matching frames agree (positive) and those
of non-matching frames do not (negative). Writes <out>/checkpoint.pt (resumable: rerun the same command after a
kill), and in <reports>: metrics.json (held-out positive / negative similarity, their ratio with a clip-bootstrap
95 % interval, parameter counts), curves.png, similarity_hist.png, heldout_samples.csv.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.io import write_json
from pipeline.train.tavc import TrainTAVCConfig, heldout_table, plot_report, train_tavc
from stages import common as sc

log = logging.getLogger("tavce.train_tavc")
STAGE = "train_tavc"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m stages.{STAGE}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Settings come from the `common` and `train_tavc` sections of --params.")
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--out", type=Path, required=True, help="model folder (checkpoint.pt is written and resumed there)")
    p.add_argument("--reports", type=Path, default=Path(f"reports/{STAGE}"), help="report folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, STAGE, TrainTAVCConfig, args.params)

    with sc.tracked_stage(STAGE, args, {"common": common, STAGE: cfg}, [args.processed / "manifest.parquet"]) as tracker:
        run = train_tavc(args.processed, args.out, cfg, common.seed, tracker, progress=not args.no_progress)
        # wall time goes to MLflow and the log, not metrics.json: the same params and data give the same file
        seconds = run.metrics["train"].pop("seconds")
        tracker.log_metrics({"train/seconds": seconds})
        log.info("%s: %.1f s of training", STAGE, seconds)
        args.reports.mkdir(parents=True, exist_ok=True)
        write_json(args.reports / "metrics.json", run.metrics)
        pd.DataFrame(heldout_table(run)).to_csv(args.reports / "heldout_samples.csv", index=False)
        plot_report(run, args.reports)
        tracker.log_metrics(sc.numeric_metrics(run.metrics))
        sc.log_report_folder(tracker, args.reports)
    h = run.metrics["heldout"]
    log.info("%s: held-out pos %.3f neg %.3f ratio %.2f [%.2f, %.2f], pos > neg in %.0f %% (target met: %s)", STAGE,
             h["pos_sim"], h["neg_sim"], h["ratio"], h["ratio_ci_low"], h["ratio_ci_high"], 100 * h["pos_gt_neg"],
             run.metrics["target"]["met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
