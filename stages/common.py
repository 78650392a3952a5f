"""Shared plumbing for stage entry points: params loading, logging, run context and MLflow tracking.

This is the layer that reads params.yaml, argv and environment variables (DVC_ROOT, DVC_EXP_NAME,
DVC_EXP_BASELINE_REV, MLFLOW_TRACKING_URI, TAVCE_NO_TRACKING); the `pipeline` library receives plain values.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from pipeline import tracking
from pipeline.config import CommonConfig, ConfigError, flatten, from_dict, to_dict
from pipeline.io import NotWritable, check_writable

T = TypeVar("T")
log = logging.getLogger("tavce")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "git", "matplotlib", "PIL", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file with a `common` section and this stage's section (default: params.yaml)")
    parser.add_argument("--no-track", action="store_true",
                        help="do not record an MLflow run (also: TAVCE_NO_TRACKING=1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_params(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as err:
        raise SystemExit(f"params file not found: {path}") from err
    except yaml.YAMLError as err:
        raise SystemExit(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_section(params: dict[str, Any], section: str, cls: type[T], params_path: Path) -> T:
    if section not in params:
        raise SystemExit(f"{params_path}: missing section `{section}`")
    try:
        return from_dict(cls, params[section], section)
    except ConfigError as err:
        raise SystemExit(f"{params_path}: {err}") from err


def load_common(params: dict[str, Any], params_path: Path) -> CommonConfig:
    return load_section(params, "common", CommonConfig, params_path)


def project_root() -> Path:
    root = os.environ.get("DVC_ROOT")
    if root:
        return Path(root)
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_context() -> tracking.RunContext:
    """Resolve the tracking context from the environment (see module docstring)."""
    cwd = Path.cwd()
    rev = _git(["rev-parse", "HEAD"], cwd) or "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    extra = {}
    if os.environ.get("DVC_STAGE"):
        extra["dvc_stage"] = os.environ["DVC_STAGE"]
    return tracking.RunContext(
        root=project_root(),
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
        git_rev=rev,
        git_dirty=bool(status),
        dvc_exp_name=os.environ.get("DVC_EXP_NAME") or None,
        dvc_baseline_rev=os.environ.get("DVC_EXP_BASELINE_REV") or None,
        extra_tags=extra,
    )


def require_writable(stage: str, *folders: Path) -> None:
    """Stop the stage with one message naming the folder when an output folder cannot be written — before any
    input is hashed, decoded or trained on."""
    try:
        check_writable(*folders)
    except NotWritable as err:
        raise SystemExit(f"{stage}: {err}") from err


def tracking_enabled(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_track", False) or os.environ.get("TAVCE_NO_TRACKING", "") in ("1", "true"))


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def tracked_stage(stage: str, args: argparse.Namespace, sections: dict[str, Any], inputs: Sequence[Path]
                  ) -> Iterator[tracking.Tracker]:
    """One MLflow run around a stage body (a `NullTracker` when tracking is off).

    Args:
        stage: DVC stage name.
        sections: {section name: config dataclass} logged as flattened params.
        inputs: files/folders whose content hash becomes the run's `data_version` tag.
    """
    if not tracking_enabled(args):
        yield tracking.NullTracker()
        return
    params = flatten({name: to_dict(cfg) for name, cfg in sections.items()})
    # `kill` (SIGTERM, e.g. from a scheduler or `pkill`) becomes an exception, so the MLflow run is closed as FAILED
    # instead of being left RUNNING; the stage's atomic writes and checkpoints make the rerun resume cleanly.
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    t0 = time.perf_counter()
    ver = tracking.data_version(inputs)
    log.info("data version of %s: %s (%.1f s to hash)", ", ".join(map(str, inputs)), ver, time.perf_counter() - t0)
    with tracking.stage_run(run_context(), stage, params, ver) as tracker:
        yield tracker


def log_report_folder(tracker: tracking.Tracker, folder: Path, max_bytes: int = 20 << 20) -> None:
    """Log the small files of a report folder as artifacts (skips anything over `max_bytes`)."""
    if not folder.is_dir():
        return
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.stat().st_size <= max_bytes and not f.name.startswith(".tmp"):
            rel = f.parent.relative_to(folder)
            tracker.log_artifact(f, None if str(rel) == "." else rel.as_posix())


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat numeric part of a metrics dict (what MLflow accepts)."""
    out = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Training stages: one shape for all of them
# ----------------------------------------------------------------------------------------------------------------
class TrainRun(Protocol):
    """What a training entry point returns (see :mod:`pipeline.train.common`)."""

    metrics: dict[str, Any]
    seconds: float


def training_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser every training stage shares: --processed, --out, --reports, --no-progress, --params,
    --no-track, -v. A stage adds its own inputs (e.g. --tavc) before parsing."""
    head, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=head, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processed", type=Path, required=True, help="output folder of the preprocess stage")
    p.add_argument("--out", type=Path, required=True,
                   help="model folder (checkpoint.pt is written there, and resumed after a kill)")
    p.add_argument("--reports", type=Path, default=Path("reports") / stage,
                   help=f"report folder (default: reports/{stage})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_args(p)
    return p


MODEL_ARTIFACT_MAX_BYTES = 2 << 30  # a checkpoint above this stays in the DVC cache only


def log_model(tracker: tracking.Tracker, checkpoint: Path, config: dict[str, Any]) -> None:
    """Log the trained model as artifacts under `model/`: its checkpoint (which stores its own config) and the params
    sections it was trained with as `config.yaml`, so a run in the MLflow UI carries what it produced."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(config, sort_keys=False))
        tracker.log_artifact(cfg_file, "model")
    if checkpoint.is_file() and checkpoint.stat().st_size <= MODEL_ARTIFACT_MAX_BYTES:
        tracker.log_artifact(checkpoint, "model")
    elif checkpoint.is_file():
        log.info("%s is %.1f GB: not copied to MLflow (it stays in the DVC cache)", checkpoint,
                 checkpoint.stat().st_size / 1e9)
