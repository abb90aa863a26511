"""The SQL of ``kpi-pipeline bench``: a scratch Postgres database, bulk loads with COPY, model
rows copied between KPIs, the plain-SQL floor of a scoring run, and registry sizes.

Postgres only (COPY, LATERAL): the benchmark measures the server deployment.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import anomaly_scores, kpi_models, kpi_observations

OBSERVATION_COPY_COLUMNS = ("kpi", "ts", "value", "ingested_at", "source")
SCORE_COPY_COLUMNS = ("kpi", "ts", "value", "expected", "score", "is_anomaly", "model_version", "scored_at")
CLEANED_COPY_COLUMNS = ("kpi", "ts", "value", "filled", "gap")


def _admin(server_url: str) -> sa.Engine:
    url = sa.make_url(server_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"the benchmark needs a PostgreSQL server, not {url.get_backend_name()}")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def create_database(server_url: str, prefix: str = "kpi_bench") -> str:
    """A new, empty database on the server of ``server_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = _admin(server_url)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return admin.url.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (ending its connections)."""
    name = sa.make_url(url).database
    admin = _admin(url)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def copy_csv(engine: sa.Engine, table: str, columns: Sequence[str], chunks: Iterable[str]) -> None:
    """COPY CSV text (``chunks``, no header) into ``table``'s ``columns``, in one transaction."""
    with engine.begin() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None  # an open connection always has one
        cursor = driver.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
            for chunk in chunks:
                copy.write(chunk)


