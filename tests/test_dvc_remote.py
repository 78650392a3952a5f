"""DVC remote round trip (issue 15, item 4): a real git + DVC repository pushes its data and a stage's outputs to a
local-directory remote, loses its cache and outputs, pulls them back, and `dvc status -c` reports them in sync."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
DVC = [sys.executable, "-m", "dvc"]

STAGE = """import pathlib
out = pathlib.Path("processed")
out.mkdir(exist_ok=True)
for p in sorted(pathlib.Path("raw").iterdir()):
    (out / (p.stem + ".feat")).write_bytes(p.read_bytes()[::-1])
pathlib.Path("model.bin").write_bytes(b"weights" * 1000)
"""

DVC_YAML = """stages:
  preprocess:
    cmd: {python} stage.py
    deps: [stage.py, raw]
    outs: [processed, model.bin]
"""


def _run(cmd: list[str], cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env=ENV).stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_push_wipe_pull_and_status_in_sync(tmp_path: Path) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(DVC + ["init", "-q"], repo)
    (repo / "raw").mkdir()
    for i in range(3):
        (repo / "raw" / f"clip{i}.bin").write_bytes(os.urandom(2048))
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    _run(DVC + ["add", "-q", "raw"], repo)
    _run(DVC + ["repro", "-q"], repo)
    _run(DVC + ["remote", "add", "-d", "storage", str(remote)], repo)  # as the README's S3 / SSH lines, locally
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "data and pipeline"], repo)
    before = {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
              if p.is_file() and p.parts[len(repo.parts)] in ("raw", "processed", "model.bin")}

    assert "new:" in _run(DVC + ["status", "-c"], repo)  # nothing in the remote yet
    _run(DVC + ["push", "-q"], repo)
    assert "in sync" in _run(DVC + ["status", "-c"], repo)

    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh clone: no cache, no outputs
    shutil.rmtree(repo / "raw")
    shutil.rmtree(repo / "processed")
    (repo / "model.bin").unlink()
    assert "deleted:" in _run(DVC + ["status", "-c"], repo)

    _run(DVC + ["pull", "-q"], repo)
    after = {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
             if p.is_file() and p.parts[len(repo.parts)] in ("raw", "processed", "model.bin")}
    assert after == before and len(after) == 7
    assert "in sync" in _run(DVC + ["status", "-c"], repo)
    assert "up to date" in _run(DVC + ["status"], repo)  # the pulled outputs match dvc.lock: nothing to rerun
