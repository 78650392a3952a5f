"""A real `mlflow server` on loopback for the tests that need one (shared by test_tracking, test_mlflow_ui,
test_mlflow_postgres)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, timeout_s: float = 90,
                  log_file: Path | None = None) -> Iterator[str]:
    """Start `mlflow server` on 127.0.0.1 (one worker, job execution off), wait for /health, yield its URL, and stop
    the whole process group afterwards. Fails the test (with the server's log when `log_file` is given) when it does
    not come up within `timeout_s`."""
    port = free_port()
    stderr = log_file.open("w") if log_file is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log_file.read_text()[-2000:] if log_file is not None and log_file.is_file() else ""
                pytest.fail(f"mlflow server did not come up{': ' + tail if tail else ''}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if log_file is not None:
            stderr.close()
