"""Stage `train_audio2coeff`: speech -> motion coefficients (ExpNet + PoseVAE or MS-Sync's generator; method.md §5).

    python -m stages.train_audio2coeff --processed data/processed --syncers models/syncers/checkpoint.pt \
        --out models/audio2coeff --reports reports/train_audio2coeff

Trains SadTalker's ExpNet (expression from mel windows + the reference expression) together with a head-pose model
chosen by `model.pose_generator`: `posevae` (SadTalker's conditional VAE with its sequence discriminator) or
`ms_sync` (MS-Sync's multi-scale autoregressive generator with frame and window discriminators). The frozen syncers
of train_syncers give the lip-sync expert loss (`loss_weights.lip_sync`) and the multi-scale sync loss on the
generated landmarks (`ms_sync.weight`, 0 = off; try `dvc exp run -S train_audio2coeff.ms_sync.weight=0`).
Resumable: a killed run continues from `<out>/checkpoint.pt`; a complete checkpoint with the same params, data and
syncers is only re-evaluated.

Writes `<reports>/metrics.json` (held-out speakers, clip-bootstrap intervals: mouth-opening r, mouth LMD against the
reference-held-still and training-mean baselines, lip AV offset with true and +-5-frame shifted audio, rigid
|AV-Off| of generated vs true vs random pairs, pose diversity over seeds, the lip expert used), `curves.png`,
`mouth_opening.png`, `history.json` and `heldout.mp4` (predicted | true landmarks, with the audio).
Use the trained model with `pipeline.models.audio2coeff.load_audio2coeff` + `generate_motion`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.train.audio2coeff import TrainAudio2CoeffConfig, train_audio2coeff
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.train_audio2coeff")
STAGE = "train_audio2coeff"


def main(argv: list[str] | None = None) -> int:
    parser = sc.training_parser(STAGE, __doc__)
    parser.add_argument("--syncers", type=Path, required=True,
                        help="checkpoint of the train_syncers stage (lip expert, sync-loss pyramid, rigid metric)")
    args = parser.parse_args(argv)
    if not args.syncers.is_file():
        raise SystemExit(f"--syncers {args.syncers}: not found (run `dvc repro train_syncers` first)")
    _, run = run_training_stage(STAGE, args, TrainAudio2CoeffConfig, train_audio2coeff,
                                   inputs=[args.processed / "expression_basis.npz", args.syncers],
                                   syncers=args.syncers)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    m = run.metrics
    lips = m["lips"]
    log.info("held-out mouth-opening r %.2f; mouth LMD %.4f vs reference %.4f, train mean %.4f",
             lips["mouth_opening_r"]["mean"], lips["mouth_lmd"]["model"]["mean"],
             lips["mouth_lmd"]["reference"]["mean"], lips["mouth_lmd"]["train_mean"]["mean"])
    log.info("lip offsets (true audio): %s; +shift %s; -shift %s", m["sync"]["offset_true_audio"],
             m["sync"]["offset_shift_plus"], m["sync"]["offset_shift_minus"])
    log.info("rigid |AV-Off| generated vs random: %s", ", ".join(
        f"{k}: {v['generated']['gt_mean']:.2f} vs {v['generated']['random_mean']:.2f}"
        for k, v in m["rigid_offset"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
