"""End to end: `dvc repro` of every stage (synth, preprocess, checks, the three sync models) in a temporary git
repository, a no-op rerun, an experiment on a training param, and the MLflow runs they leave behind."""

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
COPY = ["pipeline", "stages", "params.yaml", "configs", "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml", ".dvc/config",
        ".dvc/.gitignore"]


STAGES = ("synth", "preprocess", "synth_check", "train_tavc", "train_syncnet", "train_syncers", "pretrain_renderer",
          "train", "train_audio2coeff", "evaluate")


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
    params["synth"].update(speakers=3, clips_per_speaker=2, min_duration_s=1.6, max_duration_s=2.0)
    params["preprocess"]["workers"] = 1
    # training stages: a handful of steps (the real runs are checked in their own tests)
    for section in ("train_tavc", "train_syncnet"):
        params[section].update(steps=4, eval_every=0, checkpoint_every=2, log_every=1)
    params["train_tavc"]["eval_samples_per_clip"] = 8
    params["train_syncers"]["pyramid"]["steps"] = 3
    params["train_syncers"]["rigid"]["steps"] = 3
    params["train_syncers"].update(eval_every=0, checkpoint_every=2, log_every=1, eval_samples=16)
    params["pretrain_renderer"].update(steps=2, eval_every=0, checkpoint_every=1, log_every=1, eval_pairs_per_clip=1,
                                       bootstrap=20, landmark_size=128)
    params["train"].update(steps=2, eval_every=0, checkpoint_every=1, log_every=1, eval_pairs_per_clip=1, bootstrap=20,
                           landmark_size=128)
    params["train_audio2coeff"].update(steps=2, batch_size=2, eval_every=0, checkpoint_every=1, log_every=1)
    params["train_audio2coeff"]["evaluation"].update(seeds=[0], random_draws=1, video_clips=1, bootstrap=20)
    params["evaluate"].update(max_clips=2, max_frames=30)
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
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    manifest = pd.read_parquet(path / "data/processed/manifest.parquet")
    assert len(manifest) == 6 and set(manifest.split) == {"train", "val", "test"}
    metrics = yaml.safe_load((path / "reports/preprocess/metrics.json").read_text())
    assert metrics["clips_out"] == 6 and metrics["rejected_total"] == 0
    assert (path / "reports/preprocess/contact_sheet.png").stat().st_size > 1000
    assert (path / "dvc.lock").is_file()
    runs = _runs(path)
    assert sorted(runs["tags.stage"]) == sorted(STAGES)
    for stage in ("train_tavc", "train_syncnet", "train_syncers", "pretrain_renderer", "train", "train_audio2coeff"):
        assert (path / "reports" / stage / "metrics.json").is_file()
    assert runs.set_index("tags.stage").loc["train_audio2coeff", "tags.lip_expert"].startswith("train_syncers ms1")
    assert (path / "reports/pretrain_renderer/samples.png").is_file()
    assert runs.set_index("tags.stage").loc["pretrain_renderer", "tags.perceptual_extractor"] == "vgg19_random_seed0"
    tavc = runs.set_index("tags.stage").loc["train_tavc"]
    assert tavc["params.train_tavc.steps"] == "4"
    assert (runs["status"] == "FINISHED").all()
    head = _run(["git", "rev-parse", "HEAD"], path, env).strip()
    assert set(runs["tags.git_rev"]) == {head}
    assert runs["tags.data_version"].str.len().min() == 16
    assert "params.preprocess.crop_scale" in runs.columns and "metrics.clips_out" in runs.columns

    again = _run(["dvc", "repro"], path, env)
    assert "Running stage" not in again
    assert len(_runs(path)) == len(STAGES)  # a skipped stage logs nothing

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], path, env)
    _run([*git, "commit", "-qm", "lock"], path, env)
    head = _run(["git", "rev-parse", "HEAD"], path, env).strip()
    exp = _run(["dvc", "exp", "run", "-n", "lr-variant", "-S", "train_tavc.lr=2e-4"], path, env)
    assert "Running stage 'train_tavc'" in exp
    assert "Running stage 'preprocess'" not in exp and "Running stage 'train_syncnet'" not in exp
    runs = _runs(path)
    named = runs[runs["tags.dvc_exp_name"].fillna("") == "lr-variant"]
    parent = named[named["tags.run_kind"].fillna("") == "dvc_experiment"]
    assert len(parent) == 1  # the experiment's parent run in the MLflow UI; its stage runs nest under it
    new = named[named["tags.stage"].notna()].set_index("tags.stage")
    assert set(new["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    # CERL and CAR use the TAVC encoders; evaluate scores the retrained model
    assert sorted(new.index) == ["evaluate", "pretrain_renderer", "train", "train_tavc"]
    assert float(new.loc["train_tavc", "params.train_tavc.lr"]) == 2e-4
    assert new.loc["train_tavc", "tags.dvc_baseline_rev"] == head

    # TAVCE's MappingNet learning rate, typed as the paper gives it (issue 12): only stage `train` reruns
    exp = _run(["dvc", "exp", "run", "-n", "paper-lr", "-S", "train.lr=2e-4"], path, env)
    assert "Running stage 'train'" in exp and "Running stage 'pretrain_renderer'" not in exp
    runs = _runs(path)
    paper = runs[(runs["tags.dvc_exp_name"].fillna("") == "paper-lr") & runs["tags.stage"].notna()]
    paper = paper.set_index("tags.stage")
    assert sorted(paper.index) == ["evaluate", "train"] and float(paper.loc["train", "params.train.lr"]) == 2e-4

    # the multi-scale sync loss switch of issue 11 (the workspace holds the lr variant's results, so only Audio2Coeff reruns)
    exp = _run(["dvc", "exp", "run", "-n", "no-ms-sync", "-S", "train_audio2coeff.ms_sync.weight=0"], path, env)
    assert "Running stage 'train_audio2coeff'" in exp and "Running stage 'train_syncers'" not in exp
    runs = _runs(path)
    a2c = runs[(runs["tags.dvc_exp_name"].fillna("") == "no-ms-sync") & runs["tags.stage"].notna()]
    a2c = a2c.set_index("tags.stage")
    assert sorted(a2c.index) == ["evaluate", "train_audio2coeff"]
    assert a2c.loc["train_audio2coeff", "tags.ms_sync_loss"] == "off"
