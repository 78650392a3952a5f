"""Stage `evaluate`: the paper's Table I protocol on the test speakers (issue 13; pipeline.evaluate_run).

    python -m stages.evaluate --models models --out reports/evaluate

For every corpus in params `evaluate.datasets` (name + processed folder), the first `max_clips` test clips: ground
truth, the trained model driven by the clip's audio from its first frame ("ours"), and the first frame held still
("static source frame"), all scored by the same metrics (FID/KID, CSIM, LMD, LSE-D/LSE-C/AV offset, TAVC
similarity, rigid |AV-Off|), each labelled with its feature extractor. Writes <out>/metrics.json, table.md,
clips.csv, metrics.png, comparison.mp4/.gif and videos/<dataset>/<system>/*.mp4; logs them to MLflow.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.evaluate_run import EvaluateConfig, run_evaluation
from stages import common as sc

log = logging.getLogger("tavce.evaluate")
STAGE = "evaluate"


def main(argv: list[str] | None = None) -> int:
    head, _, rest = (__doc__ or "").partition("\n\n")
    p = argparse.ArgumentParser(prog=f"python -m stages.{STAGE}", description=head, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models"), help="models folder of the pipeline run")
    p.add_argument("--expression-basis", type=Path, default=None,
                   help="expression basis (default: <models>/../data/processed/expression_basis.npz)")
    p.add_argument("--out", type=Path, default=Path("reports") / STAGE, help="report folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, STAGE, EvaluateConfig, args.params)
    sc.require_writable(STAGE, args.out)
    inputs = [Path(d.processed) / "manifest.parquet" for d in cfg.datasets]
    inputs += [args.models / n / "checkpoint.pt" for n in ("train", "audio2coeff", "tavc", "syncnet", "syncers")]
    with sc.tracked_stage(STAGE, args, {"common": common, STAGE: cfg}, [i for i in inputs if i.exists()]) as tracker:
        run = run_evaluation(cfg, models=args.models, out=args.out, tracker=tracker, progress=not args.no_progress,
                             expression_basis=args.expression_basis)
        sc.log_report_folder(tracker, args.out)
    log.info("%s: %.1f s; table in %s:\n%s", STAGE, run.seconds, args.out / "table.md",
             (args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