def vacuum(engine: sa.Engine) -> None:
    """VACUUM and ANALYZE the loaded tables, as autovacuum soon would after a bulk load (so the
    first reads do not pay for setting hint bits, and the planner knows the tables' sizes)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in (kpi_observations, anomaly_scores, kpi_models):
            connection.exec_driver_sql(f"VACUUM (ANALYZE) {table.name}")


def mark_cleaned(engine: sa.Engine, step_us: int) -> None:
    """Every KPI's ``kpi_series`` row as ``cleaned_kpis`` leaves it for observations that lie on
    their grid (one every ``step_us`` microseconds, no gap, no duplicate), whose cleaned rows
    were loaded with them: the state of a deployment that has been cleaning all along, so that
    the measured run cleans its new points only (a KPI without this row is cleaned from its
    first observation). One statement, aggregated on the server."""
    statement = sa.text(
        "INSERT INTO kpi_series (kpi, origin, step_us, step_counts, observations, duplicates, "
        "last_observed, ingested_through, cleaned_at, changed_from) "
        "SELECT kpi, min(ts), :step, jsonb_build_object(CAST(:step AS text), count(*) - 1), "
        "count(*), 0, max(ts), max(ingested_at), now(), min(ts) FROM kpi_observations GROUP BY kpi "
        "ON CONFLICT (kpi) DO UPDATE SET origin = excluded.origin, step_us = excluded.step_us, "
        "step_counts = excluded.step_counts, observations = excluded.observations, "
        "duplicates = excluded.duplicates, last_observed = excluded.last_observed, "
        "ingested_through = excluded.ingested_through, cleaned_at = excluded.cleaned_at, "
        "changed_from = excluded.changed_from"
    )
    with engine.begin() as connection:
        connection.execute(statement, {"step": step_us})


def copy_models(engine: sa.Engine, template: str, kpis: Sequence[str]) -> None:
    """Give each of ``kpis`` a copy of every registry row of ``template``."""
    if not kpis:
        return
    columns = [column.name for column in kpi_models.columns if column.name != "kpi"]
    listed = ", ".join(f"m.{name}" for name in columns)
    statement = sa.text(
        f"INSERT INTO kpi_models (kpi, {', '.join(columns)}) "
        f"SELECT k.kpi, {listed} FROM kpi_models m, unnest(CAST(:kpis AS text[])) AS k(kpi) "
        "WHERE m.kpi = :template"
    )
    with write_transaction(engine) as connection:
        connection.execute(statement, {"kpis": list(kpis), "template": template})


@dataclass(frozen=True)
class Floor:
    """What the plain-SQL floor of a scoring run did, and how long it took."""

    rows_read: int
    rows_written: int
    seconds: float


def scoring_floor(engine: sa.Engine, kpis: Sequence[str], window: int, new_points: int) -> Floor:
    """The I/O a scoring run cannot avoid, in plain SQL on one connection: read each KPI's
    newest ``window`` observations (one statement), then write ``new_points`` score rows per
    KPI (one statement, into a temporary copy of ``anomaly_scores`` so nothing real changes)."""
    read = sa.text(
        "SELECT o.kpi, o.ts, o.value FROM unnest(CAST(:kpis AS text[])) AS k(kpi) "
        "CROSS JOIN LATERAL (SELECT kpi, ts, value FROM kpi_observations "
        "WHERE kpi = k.kpi ORDER BY ts DESC LIMIT :window) AS o"
    )
    write = sa.text(
        "INSERT INTO floor_scores (kpi, ts, value, expected, lower, upper, iforest_score, "
        "prophet_score, score, is_anomaly, severity, flagged_by, event_id, model_version, "
        "scored_at) SELECT kpi, ts, value, value, value, value, 0.5, 0.5, 0.5, false, NULL, "
        "NULL, NULL, 'floor', now() FROM unnest(CAST(:kpis AS text[]), "
        "CAST(:ts AS timestamptz[]), CAST(:values AS float8[])) AS s(kpi, ts, value) "
        "ON CONFLICT (kpi, ts) DO UPDATE SET value = excluded.value, score = excluded.score, "
        "scored_at = excluded.scored_at"
    )
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TEMPORARY TABLE floor_scores (LIKE anomaly_scores INCLUDING ALL)")
        connection.commit()
        started = time.perf_counter()
        # Streamed (the rows are counted and the newest kept, not held): a lower bound on
        # what a scorer that keeps them pays, with bounded memory at any number of KPIs.
        result = connection.execute(
            read,
            {"kpis": list(kpis), "window": window},
            execution_options={"yield_per": 50_000},
        )
        newest: dict[str, list] = {}
        read_count = 0
        for kpi, ts, value in result:  # rows come newest first per KPI
            read_count += 1
            taken = newest.setdefault(kpi, [])
            if len(taken) < new_points:
                taken.append((ts, value))
        names = [kpi for kpi, taken in newest.items() for _ in taken]
        stamps = [ts for taken in newest.values() for ts, _ in taken]
        values = [value for taken in newest.values() for _, value in taken]
        connection.execute(write, {"kpis": names, "ts": stamps, "values": values})
        connection.commit()
        seconds = time.perf_counter() - started
        connection.exec_driver_sql("DROP TABLE floor_scores")
        connection.commit()
    return Floor(read_count, len(names), seconds)


def model_bytes(engine: sa.Engine, kpis: Sequence[str] | None = None) -> dict[str, int]:
    """Per KPI, the bytes of its registry rows: artifacts plus params and metrics as text."""
    table = kpi_models
    size = (
        sa.func.coalesce(sa.func.octet_length(table.c.artifact), 0)
        + sa.func.coalesce(sa.func.octet_length(sa.cast(table.c.params, sa.Text)), 0)
        + sa.func.coalesce(sa.func.octet_length(sa.cast(table.c.metrics, sa.Text)), 0)
    )
    query = sa.select(table.c.kpi, sa.func.sum(size)).group_by(table.c.kpi)
    if kpis is not None:
        query = query.where(table.c.kpi.in_(list(kpis)))
    with engine.connect() as connection:
        return {kpi: int(total) for kpi, total in connection.execute(query)}


def newest_model_bytes(engine: sa.Engine, kpis: Sequence[str]) -> float:
    """Seconds to read the artifacts of every kind of each KPI's newest version (one
    statement): the model bytes a scoring run must read at least, as plain SQL."""
    query = sa.text(
        "SELECT m.kpi, m.kind, m.artifact FROM unnest(CAST(:kpis AS text[])) AS k(kpi) "
        "JOIN kpi_models m ON m.kpi = k.kpi AND m.version = (SELECT max(v.version) "
        "FROM kpi_models v WHERE v.kpi = k.kpi AND v.kind = 'ensemble')"
    )
    started = time.perf_counter()
    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=100).execute(query, {"kpis": list(kpis)})
        for _row in rows:  # streamed: a few megabytes at a time, not every model at once
            pass
    return time.perf_counter() - started
