"""Stage `train_syncers`: the MS-Sync syncer pyramid and the rigid-motion AV-offset metric (SPEC §6).

    python -m stages.train_syncers --processed data/processed --out models/syncers --reports reports/train_syncers

Trains, one after the other, four InfoNCE syncers on all 68 landmarks (200/400/800/1600 ms; the frozen pyramid
of the multi-scale sync loss, `pipeline.train.syncers.load_pyramid`) and three triplet syncers on the 31 rigid
landmarks 17-47 (200/400/800 ms; MS-Sync Table 2), into one resumable `<out>/checkpoint.pt`. A complete
checkpoint with the same params and data is only re-evaluated. Writes `<reports>/metrics.json` (held-out window
accuracy of each syncer; |AV-Off| of ground truth vs random audio re-pairings per scale, with a one-sided
Mann-Whitney p-value), `offsets.png` (Table 2 as box plots), `curves.png` and `history.json`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.io import write_json
from pipeline.train.common import plot_curves
from pipeline.train.syncers import TrainSyncersConfig, plot_offsets, syncer_specs, train_syncers
from stages import common as sc

log = logging.getLogger("tavce.train_syncers")
STAGE = "train_syncers"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.train_syncers", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--out", type=Path, required=True, help="model folder (checkpoint.pt; resumed when compatible)")
    p.add_argument("--reports", type=Path, required=True, help="report folder (metrics.json, plots)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, STAGE, TrainSyncersConfig, args.params)

    with sc.tracked_stage(STAGE, args, {"common": common, STAGE: cfg},
                          [args.processed / "manifest.parquet"]) as tracker:
        result = train_syncers(args.processed, args.out, cfg, common.seed, tracker, progress=not args.no_progress)
        args.reports.mkdir(parents=True, exist_ok=True)
        write_json(args.reports / "metrics.json", result.metrics)
        result.history.save(args.reports / "history.json")
        plot_offsets(result.offsets, cfg.window, args.reports / "offsets.png")
        names = [s.name for s in syncer_specs(cfg)]
        plot_curves(result.history, args.reports / "curves.png", {
            "train loss": [f"{n}_loss" for n in names],
            "held-out loss": [f"{n}_val_loss" for n in names],
            "held-out top-1 accuracy": [f"{n}_val_acc" for n in names]}, title="train_syncers")
        tracker.log_metrics(sc.numeric_metrics(result.metrics))
        sc.log_report_folder(tracker, args.reports)

    rigid = result.metrics["rigid_offset"]
    log.info("rigid |AV-Off| ground truth vs random: %s", ", ".join(
        f"{k}: {v['gt_mean']:.2f} vs {v['random_mean']:.2f} (p={v['p_value']:.3g})" for k, v in rigid.items()))
    log.info("held-out accuracy: %s", ", ".join(
        f"{k} {v['accuracy']:.2f} (chance {v['chance']:.2f})" for k, v in result.metrics["windows"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
