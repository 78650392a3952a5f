"""Shared fixtures. Tests never touch the project's data/ or mlflow.db: everything goes to tmp paths."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests must not log to the developer's MLflow database by accident.
os.environ.setdefault("TAVCE_NO_TRACKING", "1")
# `tavce animate` tunes malloc for its process (pipeline/allocator.py); the CLI tests call it inside pytest's process,
# which should keep glibc's default for every other test. The allocator is tested in subprocesses.
os.environ.setdefault("TAVCE_MALLOC", "default")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("markexpr", "") == "requires_cuda":
        return  # the GPU checks alone (`-m requires_cuda`) use no media tool; GPU machines may have none
    for tool in ("ffmpeg", "ffprobe", "espeak-ng"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} not found: run the tests with `bash scripts/run.sh test`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`requires_cuda` tests are skipped, with the reason shown, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_cuda: no CUDA device on this machine")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg CLI quietly (test media generation)."""
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="session")
def processed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny preprocessed synthetic corpus shared by the training tests: 3 speakers x 2 clips of ~2 s,
    split train/val/test by speaker, 128 px crops. Built once per session (~30 s), through the real
    synth + preprocess code paths."""
    from pipeline.config import CommonConfig
    from pipeline.preprocess import PreprocessConfig, run_preprocess
    from pipeline.synth.corpus import SynthConfig, generate_corpus

    base = tmp_path_factory.mktemp("corpus")
    synth = SynthConfig(speakers=3, clips_per_speaker=2, min_duration_s=2.0, max_duration_s=2.4, workers=2)
    generate_corpus(synth, base / "raw", seed=0, progress=False)
    common = CommonConfig(seed=0, fps=25, sample_rate=16000, image_size=128)
    run_preprocess(base / "raw", base / "processed", PreprocessConfig(workers=2), common, progress=False)
    return base / "processed"
