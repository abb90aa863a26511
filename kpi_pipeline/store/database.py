"""Engines, transactions and migrations: the database as a whole."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from kpi_pipeline.config import get_settings
from kpi_pipeline.store.schema import TABLES, anomalies

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's write lock before failing."""

_WRITE = "kpi_write"  # execution option marking a connection that will write

_MIGRATION_LOCK_KEY = 0x6B70695F6D6967  # any constant shared by all migrators ("kpi_mig")


def make_engine(url: str | None = None) -> sa.Engine:
    """An engine for ``url`` (default: the configured database, embedded SQLite if unset).

    Postgres sessions run in UTC; a bare ``postgresql://`` URL uses psycopg 3. SQLite gets WAL
    and a busy timeout so several processes (Dagster runs, the API) can share one file.
    """
    parsed = sa.make_url(url or get_settings().resolved_database_url())
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend != "postgresql":
        raise ValueError(f"unsupported database {backend!r}: use PostgreSQL or SQLite")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    # JIT off: the store's statements are index probes and range scans whose cost Postgres
    # overestimates (per-KPI windows it cannot size), so it compiled them for 50-130 ms each
    # to save a few milliseconds.
    options = {"options": "-c timezone=UTC -c jit=off"}
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=options)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Take transaction control away from sqlite3 so BEGIN is emitted below (transactional
        # DDL, and BEGIN IMMEDIATE for writers).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that reads and then
        # writes fails at once with "database is locked" if another process wrote meanwhile,
        # instead of waiting for the busy timeout.
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that commits on success; for everything that writes."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE: True})
        with connection.begin():
            yield connection


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations; needs no alembic.ini or working dir."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url_or_engine: str | sa.Engine | None = None) -> list[str]:
    """Upgrade the database to the newest schema; returns the revisions applied, oldest first.

    Idempotent: on an up-to-date database it applies nothing and returns ``[]``. Concurrent
    callers are serialised (advisory lock on Postgres, the write lock on SQLite).
    """
    engine = url_or_engine if isinstance(url_or_engine, sa.Engine) else make_engine(url_or_engine)
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    try:
        with write_transaction(engine) as connection:
            if connection.dialect.name == "postgresql":
                lock = sa.func.pg_advisory_xact_lock(sa.bindparam("key", _MIGRATION_LOCK_KEY))
                connection.execute(sa.select(lock))
            current = MigrationContext.configure(connection).get_current_revision()
            pending = [script.revision for script in scripts.iterate_revisions("heads", current)]
            if pending:
                config.attributes["connection"] = connection
                command.upgrade(config, "heads")
    finally:
        if engine is not url_or_engine:
            engine.dispose()
    return pending[::-1]


EXACT_COUNT_UP_TO = 1_000_000
"""``row_count`` counts tables up to this size exactly; larger ones from Postgres' statistics."""


def row_count(engine: sa.Engine, table: sa.Table) -> int:
    """The rows of ``table``: exact when it is small (or on SQLite), else PostgreSQL's planner
    estimate (``pg_class.reltuples``, kept by autovacuum and ANALYZE), so that asking costs
    the same whatever the history: an exact ``count(*)`` reads every row."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            estimate = connection.execute(
                sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"),
                {"name": table.name},
            ).scalar()
            if estimate is not None and estimate > EXACT_COUNT_UP_TO:
                return int(estimate)
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def table_counts(engine: sa.Engine) -> dict[str, int]:
    """Row counts of every table of the data contract, plus the ``anomalies`` view."""
    with engine.connect() as connection:
        return {
            source.name: connection.execute(sa.select(sa.func.count()).select_from(source)).scalar_one()
            for source in (*TABLES, anomalies)
        }


@contextmanager
def driver_errors(
    engine: sa.Engine,
    connection: sa.Connection | None = None,
    statement: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Errors of code that talks to the driver directly, re-raised as SQLAlchemy's (as the rest
    of the store raises them). With ``connection``, a lost connection is invalidated (not
    returned to the pool); without one, the driver connection is a private one, treated as lost.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as error:
        lost = True
        if connection is not None:
            lost = engine.dialect.is_disconnect(error, connection.connection.driver_connection, None)
            if lost:
                connection.invalidate(error)
        raise sa.exc.DBAPIError.instance(
            statement,
            params,
            error,
            dbapi_error,
            connection_invalidated=lost,
            dialect=engine.dialect,
        ) from error
