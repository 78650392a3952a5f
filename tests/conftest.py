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


def pytest_configure(config: pytest.Config) -> None:
    for tool in ("ffmpeg", "ffprobe", "espeak-ng"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} not found: run the tests with `bash scripts/run.sh test`")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg CLI quietly (test media generation)."""
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)
