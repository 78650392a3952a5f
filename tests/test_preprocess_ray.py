"""Preprocessing on a real local Ray cluster (`preprocess.engine: ray`): same outputs as the local engine, and a
clip whose worker dies is retried, then rejected with a reason (issue 15, item 2)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.preprocess import run_on_ray, run_preprocess
from tests.test_preprocess import CFG, COMMON, _make_corpus, _tree_digest

ROOT = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head node and one more worker node on loopback, one CPU each; `ray stop` afterwards."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # the driver (this process) too
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, env=env, capture_output=True, text=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={address}", *common],
                       check=True, env=env, capture_output=True, text=True, timeout=120)
        yield address
    except subprocess.CalledProcessError as err:
        pytest.fail(f"ray start failed: {err.stderr[-2000:]}")
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_engine_matches_local_engine(tmp_path: Path, ray_cluster: str) -> None:
    raw = tmp_path / "raw"
    _make_corpus(raw, ["s0", "s1", "s2"])
    local = run_preprocess(raw, tmp_path / "local", dataclasses.replace(CFG, workers=2), COMMON, progress=False)
    on_ray = run_preprocess(raw, tmp_path / "ray",
                            dataclasses.replace(CFG, workers=2, engine="ray", ray_address=ray_cluster),
                            COMMON, progress=False)
    assert (local.processed, on_ray.processed, on_ray.clips_out) == (3, 3, 3)
    assert _tree_digest(tmp_path / "ray") == _tree_digest(tmp_path / "local")  # features, manifest, cache, ...
    # the cache is shared: the local engine finds every clip done by Ray
    again = run_preprocess(raw, tmp_path / "ray", CFG, COMMON, progress=False)
    assert (again.processed, again.cached) == (0, 3)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dead_ray_worker_is_retried_then_rejected(tmp_path: Path, ray_cluster: str) -> None:
    # defined here so that Ray ships it by value (pytest imports this file under a name workers cannot import)
    def _square_or_die(marker_dir: str, x: int) -> int:
        """Dies on 3 every time, on 2 only on its first try (a marker file remembers the try)."""
        if x == 3:
            os._exit(1)  # a native crash in a worker
        marker = Path(marker_dir) / f"{x}.tried"
        if x == 2 and not marker.exists():
            marker.touch()
            os._exit(1)
        return x * x

    results: list[object] = []
    run_on_ray(list(range(5)), _square_or_die, (str(tmp_path),), results.append,
               lambda item, message: ("crashed", item, message), address=ray_cluster, num_cpus=1, max_retries=1)
    crashed = [r for r in results if isinstance(r, tuple)]
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 4, 16]  # 2 succeeded on its retry
    assert len(crashed) == 1 and crashed[0][1] == 3 and "after 1 retries" in crashed[0][2]
    assert not ray.is_initialized()  # attached for the call only


def test_engine_is_validated() -> None:
    with pytest.raises(ValueError, match="engine"):
        dataclasses.replace(CFG, engine="spark").validate()
