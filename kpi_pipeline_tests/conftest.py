"""Database fixtures for the whole suite: real PostgreSQL and SQLite, one fresh database per test.

- ``pg_url``: URL of a new, empty database on the local PostgreSQL server, dropped afterwards;
  ``new_pg_url()`` makes more of them.
- ``sqlite_url``: URL of a new SQLite file under the test's ``tmp_path``.
- ``store_url``: parametrized over both ("postgres", "sqlite"); a test using it runs twice.
- ``migrated_engine``: an engine on ``store_url`` with the schema migrated to head.

The server is reached through ``KPI_TEST_PG_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), whose database is only used to
create and drop the per-test databases. If the server is unreachable, PostgreSQL tests are
skipped, except under ``CI=true`` where they fail: CI must never go green without Postgres.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_admin_engine() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the server's admin database (CREATE/DROP DATABASE need it)."""
    url = os.environ.get("KPI_TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as error:
        engine.dispose()
        reason = f"PostgreSQL unreachable at {engine.url!r} (set KPI_TEST_PG_ADMIN_URL): {error.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture
def new_pg_url(pg_admin_engine: sa.Engine) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty PostgreSQL databases (returns each one's URL); all dropped afterwards."""
    names: list[str] = []

    def create() -> str:
        names.append(f"kpi_test_{uuid.uuid4().hex[:8]}")
        with pg_admin_engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{names[-1]}"')
        return pg_admin_engine.url.set(database=names[-1]).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        # FORCE ends connections a test leaked, so a failing test cannot leave the db behind.
        with pg_admin_engine.connect() as connection:
            for name in names:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(new_pg_url: Callable[[], str]) -> str:
    """A SQLAlchemy URL of a freshly created, empty PostgreSQL database; dropped after the test."""
    return new_pg_url()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLAlchemy URL of a new SQLite file (created on first connect)."""
    return f"sqlite:///{tmp_path / 'kpi.db'}"


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each supported backend in turn."""
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def _migrated(url: str) -> Iterator[sa.Engine]:
    # Imported here so suites that never touch the store do not depend on it importing.
    from kpi_pipeline.store import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated_engine(store_url: str) -> Iterator[sa.Engine]:
    """An engine on ``store_url`` with the current schema; disposed after the test."""
    yield from _migrated(store_url)


@pytest.fixture
def migrated_pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh Postgres database with the current schema (Postgres-only tests)."""
    yield from _migrated(pg_url)


RELIABILITY_SUITE = "kpi_pipeline_tests/test_reliability.py"


def pytest_terminal_summary(terminalreporter) -> None:
    """The reliability suite's count of classes (bad inputs x paths, and faults), at the end of
    every run that includes it, so CI's log keeps the count."""
    outcomes: dict[str, int] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.startswith(RELIABILITY_SUITE) and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        total = sum(outcomes.values())
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        terminalreporter.write_line(
            f"reliability suite: {total} checks, one per class of bad input and path or fault ({summary})"
        )
