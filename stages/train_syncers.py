"""Stage `train_syncers`: the MS-Sync syncer pyramid and the rigid-motion AV-offset metric (method.md §6.2).

    python -m stages.train_syncers --processed data/processed --out models/syncers --reports reports/train_syncers

Trains, one after the other, four InfoNCE syncers on all 68 landmarks (200/400/800/1600 ms; the frozen pyramid
of the multi-scale sync loss, `pipeline.losses.syncers.load_pyramid`) and three triplet syncers on the 31 rigid
landmarks 17-47 (200/400/800 ms; MS-Sync Table 2), into one resumable `<out>/checkpoint.pt`. A complete
checkpoint with the same params and data is only re-evaluated. Writes `<reports>/metrics.json` (held-out window
accuracy of each syncer; |AV-Off| of ground truth vs random audio re-pairings per scale, with a one-sided
Mann-Whitney p-value), `offsets.png` (Table 2 as box plots), `curves.png` and `history.json`.
"""

from __future__ import annotations

import logging

from pipeline.train.syncers import TrainSyncersConfig, train_syncers
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.train_syncers")
STAGE = "train_syncers"


def main(argv: list[str] | None = None) -> int:
    args = sc.training_parser(STAGE, __doc__).parse_args(argv)
    _, result = run_training_stage(STAGE, args, TrainSyncersConfig, train_syncers)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    rigid = result.metrics["rigid_offset"]
    log.info("rigid |AV-Off| ground truth vs random: %s", ", ".join(
        f"{k}: {v['gt_mean']:.2f} vs {v['random_mean']:.2f} (p={v['p_value']:.3g})" for k, v in rigid.items()))
    log.info("held-out accuracy: %s", ", ".join(
        f"{k} {v['accuracy']:.2f} (chance {v['chance']:.2f})" for k, v in result.metrics["windows"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
