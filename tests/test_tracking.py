from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import tracking
from tests.servers import mlflow_server


def _ctx(root: Path, uri: str | None = None, exp: str | None = "exp-a") -> tracking.RunContext:
    return tracking.RunContext(root=root, tracking_uri=uri, git_rev="abc123", dvc_exp_name=exp,
                               dvc_baseline_rev="def456", extra_tags={"dvc_stage": "unit"})


def test_null_tracker_keeps_values() -> None:
    t = tracking.NullTracker()
    t.log_params({"a": 1})
    t.log_metrics({"m": 2}, step=3)
    t.set_tags({"x": "y"})
    assert t.params == {"a": 1} and t.metrics == {"m": 2.0} and t.tags == {"x": "y"}


def test_default_uri_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = tracking.default_tracking_uri(Path("."))
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and uri.startswith("sqlite:////")


def test_data_version_depends_on_content_only(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "s").mkdir(parents=True)
    (d / "s" / "a.bin").write_bytes(b"hello")
    v1 = tracking.data_version([d])
    os.utime(d / "s" / "a.bin", (0, 0))
    assert tracking.data_version([d]) == v1
    (d / "s" / "a.bin").write_bytes(b"hellO")
    assert tracking.data_version([d]) != v1
    assert tracking.data_version([tmp_path / "missing"]) != tracking.data_version([d])


def test_stage_run_records_tags_params_metrics(tmp_path: Path) -> None:
    import mlflow

    ctx = _ctx(tmp_path)
    art = tmp_path / "metrics.json"
    art.write_text(json.dumps({"x": 1}))
    with tracking.stage_run(ctx, "preprocess", {"preprocess.workers": 2, "common.seed": 0}, "v123") as t:
        t.log_metrics({"loss": 1.0}, step=0)
        t.log_metrics({"loss": 0.5}, step=1)
        t.log_artifact(art)
        run_id = t.run_id
    client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["stage"] == "preprocess" and tags["git_rev"] == "abc123" and tags["data_version"] == "v123"
    assert tags["dvc_exp_name"] == "exp-a" and tags["dvc_baseline_rev"] == "def456"
    assert run.data.params["preprocess.workers"] == "2"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5]
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts anchored at the project root


def test_failed_stage_marks_run_failed(tmp_path: Path) -> None:
    import mlflow

    with pytest.raises(RuntimeError):
        with tracking.stage_run(_ctx(tmp_path), "synth", {}, "v") as t:
            run_id = t.run_id
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path)).get_run(run_id).info.status == "FAILED"


def _start_one(root: str, i: int) -> str:
    with tracking.stage_run(_ctx(Path(root), exp=None), f"stage{i}", {"i": i}, "v") as t:
        t.log_metrics({"i": i})
        return t.run_id


@pytest.mark.slow
def test_concurrent_first_runs_share_one_experiment(tmp_path: Path) -> None:
    """Several stages starting at once on a fresh database: all runs land in the one experiment."""
    import mlflow

    with mp.get_context("spawn").Pool(4) as pool:
        run_ids = pool.starmap(_start_one, [(str(tmp_path), i) for i in range(4)])
    client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
    exps = [e for e in client.search_experiments() if e.name == tracking.EXPERIMENT_NAME]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)


@pytest.mark.slow
def test_real_mlflow_server(tmp_path: Path) -> None:
    """MLFLOW_TRACKING_URI pointing at a real `mlflow server` on loopback receives the stage's run."""
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "art") as url:
        ctx = _ctx(tmp_path, uri=url)
        (tmp_path / "m.json").write_text("{}")
        with tracking.stage_run(ctx, "preprocess", {"common.seed": 0}, "v9") as t:
            t.log_metrics({"clips_out": 3.0})
            t.log_artifact(tmp_path / "m.json")
            run_id = t.run_id
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as r:
            run = json.load(r)["run"]
        tags = {d["key"]: d["value"] for d in run["data"]["tags"]}
        assert tags["stage"] == "preprocess" and tags["dvc_exp_name"] == "exp-a"
        assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"clips_out": 3.0}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default sqlite store


