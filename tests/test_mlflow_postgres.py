"""MLflow tracking server backed by PostgreSQL (issue 15, item 3): a real `postgres` (Debian's package) and a real
`mlflow server` on loopback; a stage run logged through MLFLOW_TRACKING_URI alone lands in the database."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, mlflow_server

ROOT = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path | None:
    """Debian's PostgreSQL binaries (`apt-get install postgresql`; scripts/run.sh setup installs it)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


PG_BIN = _pg_bin()
pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed (Debian package `postgresql`; "
                                                       "scripts/run.sh setup installs it with apt-get)")


def _as_db_user(cmd: list[str]) -> list[str]:
    """postgres refuses to run as root: run it as Debian's `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, loopback only); yields the `mlflow` db's URI."""
    data = Path(tempfile.mkdtemp(prefix="tavce-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    pgdata = data / "data"
    subprocess.run(_as_db_user([str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust",
                                "--no-sync"]), check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(_as_db_user([str(PG_BIN / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1",
                                         "-p", str(port), "-k", str(data), "-c", "fsync=off"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import psycopg2

        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("postgres did not come up")
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; the pinned driver is psycopg2, named explicitly
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # smart shutdown ends once the server's connections are closed
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def mlflow_on_postgres(postgres: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`mlflow server` on 127.0.0.1 with the PostgreSQL store and an artifact root in tmp; yields (URL, db URI)."""
    with mlflow_server(postgres, tmp_path / "artifacts", timeout_s=120, log_file=tmp_path / "mlflow-server.log") as url:
        yield url, postgres


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stage_run_lands_in_mlflow_on_postgres(mlflow_on_postgres: tuple[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import psycopg2

    from pipeline import tracking
    from stages import common as sc

    url, db = mlflow_on_postgres
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the only change a user makes
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(ROOT)  # run_context reads the git revision of the working directory
    ctx = dataclasses.replace(sc.run_context(), system_metrics_interval_s=None)
    assert ctx.tracking_uri == url
    (tmp_path / "curve.txt").write_text("0.5\n")
    with tracking.stage_run(ctx, "preprocess", {"preprocess.engine": "local", "common.seed": 0}, "v1") as t:
        t.log_metrics({"clips_out": 32.0}, step=0)
        t.log_artifact(tmp_path / "curve.txt")
        run_id = t.run_id

    run = mlflow.MlflowClient(tracking_uri=url).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"preprocess.engine": "local", "common.seed": "0"}
    assert run.data.metrics == {"clips_out": 32.0}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git_rev"] == head and run.data.tags["mlflow.source.git.commit"] == head
    assert [a.path for a in mlflow.MlflowClient(tracking_uri=url).list_artifacts(run_id)] == ["curve.txt"]
    with psycopg2.connect(db.replace("+psycopg2", "")) as conn, conn.cursor() as cur:  # really in PostgreSQL, not a local file store
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", (run_id,))
        assert cur.fetchall() == [("common.seed", "0"), ("preprocess.engine", "local")]
        cur.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = 'git_rev'", (run_id,))
        assert cur.fetchone() == (head,)
    conn.close()
