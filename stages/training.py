"""The body of every training stage: params -> one library call (possibly one rank of a torchrun run) -> MLflow.

Kept apart from :mod:`stages.common` so that the stages that train nothing do not depend on the distributed
training code (dvc.yaml lists what each stage imports).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline import tracking
from pipeline.config import to_dict
from pipeline.train.distributed import Distributed
from stages.common import (TrainRun, load_common, load_params, load_section, log_model, log_report_folder,
                           numeric_metrics, require_writable, setup_logging, tracked_stage)

T = TypeVar("T")
log = logging.getLogger("tavce")


def run_training_stage(stage: str, args: argparse.Namespace, config_cls: type[T],
                       train: Any, inputs: Sequence[Path] = (), **train_inputs: Any) -> tuple[T, TrainRun | None]:
    """argv + params -> one library call -> MLflow: the body of every training stage.

    Loads the `common` and `<stage>` params sections, opens the stage's MLflow run, calls
    ``train(cfg, common.seed, processed=..., out=..., reports=..., tracker=..., progress=..., dist=...,
    **train_inputs)`` (which writes the model and the report folder), then logs the numeric metrics and the report
    files. ``dist`` is this process's place in a torchrun run (`pipeline.train.distributed`; a plain run is one
    rank); on ranks other than 0 the run is ``None`` (the stage's entry point then just returns).

    Args:
        inputs: files whose content hash is the run's data version besides ``<processed>/manifest.parquet``.
    """
    setup_logging(args.verbose)
    params = load_params(args.params)
    common = load_common(params, args.params)
    cfg = load_section(params, stage, config_cls, args.params)
    require_writable(stage, args.out, args.reports)
    versioned = [args.processed / "manifest.parquet", *inputs]
    # Under torchrun (WORLD_SIZE > 1) every rank trains its share of each batch; rank 0 alone writes the checkpoint,
    # the report and the MLflow run, the others return None from `train` once training is done.
    try:
        dist = Distributed.from_env(os.environ, common.device, common.precision)
    except ValueError as err:
        raise SystemExit(f"{args.params}: {err}") from err
    try:
        if not dist.is_main:
            logging.getLogger().setLevel(logging.WARNING)
            train(cfg, common.seed, processed=args.processed, out=args.out, reports=args.reports,
                  tracker=tracking.NullTracker(), progress=False, dist=dist, **train_inputs)
            return cfg, None
        if dist.active:
            log.info("%s: rank 0 of %d %s processes (%s)", stage, dist.world_size, dist.device.type, common.precision)
        with tracked_stage(stage, args, {"common": common, stage: cfg}, versioned) as tracker:
            run = train(cfg, common.seed, processed=args.processed, out=args.out, reports=args.reports,
                        tracker=tracker, progress=not args.no_progress, dist=dist, **train_inputs)
        tracker.log_metrics(numeric_metrics(run.metrics))
        history = getattr(run, "history", None)
        if history is not None:  # every curve of the run, one row per step: `dvc plots` reads it (dvc.yaml plots)
            history.save_dense(args.reports / "curves.json")
        log_report_folder(tracker, args.reports)
        log_model(tracker, args.out / "checkpoint.pt", {"common": to_dict(common), stage: to_dict(cfg)})
    finally:
        dist.close()
    log.info("%s: %.1f s of training", stage, run.seconds)
    return cfg, run