def test_data_version_independent_of_how_the_path_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.bin").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert tracking.data_version([Path("raw")]) == tracking.data_version([tmp_path / "raw"])


_HOLD_RUN = """
import sys, time
from pathlib import Path
from pipeline import tracking
ctx = tracking.RunContext(root=Path(sys.argv[1]), git_rev="abc123")
with tracking.stage_run(ctx, sys.argv[2], {}, "v") as t:
    print(t.run_id, flush=True)
    time.sleep(600)
"""


def _hold_run(root: Path, stage: str) -> tuple[subprocess.Popen, str]:
    """A process that opens a run of `stage` and keeps it open; returns it and the run id."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(root), stage], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


@pytest.mark.timeout(180)
def test_runs_of_killed_processes_are_marked_killed_at_the_next_start(tmp_path: Path) -> None:
    """kill -9 leaves a run RUNNING; the stage's next run marks it KILLED with the reason. A run whose process
    still runs, and another stage's run, are left alone."""
    import mlflow

    killed, killed_id = _hold_run(tmp_path, "preprocess")
    alive, alive_id = _hold_run(tmp_path, "preprocess")
    try:
        killed.kill()  # SIGKILL: no `finally`, no set_terminated
        killed.wait()
        client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
        assert client.get_run(killed_id).info.status == "RUNNING"
        other_id = client.create_run(client.get_run(killed_id).info.experiment_id, tags={
            **client.get_run(killed_id).data.tags, "stage": "synth"}).info.run_id  # same dead process, other stage
        with tracking.stage_run(_ctx(tmp_path), "preprocess", {}, "v2") as t:
            new_id = t.run_id
        run = client.get_run(killed_id)
        assert run.info.status == "KILLED" and run.info.end_time is not None
        reason = run.data.tags["killed_reason"]
        assert f"process {killed.pid}" in reason and "marked KILLED by the next `preprocess` run" in reason
        assert client.get_run(alive_id).info.status == "RUNNING"  # its process still runs
        assert client.get_run(other_id).info.status == "RUNNING"  # another stage's: marked by that stage
        assert client.get_run(new_id).info.status == "FINISHED"
    finally:
        for p in (killed, alive):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_stage_runs_of_one_dvc_experiment_nest_under_its_parent_and_record_system_metrics(tmp_path: Path) -> None:
    import dataclasses

    import mlflow

    ctx = dataclasses.replace(_ctx(tmp_path, exp="exp-b"), system_metrics_interval_s=0.2)
    ids = []
    for stage in ("train_tavc", "train_syncnet"):
        with tracking.stage_run(ctx, stage, {"x": 1}, "v") as t:
            time.sleep(1.0)
            ids.append(t.run_id)
    with tracking.stage_run(_ctx(tmp_path, exp="exp-c"), "train_tavc", {}, "v") as t:
        other = t.run_id
    client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
    parents = {client.get_run(i).data.tags["mlflow.parentRunId"] for i in ids}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "exp-b" and parent.data.tags["run_kind"] == "dvc_experiment"
    assert parent.info.status == "FINISHED"
    assert client.get_run(other).data.tags["mlflow.parentRunId"] != parent.info.run_id
    metrics = client.get_run(ids[0]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_training_stage_logs_its_model_and_config_as_artifacts(tmp_path: Path) -> None:
    import mlflow
    import yaml

    from stages.common import log_model

    ckpt = tmp_path / "model" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    with tracking.stage_run(_ctx(tmp_path), "train_tavc", {}, "v") as t:
        log_model(t, ckpt, {"common": {"seed": 0}, "train_tavc": {"lr": 0.001}})
        run_id = t.run_id
    client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
    assert sorted(a.path for a in client.list_artifacts(run_id, "model")) == ["model/checkpoint.pt", "model/config.yaml"]
    local = Path(client.download_artifacts(run_id, "model/config.yaml", str(tmp_path)))
    assert yaml.safe_load(local.read_text())["train_tavc"]["lr"] == 0.001
