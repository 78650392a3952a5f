"""Experiment tracking: the only module that imports MLflow.

One MLflow experiment for the project, one run per executed DVC stage. Under `dvc exp run` (DVC_EXP_NAME set) the
stage runs of one DVC experiment are nested under a parent run named after it (`experiment_parent_run`), so the UI
lists each experiment as one expandable row and its stages side by side. A run carries
- tags: stage name, git revision, DVC experiment name and baseline revision (when run by `dvc exp run`),
  the data version (a content hash of the stage's inputs) and the host;
- params: the stage's params.yaml section and the common section (flattened, dotted keys);
- metrics (also per step for training curves) and small artifacts (metrics.json, plots, contact sheets);
- MLflow's system metrics (`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, GPU where
  one exists), sampled every `RunContext.system_metrics_interval_s` seconds while the stage runs.

A run whose process dies without closing it (SIGKILL, the out-of-memory killer, a power cut) would stay RUNNING
forever; each run therefore records its process (`pid`, `process_start`, `host`), and a stage starting marks its own
earlier RUNNING runs whose process is gone as KILLED, with a `killed_reason` tag (`mark_killed_runs`).

Tracking store: by default `sqlite:///<project root>/mlflow.db` as an *absolute* path, so runs made by
`dvc exp run --temp/--queue` (which execute in a throw-away copy under .dvc/tmp/exps) land in the project's
database, with artifacts under `<project root>/mlartifacts`. A server URI (`http://...`) is used as given.
Creating the sqlite database and the experiment is serialised with a file lock, because several processes
migrating a fresh sqlite schema at once fail.

Training loops and library functions receive a `Tracker` (`NullTracker` in tests) and never see MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.io import file_digest

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "tavce"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value is 6000 characters


class Tracker(Protocol):
    """What training loops and stages may do with a run."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullTracker:
    """A tracker that records nothing (tests, dry runs). Keeps the last metrics for inspection."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        self.artifacts.append(str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)


@dataclass(frozen=True)
class RunContext:
    """Where a stage runs: resolved by the stage entry point from the environment, never by the library.

    Args:
        root: project root (DVC_ROOT under DVC; the checkout otherwise).
        tracking_uri: None for the default sqlite store under `root`; otherwise any MLflow URI.
        git_rev: commit the code was run from ("unknown" outside git).
        dvc_exp_name / dvc_baseline_rev: set by `dvc exp run`, else None.
        extra_tags: anything else worth recording (e.g. the DVC stage name).
        system_metrics_interval_s: sampling interval of MLflow's CPU / memory / GPU monitor; None turns it off.
    """

    root: Path
    tracking_uri: str | None = None
    git_rev: str = "unknown"
    git_dirty: bool = False
    dvc_exp_name: str | None = None
    dvc_baseline_rev: str | None = None
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    system_metrics_interval_s: float | None = 10.0  # None: no system metrics


def default_tracking_uri(root: Path) -> str:
    """`sqlite:////abs/path/mlflow.db` (absolute, so it survives `dvc exp run --temp`)."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


def resolve_tracking_uri(ctx: RunContext) -> str:
    return ctx.tracking_uri or default_tracking_uri(ctx.root)


def data_version(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Content hash (blake2b, 16 hex digits) of files and folders, independent of mtimes and absolute paths.

    Folders are walked in sorted order; each file contributes its relative path and its bytes. Missing paths
    contribute their name and a marker, so "input absent" is a version too.
    """
    h = hashlib.blake2b(digest_size=8)
    for p in sorted((Path(x) for x in paths), key=lambda q: (q.name, q.as_posix())):
        h.update(b"\0path\0" + p.name.encode())  # the name only: `data/raw` and `/abs/data/raw` agree
        if p.is_file():
            h.update(file_digest(p).encode())
        elif p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                h.update(b"\0file\0" + f.relative_to(p).as_posix().encode() + file_digest(f).encode())
        else:
            h.update(b"\0missing")
    return h.hexdigest()


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """Serialise database creation/migration across processes when the store is a local sqlite file."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_experiment(ctx: RunContext, name: str = EXPERIMENT_NAME) -> str:
    """Create (once, under a lock) the project's experiment and return its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(ctx)
    with _sqlite_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifact_location = None
        if uri.startswith("sqlite:///"):
            artifact_location = (Path(ctx.root).resolve() / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Another process (e.g. talking to the same server) created it between our two calls.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


class MlflowTracker:
    """`Tracker` backed by one active MLflow run (created by `stage_run`)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self._client.log_artifacts(self.run_id, str(p), subdir)
        else:
            self._client.log_artifact(self.run_id, str(p), subdir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))


def _param_str(value: Any) -> str:
    s = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return s if len(s) <= _MAX_PARAM_CHARS else s[: _MAX_PARAM_CHARS - 3] + "..."


