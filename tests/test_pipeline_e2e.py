"""End to end: `dvc repro` of synth + preprocess in a temporary git repository, a no-op rerun, an experiment,
and the MLflow runs they leave behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pipeline", "stages", "params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml", ".dvc/config",
        ".dvc/.gitignore"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("repo")
    for name in COPY:
        src = ROOT / name
        dst = repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synth"].update(speakers=3, clips_per_speaker=1, min_duration_s=1.6, max_duration_s=2.0)
    params["preprocess"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TAVCE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "init"], repo, env)
    return repo, env


def _runs(repo: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    return mlflow.search_runs(experiment_names=["tavce"])


@pytest.mark.slow
def test_dvc_repro_noop_and_experiment(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    out = _run(["dvc", "repro"], path, env)
    for stage in ("synth", "preprocess", "synth_check"):
        assert f"Running stage '{stage}'" in out
    manifest = pd.read_parquet(path / "data/processed/manifest.parquet")
    assert len(manifest) == 3 and set(manifest.split) == {"train", "val", "test"}
    metrics = yaml.safe_load((path / "reports/preprocess/metrics.json").read_text())
    assert metrics["clips_out"] == 3 and metrics["rejected_total"] == 0
    assert (path / "reports/preprocess/contact_sheet.png").stat().st_size > 1000
    assert (path / "dvc.lock").is_file()
    runs = _runs(path)
    assert sorted(runs["tags.stage"]) == ["preprocess", "synth", "synth_check"]
    assert (runs["status"] == "FINISHED").all()
    head = _run(["git", "rev-parse", "HEAD"], path, env).strip()
    assert set(runs["tags.git_rev"]) == {head}
    assert runs["tags.data_version"].str.len().min() == 16
    assert "params.preprocess.crop_scale" in runs.columns and "metrics.clips_out" in runs.columns

    again = _run(["dvc", "repro"], path, env)
    assert "Running stage" not in again
    assert len(_runs(path)) == 3  # a skipped stage logs nothing

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], path, env)
    _run([*git, "commit", "-qm", "lock"], path, env)
    head = _run(["git", "rev-parse", "HEAD"], path, env).strip()
    exp = _run(["dvc", "exp", "run", "-n", "wider-crop", "-S", "preprocess.crop_scale=2.0"], path, env)
    assert "Running stage 'preprocess'" in exp and "Running stage 'synth'" not in exp
    runs = _runs(path)
    new = runs[runs["tags.dvc_exp_name"].fillna("") == "wider-crop"].set_index("tags.stage")
    assert sorted(new.index) == ["preprocess", "synth_check"]
    assert new.loc["preprocess", "params.preprocess.crop_scale"] == "2.0"
    assert new.loc["preprocess", "tags.dvc_baseline_rev"] == head
