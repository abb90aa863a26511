"""Reliability suite: the classes of bad input and of faults that issue 15's probe tried, kept by CI.

Bad input: each class is one row of ``BAD_INPUTS`` (the rows it adds to a good input, and the
reason each of them is rejected with) and runs on every ingestion path that can express it,
``kpi-pipeline ingest`` (a CSV file) and ``POST /v1/observations``: the bad rows are reported
and stored in ``rejected_observations`` with their reason, and the good rows land.

Faults: PostgreSQL stopping in the middle of an ingest (a throwaway cluster of this test's own,
started with ``initdb`` and ``pg_ctl`` on a free port) fails the ingest with one clear line and
a rerun lands every row exactly once; two overlapping ingests of one file store each row once.

Every test id names its class: ``pytest -v kpi_pipeline_tests/test_reliability.py``.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.api.app import create_app
from kpi_pipeline.cli import app
from kpi_pipeline.config import Settings
from kpi_pipeline.ingestion import UNTERMINATED_LAST_LINE

API_KEY = "reliability-key"
HEADER = ("kpi", "timestamp", "value")
GOOD = [
    ("sales", "2025-01-01T00:00:00Z", "10"),
    ("sales", "2025-01-01T01:00:00Z", "11.5"),
    ("orders", "2025-01-01T00:00:00Z", "3"),
]
NEXT_MONTH = (pd.Timestamp.now("UTC") + pd.Timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
OUTSIDE_YEARS = "outside the plausible years 1900 to 2199"
AHEAD = "more than 7 days ahead of now"


@dataclass(frozen=True)
class BadInput:
    rows: tuple[tuple[str, ...], ...]
    """Rows added after the good ones (CSV cells; API fields ``kpi``, ``timestamp``, ``value``)."""
    reason: str
    """What each of them is rejected with (the start of, or a phrase in, the reason)."""
    csv_only: bool = False
    """A defect of the file itself (its line structure), which a JSON batch cannot express."""
    unterminated: bool = False
    """The CSV file ends without a line ending after these rows."""


BAD_INPUTS = {
    "year 0001": BadInput((("sales", "0001-01-01T00:00:00Z", "1"),), OUTSIDE_YEARS),
    "year 1899": BadInput((("sales", "1899-12-31T23:00:00Z", "1"),), OUTSIDE_YEARS),
    "year 9999": BadInput((("foo/bar", "9999-12-31T23:00:00Z", "100"),), OUTSIDE_YEARS),
    "year 2199, beyond the horizon": BadInput((("sales", "2199-12-31T23:00:00Z", "1"),), AHEAD),
    "next month": BadInput((("sales", NEXT_MONTH, "1"),), AHEAD),
    "unparsable timestamp": BadInput((("sales", "yesterday", "1"),), "unparsable timestamp"),
    "day-first date": BadInput((("sales", "01/02/2025", "1"),), "unparsable timestamp"),
    "empty timestamp": BadInput((("sales", "", "1"),), "empty timestamp"),
    "non-numeric value": BadInput((("sales", "2025-01-02T00:00:00Z", "n/a"),), "non-numeric value 'n/a'"),
    "thousands separator": BadInput((("sales", "2025-01-02T00:00:00Z", "1,234"),), "non-numeric value '1,234'"),
    "NaN value": BadInput((("sales", "2025-01-02T00:00:00Z", "NaN"),), "value is NaN"),
    "infinite value": BadInput((("sales", "2025-01-02T00:00:00Z", "-inf"),), "value is infinite"),
    "empty value": BadInput((("sales", "2025-01-02T00:00:00Z", ""),), "empty value"),
    "empty KPI name": BadInput((("", "2025-01-02T00:00:00Z", "1"),), "empty KPI name"),
    "overlong KPI name": BadInput((("k" * 201, "2025-01-02T00:00:00Z", "1"),), "KPI name longer than 200 characters"),
    "control character in KPI name": BadInput(
        (("sa\x07les", "2025-01-02T00:00:00Z", "1"),), "KPI name contains control characters"
    ),
    "conflicting duplicates": BadInput(
        (("refunds", "2025-01-02T00:00:00Z", "1"), ("refunds", "2025-01-02T00:00:00Z", "2")),
        "conflicting duplicate for (refunds",
    ),
    "row with an extra field": BadInput(
        (("sales", "2025-01-02T00:00:00Z", "1", "x"),), "expected 3 fields, got 4", csv_only=True
    ),
    "half-written last line": BadInput(
        (("sales", "2025-01-02T00:00:00Z", "1692"),), UNTERMINATED_LAST_LINE, csv_only=True, unterminated=True
    ),
}

CASES = [
    pytest.param(path, bad, id=f"{path}: {name}")
    for name, bad in BAD_INPUTS.items()
    for path in ("csv", "api")
    if path == "csv" or not bad.csv_only
]


def csv_text(rows, unterminated: bool = False) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([HEADER, *rows])
    return text.getvalue().removesuffix("\n") if unterminated else text.getvalue()


def stored_observations(engine: sa.Engine) -> set[tuple[str, str, float]]:
    frame = store.load_observations(engine)
    return {(row.kpi, row.ts.strftime("%Y-%m-%dT%H:%M:%SZ"), row.value) for row in frame.itertuples(index=False)}


def stored_rejection_reasons(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT reason FROM rejected_observations")).scalars())


GOOD_STORED = {(kpi, ts, float(value)) for kpi, ts, value in GOOD}


def ingest_csv(url: str, path: Path):
    return CliRunner().invoke(app, ["--database-url", url, "ingest", str(path)])


@pytest.mark.parametrize(("path", "bad"), CASES)
def test_bad_input_is_rejected_with_its_reason_and_the_good_rows_land(
    path: str, bad: BadInput, sqlite_url: str, tmp_path: Path
):
    engine = pipeline.open_store(sqlite_url)
    if path == "csv":
        data = tmp_path / "input.csv"
        data.write_text(csv_text([*GOOD, *bad.rows], bad.unterminated), encoding="utf-8")
        result = ingest_csv(sqlite_url, data)
        assert result.exit_code == 0, result.output
        assert f"accepted {len(GOOD)}, updated 0, unchanged 0, rejected {len(bad.rows)}" in (result.stdout)
        reported = [line for line in result.stdout.splitlines() if line.startswith("  line ")]
    else:
        records = [dict(zip(HEADER, row)) for row in [*GOOD, *bad.rows]]
        with TestClient(create_app(Settings(api_keys=API_KEY), engine)) as client:
            response = client.post("/v1/observations", json={"observations": records}, headers={"X-API-Key": API_KEY})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["inserted"], body["rejected"]) == (len(GOOD), len(bad.rows))
        reported = [rejection["reason"] for rejection in body["rejections"]]

    assert len(reported) == len(bad.rows) and all(bad.reason in line for line in reported)
    assert stored_observations(engine) == GOOD_STORED
    stored = stored_rejection_reasons(engine)
    assert len(stored) == len(bad.rows) and all(bad.reason in reason for reason in stored)
    engine.dispose()


# -- faults ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port, trust auth.

    PostgreSQL refuses to run as root; as root, its programs run as the ``postgres`` user.
    """

    def __init__(self, bin_dir: Path, directory: Path, run_as: list[str]):
        self.bin_dir, self.data, self.run_as = bin_dir, directory / "data", run_as
        self.port = _free_port()
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--no-locale"
        )

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bin_dir / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.data / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        """Stop at once, as a crash or a kill would: no checkpoint, clients cut off."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def new_database(self, name: str) -> str:
        admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def _postgres_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = found[-1] if found else shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and (Path(pg_ctl).parent / "initdb").exists() else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH")
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="kpi-reliability-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory)
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    try:
        server = Cluster(bin_dir, directory, run_as)
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def hourly_csv(path: Path, hours: int) -> list[tuple[str, str, str]]:
    """Two KPIs of ``hours`` points each plus one bad row; returns the good rows."""
    stamps = pd.date_range("2025-01-01", periods=hours, freq="h", tz="UTC")
    good = [
        (kpi, ts.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{index % 97 + 0.5}")
        for kpi in ("sales", "orders")
        for index, ts in enumerate(stamps)
    ]
    path.write_text(csv_text([*good, ("sales", "yesterday", "1")]), encoding="utf-8")
    return good


def assert_landed_once(url: str, good: list[tuple[str, str, str]]) -> None:
    engine = store.make_engine(url)
    with engine.connect() as connection:
        rows, keys = connection.execute(
            sa.text("SELECT count(*), count(DISTINCT kpi || ' ' || ts) FROM kpi_observations")
        ).one()
    assert rows == keys == len(good)
    assert stored_observations(engine) == {(kpi, ts, float(value)) for kpi, ts, value in good}
    assert stored_rejection_reasons(engine) == ["unparsable timestamp 'yesterday'"]
    engine.dispose()


@pytest.mark.parametrize(
    "stopped_before",
    ["kpi_observations", "rejected_observations"],
    ids=["postgres stops while observations are written", "postgres stops between observations and rejections"],
)
def test_postgres_stopping_mid_ingest_fails_clearly_and_a_rerun_lands_every_row_once(
    cluster: Cluster, tmp_path: Path, stopped_before: str
):
    url = cluster.new_database(f"ingest_{stopped_before}")
    pipeline.open_store(url).dispose()  # the schema exists; the fault hits the ingest itself
    data = tmp_path / "kpis.csv"
    good = hourly_csv(data, hours=500)
    stopped = []

    def stop_the_server(connection, cursor, statement, parameters, context, executemany):
        if not stopped and statement.lstrip().startswith(f"INSERT INTO {stopped_before}"):
            stopped.append(statement)
            cluster.stop()

    sa.event.listen(sa.Engine, "before_cursor_execute", stop_the_server)
    try:
        interrupted = ingest_csv(url, data)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", stop_the_server)
        cluster.start()

    assert stopped, "the ingest never reached the statement the server stops before"
    assert interrupted.exit_code == 1
    assert "Traceback" not in interrupted.output
    assert interrupted.stderr.startswith("error: ") and interrupted.stderr.count("\n") == 1
    assert "lost the database connection" in interrupted.stderr
    assert "run the same command again" in interrupted.stderr

    rerun = ingest_csv(url, data)

    assert rerun.exit_code == 0, rerun.output
    assert_landed_once(url, good)


def test_overlapping_ingests_of_one_file_store_each_row_once(store_url: str, tmp_path: Path):
    data = tmp_path / "kpis.csv"
    good = hourly_csv(data, hours=3000)
    command = [
        sys.executable,
        "-c",
        "from kpi_pipeline.cli import app; app()",
        "--database-url",
        store_url,
        "ingest",
        str(data),
    ]

    # Both start before either has touched the (still empty) database, schema included.
    ingests = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [ingest.communicate(timeout=300) for ingest in ingests]

    for ingest, (stdout, stderr) in zip(ingests, outcomes):
        assert ingest.returncode == 0, stderr
    accepted = [int(stdout.split("accepted ")[1].split(",")[0]) for stdout, _ in outcomes]
    assert sum(accepted) >= len(good)  # each row was new to at least one of them
    assert_landed_once(store_url, good)
