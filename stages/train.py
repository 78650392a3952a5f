"""Stage `train`: TAVCE's audio-driven training stage — MappingNet + the pretrained renderer with CERL, fine-tuned
with the renderer losses and CAR (TAVCE Algorithm 1, §III-C/D, Eq. 5-6; method.md §5).

    python -m stages.train --processed data/processed --init models/renderer/checkpoint.pt \\
        --tavc models/tavc/checkpoint.pt --out models/train --reports reports/train

Each step: a driving frame and a random source frame of one training clip; the 27-frame coefficient windows of both
-> MappingNet -> keypoint motion; the driving frame's audio relationship c^a (frozen TAVC audio encoder) -> CERL; the
renderer reconstructs the driving frame; losses: perceptual, hinge GAN + feature matching, keypoint / deformation
priors (+ whole-frame L1 and an L1 on the mouth region, `loss_weights.mouth`, in the CPU config), and CAR:
1 − ⟨C^a_{i−1,i}, C^v_{i−1,i}⟩ with the frozen TAVC visual encoder on the mouth ROIs of the real previous frame and
of the generated frame. MappingNet trains at `train.lr` (paper 2e-4), the
rest at `train.renderer_lr`.

The paper's Table IV ablations:
    dvc exp run -S train.cerl.enabled=true  -S train.car.weight=0.1   # full
    dvc exp run -S train.cerl.enabled=false -S train.car.weight=0.1   # w/o CERL
    dvc exp run -S train.cerl.enabled=true  -S train.car.weight=0     # w/o CAR
    dvc exp run -S train.cerl.enabled=false -S train.car.weight=0     # w/o both

Writes <out>/checkpoint.pt (a renderer checkpoint with MappingNet; resumable after a kill) and in <reports> the
pretraining loop's report: metrics.json (held-out reconstruction from coefficients vs "copy the source" and vs the
source's own motion on near-static and large-motion pairs, TAVC similarity of the generated mouth change vs the
real one, clip-bootstrap intervals), sample grids, curves.png, heldout_pairs.csv.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.train.renderer import log_motion_summary
from pipeline.train.tavce import TrainTAVCEConfig, train_tavce
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.train")
STAGE = "train"


def main(argv: list[str] | None = None) -> int:
    p = sc.training_parser(STAGE, __doc__)
    p.add_argument("--init", type=Path, required=True,
                   help="pretrained renderer checkpoint to fine-tune (models/renderer/checkpoint.pt)")
    p.add_argument("--tavc", type=Path, required=True, help="trained TAVC checkpoint (models/tavc/checkpoint.pt)")
    args = p.parse_args(argv)
    _, run = run_training_stage(STAGE, args, TrainTAVCEConfig, train_tavce, inputs=[args.init, args.tavc],
                                   tavc=args.tavc, init=args.init)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    log_motion_summary(STAGE, run.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
