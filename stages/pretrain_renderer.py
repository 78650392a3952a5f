"""Stage `pretrain_renderer`: video-driven pretraining of the face renderer (face-vid2vid + CERL; TAVCE §III-C,
§III-E; SPEC §4).

    python -m stages.pretrain_renderer --processed data/processed --tavc models/tavc/checkpoint.pt \\
        --out models/renderer --reports reports/pretrain_renderer

A source and a driving frame of the same clip; the renderer (appearance feature extractor, CERL, canonical
keypoint detector, head-pose/expression estimator, 3D dense motion + SPADE generator) reconstructs the driving
frame from the source and the driving frame's estimated motion, with the driving frame's audio relationship C^a
(frozen TAVC audio encoder) feeding CERL. Losses: multi-scale perceptual (VGG19; the extractor actually used is
recorded), hinge GAN + feature matching against a multi-scale patch discriminator, equivariance, keypoint prior,
deformation prior, L1, head pose (only with Hopenet weights configured). Adam (0.5, 0.999).

Writes <out>/checkpoint.pt (resumable: rerun the same command after a kill; `pipeline.render.load_renderer`
loads it for inference), and in <reports>: metrics.json (held-out L1 and landmark distance of the reconstruction
vs the "output the source frame" baseline, with clip-bootstrap intervals; parameter counts; extractor names),
samples.png (source | driving | generated | error), samples/step_*.png (one grid per evaluation), curves.png,
heldout_pairs.csv.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.io import write_json
from pipeline.train.renderer import TrainRendererConfig, plot_report, pretrain_renderer
from stages import common as sc

log = logging.getLogger("tavce.pretrain_renderer")
STAGE = "pretrain_renderer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m stages.{STAGE}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Settings come from the `common` and `pretrain_renderer` sections of --params.")
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--tavc", type=Path, default=None,
                   help="trained TAVC checkpoint (models/tavc/checkpoint.pt); needed when model.cerl.enabled")
    p.add_argument("--out", type=Path, required=True, help="model folder (checkpoint.pt is written and resumed there)")
    p.add_argument("--reports", type=Path, default=Path(f"reports/{STAGE}"), help="report folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc.add_common_args(p)
    args = p.parse_args(argv)
    sc.setup_logging(args.verbose)
    params = sc.load_params(args.params)
    common = sc.load_common(params, args.params)
    cfg = sc.load_section(params, STAGE, TrainRendererConfig, args.params)
    inputs = [args.processed / "manifest.parquet"] + ([args.tavc] if args.tavc is not None else [])

    with sc.tracked_stage(STAGE, args, {"common": common, STAGE: cfg}, inputs) as tracker:
        run = pretrain_renderer(args.processed, args.tavc, args.out, args.reports, cfg, common.seed, tracker,
                                progress=not args.no_progress)
        # wall time goes to MLflow and the log, not metrics.json: the same params and data give the same file
        seconds = run.metrics["train"].pop("seconds")
        tracker.log_metrics({"train/seconds": seconds})
        tracker.set_tags({"perceptual_extractor": run.metrics["extractors"]["perceptual"]})
        log.info("%s: %.1f s of training", STAGE, seconds)
        args.reports.mkdir(parents=True, exist_ok=True)
        write_json(args.reports / "metrics.json", run.metrics)
        pd.DataFrame(run.per_sample).to_csv(args.reports / "heldout_pairs.csv", index=False)
        plot_report(run, args.reports)
        tracker.log_metrics(sc.numeric_metrics(run.metrics))
        sc.log_report_folder(tracker, args.reports)
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
    log.info("%s: target met: %s", STAGE, run.metrics["target"]["met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
