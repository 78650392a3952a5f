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

import logging

from pipeline.train.syncnet import TrainSyncNetConfig, train_syncnet
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.train_syncnet")
STAGE = "train_syncnet"


def main(argv: list[str] | None = None) -> int:
    args = sc.training_parser(STAGE, __doc__).parse_args(argv)
    _, run = run_training_stage(STAGE, args, TrainSyncNetConfig, train_syncnet)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    m = run.metrics
    log.info("%s [%s]: offset within ±1 for %.0f%% of %d shifted clips; LSE-D/LSE-C synced %.3f/%.3f vs shuffled %.3f/%.3f",
             m["extractor"], m["status"], 100 * m["offset_acc_pm1"], m["shifted_cases"], m["synced"]["lse_d"], m["synced"]["lse_c"],
             m["shuffled"]["lse_d"], m["shuffled"]["lse_c"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
