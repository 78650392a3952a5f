"""Stage `train_tavc`: train the TAVC metric (TAVCE §III-B, TAVCE Eq. 1-4; method.md §3), report it on held-out speakers.

    python -m stages.train_tavc --processed data/processed --out models/tavc --reports reports/train_tavc

Trains the audio encoder (Wav2Lip mel encoder + FC) and the mouth-ROI visual encoder (ResNet18 | IResNet18 + FC) so
that the relationship matrices of consecutive audio windows and of the matching frames agree (positive) and those
of non-matching frames do not (negative). Writes <out>/checkpoint.pt (resumable: rerun the same command after a
kill), and in <reports>: metrics.json (held-out positive / negative similarity, their ratio with a clip-bootstrap
95 % interval, parameter counts), curves.png, similarity_hist.png, heldout_samples.csv.
"""

from __future__ import annotations

import logging

from pipeline.train.tavc import TrainTAVCConfig, train_tavc
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.train_tavc")
STAGE = "train_tavc"


def main(argv: list[str] | None = None) -> int:
    args = sc.training_parser(STAGE, __doc__).parse_args(argv)
    _, run = run_training_stage(STAGE, args, TrainTAVCConfig, train_tavc)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    h = run.metrics["heldout"]
    log.info("%s: held-out pos %.3f neg %.3f ratio %.2f [%.2f, %.2f], pos > neg in %.0f %% (target met: %s)", STAGE,
             h["pos_sim"], h["neg_sim"], h["ratio"], h["ratio_ci_low"], h["ratio_ci_high"], 100 * h["pos_gt_neg"],
             run.metrics["target"]["met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
