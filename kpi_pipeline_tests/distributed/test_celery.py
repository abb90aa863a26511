"""Distributed training: two ``dagster-celery`` workers on the local RabbitMQ execute the
shard partitions of training runs, each shard on a worker (the runs' steps leave the process
that launched them)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import store
from kpi_pipeline.config import PROJECT_ROOT
from kpi_pipeline.defs.assets import TRAINING_SHARDS
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.sharding import shard_of
from kpi_pipeline_tests.defs.synthetic import hourly_kpis

BROKER_HOST = os.environ.get("KPI_TEST_AMQP_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("KPI_TEST_AMQP_PORT", "5672"))
BROKER = f"pyamqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}//"
RUN_TIMEOUT_S = 300
BIN = Path(sys.executable).parent


def _broker_up() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not _broker_up(),
        reason=f"no RabbitMQ on {BROKER_HOST}:{BROKER_PORT} (make test starts it: scripts/ensure-rabbitmq.sh)",
    ),
    pytest.mark.skipif(
        shutil.which("dagster-celery", path=str(BIN)) is None,
        reason="dagster-celery is not installed (pip install -e '.[test]')",
    ),
]


@pytest.fixture
def cluster(tmp_path, pg_url, monkeypatch):
    """A Dagster home, an environment selecting the celery executor on a queue of this test's
    own, and two workers (one task at a time each) listening on it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    queue = f"kpi-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "celery.yaml").write_text(
        "execution:\n  config:\n"
        f"    broker: '{BROKER}'\n    backend: 'rpc://'\n"
        # Late acknowledgement: a busy worker holds no second task, so the idle one gets it.
        f"    config_source:\n      task_default_queue: '{queue}'\n      task_acks_late: true\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KPI_DATABASE_URL": pg_url,
        "KPI_EXECUTOR": "celery",
        "KPI_CELERY_BROKER": BROKER,
        "KPI_CELERY_QUEUE": queue,
        "KPI_AUTOMATION_OFF": "all",
        # dagster-celery starts `celery` from PATH: this virtualenv's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # The instance's storage is created here, once: two workers starting at the same moment
    # would both create its SQLite tables ("table runs already exists").
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # its dagster.yaml reads it
    with dg.DagsterInstance.get():
        pass
    workers: dict[str, subprocess.Popen] = {}
    try:
        for name in ("w1", "w2"):
            workers[name] = subprocess.Popen(
                [
                    str(BIN / "dagster-celery"),
                    "worker",
                    "start",
                    "-n",
                    f"{name}-{queue}@%h",
                    "-y",
                    str(tmp_path / "celery.yaml"),
                    "-q",
                    queue,
                    "-A",
                    "dagster_celery.app",
                    "--",
                    "--concurrency",
                    "1",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env={**env, "KPI_TEST_WORKER": name},
                cwd=tmp_path,
                stdout=open(tmp_path / f"{name}.log", "w"),
                stderr=subprocess.STDOUT,
            )
            _wait_for_workers(tmp_path, [name], {name: workers[name]})  # one after the other
        yield env, tmp_path
    finally:
        for worker in workers.values():
            worker.terminate()
        for worker in workers.values():
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def _wait_for_workers(tmp_path: Path, names: list[str], workers: dict) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for name, worker in workers.items():
            if worker.poll() is not None:
                pytest.fail(f"worker {name} exited:\n{(tmp_path / f'{name}.log').read_text()}")
        if all("ready." in (tmp_path / f"{name}.log").read_text() for name in names):
            return
        time.sleep(1)
    logs = "\n".join((tmp_path / f"{name}.log").read_text()[-2000:] for name in names)
    pytest.fail(f"the celery workers did not become ready:\n{logs}")


def _worker_of(pid: int) -> str | None:
    """Which test worker a process belongs to (its environment says), if it still runs."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"KPI_TEST_WORKER="):
            return item.split(b"=", 1)[1].decode()
    return None


def test_two_celery_workers_each_train_a_shard_of_the_same_training(cluster, pg_url, monkeypatch):
    env, tmp_path = cluster
    engine = KpiStore(database_url=pg_url).engine()
    store.upsert_observations(engine, hourly_kpis(days=8), "test")  # orders and sessions
    count = TRAINING_SHARDS.get_num_partitions()
    shards = sorted({shard_of("orders", count), shard_of("sessions", count)})
    assert len(shards) == 2

    # The nightly training as the daemon launches it: one run per shard, at the same time.
    runs = [
        subprocess.Popen(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "kpi_pipeline.defs",
                "--select",
                "kpi_models",
                "--partition",
                shard,
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for shard in shards
    ]
    outputs = [run.communicate(timeout=RUN_TIMEOUT_S)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    assert store.trained_kpis(engine) == {"orders", "sessions"}
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])  # its dagster.yaml reads it
    with dg.DagsterInstance.get() as instance:
        executed_by = {}
        for shard in shards:
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("kpi_models"), asset_partitions=[shard]),
                limit=1,
            ).records
            metadata = record.asset_materialization.metadata
            executed_by[shard] = int(metadata["executed_by"].value.rsplit(" ", 1)[-1])
    launched_here = {run.pid for run in runs}
    assert not set(executed_by.values()) & launched_here  # the steps ran elsewhere
    assert sorted(_worker_of(pid) for pid in executed_by.values()) == ["w1", "w2"]
