"""Stage `pretrain_renderer`: video-driven pretraining of the face renderer (face-vid2vid + CERL; TAVCE §III-C,
§III-E; method.md §4).

    python -m stages.pretrain_renderer --processed data/processed --tavc models/tavc/checkpoint.pt \\
        --out models/renderer --reports reports/pretrain_renderer

A source and a driving frame of the same clip; the renderer (appearance feature extractor, CERL, canonical
keypoint detector, head-pose/expression estimator, 3D dense motion + SPADE generator) reconstructs the driving
frame from the source and the driving frame's estimated motion, with the driving frame's audio relationship C^a
(frozen TAVC audio encoder) feeding CERL. Losses: multi-scale perceptual (VGG19; the extractor actually used is
recorded), hinge GAN + feature matching against a multi-scale patch discriminator, equivariance, keypoint prior,
deformation prior, L1, head pose (only with Hopenet weights configured). Adam (0.5, 0.999).

Writes <out>/checkpoint.pt (resumable: rerun the same command after a kill;
`pipeline.models.renderer.renderer.load_renderer` loads it for inference), and in <reports>: metrics.json
(held-out L1 and landmark distance of the reconstruction vs the "output the source frame" baseline, with
clip-bootstrap intervals; parameter counts; extractor names),
samples.png (source | driving | generated | error), samples_motion.png (the same for the held-out large-motion
pairs, where mouth opening and head pose differ most, also scored against "the renderer driven by the source's own
motion"), samples/step_*.png (one grid per evaluation), curves.png, heldout_pairs.csv (both sets, column `set`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.train.renderer import TrainRendererConfig, log_motion_summary, pretrain_renderer
from stages import common as sc
from stages.training import run_training_stage

log = logging.getLogger("tavce.pretrain_renderer")
STAGE = "pretrain_renderer"


def main(argv: list[str] | None = None) -> int:
    p = sc.training_parser(STAGE, __doc__)
    p.add_argument("--tavc", type=Path, default=None,
                   help="trained TAVC checkpoint (models/tavc/checkpoint.pt); needed when model.cerl.enabled")
    args = p.parse_args(argv)
    _, run = run_training_stage(STAGE, args, TrainRendererConfig, pretrain_renderer,
                                   inputs=[args.tavc] if args.tavc is not None else [], tavc=args.tavc)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    h = run.metrics["heldout"]
    for metric in ("l1", "lmd", "mouth_lmd"):
        if metric in h and h[metric].get("generated") is not None:
            m = h[metric]
            log.info("%s: held-out %s generated %.4f vs source baseline %.4f (improvement %.4f [%.4f, %.4f])",
                     STAGE, metric, m["generated"], m["source_baseline"], m["improvement"],
                     m["improvement_ci_low"], m["improvement_ci_high"])
    seen = run.metrics["seen_speakers_diagnostic"]["l1"]
    log.info("%s: training speakers (diagnostic) L1 generated %.4f vs source baseline %.4f", STAGE,
             seen["generated"], seen["source_baseline"])
    log_motion_summary(STAGE, run.metrics)
    log.info("%s: target (near-static pairs) met: %s", STAGE, run.metrics["target"]["met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