def _process_start(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (Linux /proc), None where unknown or gone. With the pid
    it names one process: a pid reused by a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may contain spaces: fields 3, 4, ...
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


def _process_alive(pid: int, start: str | None) -> bool:
    """Whether the process that recorded (`pid`, `start`) on this host still runs."""
    now = _process_start(pid)
    if now is not None or Path("/proc/self/stat").exists():
        return now is not None and (start is None or now == start)
    try:  # no /proc (not Linux): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_killed_runs(client: Any, experiment_id: str, stage: str) -> list[str]:
    """Mark `stage`'s runs that are still RUNNING but whose process on this host is gone as KILLED (MLflow's status
    for that), with a `killed_reason` tag; returns their ids. Runs of other hosts, and runs that do not record their
    process, are left alone (nothing says whether they still run)."""
    import time

    host = socket.gethostname()
    runs = client.search_runs([experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'",
                              max_results=1000)
    killed = []
    for run in runs:
        tags = run.data.tags
        if tags.get("host") != host or not str(tags.get("pid", "")).isdigit():
            continue
        pid = int(tags["pid"])
        if _process_alive(pid, tags.get("process_start") or None):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        reason = (f"process {pid} on {host} ended without closing this run (killed: SIGKILL, out of memory or a crash "
                  f"of the interpreter); marked KILLED by the next `{stage}` run, process {os.getpid()}, at {when}")
        client.set_tag(run.info.run_id, "killed_reason", reason)
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("MLflow run %s of `%s` was left RUNNING by process %d, which is gone: marked KILLED",
                    run.info.run_id, stage, pid)
        killed.append(run.info.run_id)
    return killed


def run_tags(ctx: RunContext, stage: str, data_ver: str) -> dict[str, str]:
    """The tags every stage run carries (see module docstring)."""
    tags = {
        "stage": stage,
        "pid": str(os.getpid()),
        "process_start": _process_start(os.getpid()) or "",
        "git_rev": ctx.git_rev,
        "git_dirty": str(ctx.git_dirty).lower(),
        "data_version": data_ver,
        "host": socket.gethostname(),
        "mlflow.source.git.commit": ctx.git_rev,
    }
    if ctx.dvc_exp_name:
        tags["dvc_exp_name"] = ctx.dvc_exp_name
    if ctx.dvc_baseline_rev:
        tags["dvc_baseline_rev"] = ctx.dvc_baseline_rev
    tags.update({k: str(v) for k, v in ctx.extra_tags.items()})
    return tags


def experiment_parent_run(client: Any, experiment_id: str, ctx: RunContext) -> str | None:
    """The parent run of DVC experiment `ctx.dvc_exp_name` (found by its tags, created by its first stage); None
    outside `dvc exp run`. Its stage runs carry `mlflow.parentRunId`, which the UI shows as nesting."""
    if not ctx.dvc_exp_name:
        return None
    name = ctx.dvc_exp_name.replace("'", "")
    query = f"tags.dvc_exp_name = '{name}' and tags.run_kind = 'dvc_experiment'"
    with _sqlite_lock(resolve_tracking_uri(ctx)):  # stages of one experiment start one after another; be safe anyway
        found = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"run_kind": "dvc_experiment", "dvc_exp_name": ctx.dvc_exp_name, "git_rev": ctx.git_rev,
                "mlflow.source.git.commit": ctx.git_rev, "host": socket.gethostname()}
        if ctx.dvc_baseline_rev:
            tags["dvc_baseline_rev"] = ctx.dvc_baseline_rev
        return client.create_run(experiment_id, run_name=ctx.dvc_exp_name, tags=tags).info.run_id


@contextlib.contextmanager
def _system_metrics(run_id: str, uri: str, interval_s: float | None) -> Iterator[None]:
    """MLflow's CPU / memory / disk / network (and GPU) monitor on `run_id` while the body runs."""
    if interval_s is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


@contextlib.contextmanager
def stage_run(ctx: RunContext, stage: str, params: Mapping[str, Any], data_ver: str) -> Iterator[MlflowTracker]:
    """Open one MLflow run for a stage; it ends FINISHED, or FAILED if the body raises.

    Args:
        ctx: where the run happens (see `RunContext`).
        stage: DVC stage name, also the run name.
        params: flattened params to log (dotted keys).
        data_ver: `data_version(...)` of the stage's inputs.
    """
    import mlflow

    uri = resolve_tracking_uri(ctx)
    exp_id = ensure_experiment(ctx)
    client = mlflow.MlflowClient(tracking_uri=uri)
    mark_killed_runs(client, exp_id, stage)
    run_name = f"{stage}:{ctx.dvc_exp_name}" if ctx.dvc_exp_name else stage
    tags = run_tags(ctx, stage, data_ver)
    parent = experiment_parent_run(client, exp_id, ctx)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    tracker = MlflowTracker(client, run.info.run_id)
    log.info("MLflow run %s (%s) in %s", run.info.run_id, run_name, uri)
    try:
        with _system_metrics(run.info.run_id, uri, ctx.system_metrics_interval_s):
            tracker.log_params(params)
            yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        if parent:
            client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
    if parent:  # the experiment's row ends with its last stage (a later stage moves the end time on)
        client.set_terminated(parent, status="FINISHED")
