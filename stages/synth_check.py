"""Stage `synth_check`: compare preprocessing's recovered mouth opening and head pose with the synthetic truth.

    python -m stages.synth_check --raw data/raw --processed data/processed --reports reports/synth_check

Reads the `<clip>.truth.json` sidecars the synth stage wrote next to each video and the feature files of the
preprocess stage; writes metrics.json (face-found rate, Pearson r of mouth opening and yaw/pitch/roll, angle
errors in degrees) and truth_vs_recovered.png. On a real dataset (no sidecars) it reports zero clips checked.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.extractor_check import check_and_report
from stages import common as sc

log = logging.getLogger("tavce.synth_check")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.synth_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", type=Path, required=True, help="raw folder with <clip>.truth.json sidecars")
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--reports", type=Path, default=Path("reports/synth_check"))
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)

    sc.require_writable("synth_check", args.reports)
    with sc.tracked_stage("synth_check", args, {"common": common}, [args.processed / "manifest.parquet"]) as tracker:
        metrics = check_and_report(args.raw, args.processed, args.reports)
        tracker.log_metrics(sc.numeric_metrics(metrics))
        sc.log_report_folder(tracker, args.reports)
    log.info("synth_check: %s", {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
