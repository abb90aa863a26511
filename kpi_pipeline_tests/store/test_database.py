"""Engines, migrations and whole-database helpers (kpi_pipeline/store/database.py)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kpi_pipeline import config
from kpi_pipeline.store import make_engine, migrate, table_counts, upsert_observations
from kpi_pipeline.store.schema import metadata
from kpi_pipeline_tests.defs.synthetic import hourly_kpis

MIGRATIONS = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011"]

TABLES = {
    "kpi_observations",
    "rejected_observations",
    "kpi_models",
    "anomaly_scores",
    "anomaly_feedback",
    "alert_deliveries",
    "alert_silences",
    "alert_evaluations",
    "kpi_series",
    "kpi_cleaned",
    "kpi_features",
    "kpi_failures",
    "kpi_parameters",
    "kpi_groups",
    "group_models",
    "group_events",
    "threshold_resets",
}


def test_migrate_creates_every_table_and_the_view_and_second_run_is_a_noop(store_url):
    engine = make_engine(store_url)
    try:
        assert migrate(engine) == MIGRATIONS
        assert migrate(engine) == []
        inspector = sa.inspect(engine)
        assert TABLES | {"alembic_version"} == set(inspector.get_table_names())
        assert inspector.get_view_names() == ["anomalies"]
        assert table_counts(engine) == dict.fromkeys([*TABLES, "anomalies"], 0)
    finally:
        engine.dispose()


def test_migrate_accepts_a_url(sqlite_url):
    assert migrate(sqlite_url) == MIGRATIONS
    assert migrate(sqlite_url) == []


def test_table_definitions_match_the_migrations(migrated_engine):
    with migrated_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_postgres_sessions_run_in_utc(pg_url):
    engine = make_engine(pg_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW timezone").scalar_one() == "UTC"
    finally:
        engine.dispose()


def test_bare_postgresql_url_uses_psycopg():
    assert make_engine("postgresql://someone@db.invalid/kpi").url.drivername == "postgresql+psycopg"


def test_sqlite_engine_creates_its_directory_and_uses_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'kpi.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() > 0
        assert (tmp_path / "nested" / "dir" / "kpi.db").exists()
    finally:
        engine.dispose()


def test_make_engine_defaults_to_the_configured_database(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    monkeypatch.setenv("KPI_DATABASE_URL", url)
    config.get_settings.cache_clear()
    try:
        assert make_engine().url.database == str(tmp_path / "configured.db")
    finally:
        config.get_settings.cache_clear()


def test_two_sqlite_writers_do_not_lock_each_other_out(sqlite_url):
    migrate(sqlite_url)
    errors: list[BaseException] = []

    def write(kpi: str) -> None:
        engine = make_engine(sqlite_url)  # an engine each, like two processes
        try:
            for day in range(15):
                ts = pd.date_range("2024-01-01", periods=24, freq="h", tz="UTC") + pd.Timedelta(days=day)
                upsert_observations(engine, pd.DataFrame({"kpi": kpi, "ts": ts, "value": 1.0}), "t")
        except BaseException as error:  # reported to the main thread below
            errors.append(error)
        finally:
            engine.dispose()

    writers = [threading.Thread(target=write, args=(kpi,)) for kpi in ("sales", "orders")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    engine = make_engine(sqlite_url)
    try:
        assert table_counts(engine)["kpi_observations"] == 2 * 15 * 24
    finally:
        engine.dispose()


def test_unsupported_databases_are_refused():
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        make_engine("mysql://someone@db.invalid/kpi")


def test_row_count_is_exact_for_small_tables_and_an_estimate_for_large_ones(store_url, monkeypatch):
    from kpi_pipeline.store import database, row_count
    from kpi_pipeline.store.schema import kpi_observations

    engine = make_engine(store_url)
    try:
        migrate(engine)
        assert row_count(engine, kpi_observations) == 0
        upsert_observations(engine, hourly_kpis(days=2), "test")
        assert row_count(engine, kpi_observations) == 2 * 48
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE kpi_observations")
            monkeypatch.setattr(database, "EXACT_COUNT_UP_TO", 10)
            upsert_observations(engine, hourly_kpis(days=3), "test")
            # Above the limit the planner's figure is used, as of the last ANALYZE: no scan.
            assert row_count(engine, kpi_observations) == 2 * 48
            assert table_counts(engine)["kpi_observations"] == 2 * 72
    finally:
        engine.dispose()
