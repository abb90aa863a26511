"""Raw KPI observations and the rows rejected on the way in."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import (
    Kind,
    TimeLike,
    build_frame,
    to_records,
    to_utc,
    utc_column,
    utc_now,
)
from kpi_pipeline.store._sql import read_frame, ts_span_of_every_kpi, upsert, window
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import kpi_observations, rejected_observations

OBSERVATION_COLUMNS: dict[str, Kind] = {"kpi": "str", "ts": "utc", "value": "float"}
SPAN_COLUMNS: dict[str, Kind] = {"kpi": "str", "first_ts": "utc", "last_ts": "utc"}
INGESTED_SUMMARY_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "n_rows": "int",
    "min_ts": "utc",
    "max_ts": "utc",
    "max_ingested_at": "utc",
}


@dataclass(frozen=True)
class UpsertCounts:
    """What ``upsert_observations`` did with each input row."""

    inserted: int
    updated: int
    unchanged: int


def upsert_observations(engine: sa.Engine, df: pd.DataFrame, source: str) -> UpsertCounts:
    """Write observations (columns kpi, ts, value); a rerun with the same data changes nothing.

    New keys are inserted; existing keys with a different value are updated, refreshing
    ``ingested_at`` and ``source``; identical rows are not touched, so ``ingested_at`` only
    moves when the data does. Duplicate keys in ``df``: the last row wins.
    """
    frame = _observation_frame(df)
    if frame.empty:
        return UpsertCounts(0, 0, 0)
    with write_transaction(engine) as connection:
        # Rows stored with the same value are left out; the others are counted from what the
        # database says it did with them, since another writer may store any key meanwhile
        # (on Postgres nothing stops it between this read and the writes).
        stored = _stored_values(connection, frame)
        merged = frame.merge(stored, on=["kpi", "ts"], how="left", suffixes=("", "_stored"))
        differs = merged["value_stored"].isna() | (merged["value"] != merged["value_stored"])
        changes = merged.loc[differs, ["kpi", "ts", "value"]].assign(ingested_at=utc_now(), source=source)
        records = to_records(changes, list(changes.columns))
        inserted = {_key(*key) for key in upsert(connection, kpi_observations, records, returning=True) or ()}
        updated = (
            upsert(
                connection,
                kpi_observations,
                [row for row in records if _key(row["kpi"], row["ts"]) not in inserted],
                update=["value", "ingested_at", "source"],
                only_if_changed=["value"],
                returning=True,
            )
            or ()
        )
    return UpsertCounts(len(inserted), len(updated), len(frame) - len(inserted) - len(updated))


def _key(kpi: str, ts: TimeLike) -> tuple[str, pd.Timestamp]:
    """An observation's key, alike whether it was sent or returned by the database."""
    return kpi, to_utc(ts)


def _observation_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = set(OBSERVATION_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"observations lack columns {sorted(missing)}")
    df = df.reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "kpi": df["kpi"].astype("str"),
            "ts": utc_column(df["ts"]),
            "value": df["value"].astype("float64"),
        }
    )
    nulls = frame.isna().sum()
    if nulls.any():
        raise ValueError(f"observations have null values: {nulls[nulls > 0].to_dict()}")
    return frame.drop_duplicates(["kpi", "ts"], keep="last").reset_index(drop=True)


def _stored_values(connection: sa.Connection, frame: pd.DataFrame) -> pd.DataFrame:
    """Stored (kpi, ts, value) for the kpis and time span of ``frame``."""
    table = kpi_observations
    query = sa.select(table.c.kpi, table.c.ts, table.c.value).where(
        *window(table, frame["kpi"].unique().tolist(), frame["ts"].min(), frame["ts"].max())
    )
    return build_frame(connection.execute(query).all(), OBSERVATION_COLUMNS)


def load_observations(
    engine: sa.Engine,
    kpis: list[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
) -> pd.DataFrame:
    """Observations (kpi, ts, value) with ``since <= ts <= until``, sorted by kpi and ts."""
    table = kpi_observations
    query = (
        sa.select(table.c.kpi, table.c.ts, table.c.value)
        .where(*window(table, kpis, since, until))
        .order_by(table.c.kpi, table.c.ts)
    )
    return read_frame(engine, query, OBSERVATION_COLUMNS)


def load_observations_from(
    engine: sa.Engine, kpi: str, since: TimeLike, before: TimeLike | None = None
) -> pd.DataFrame:
    """One KPI's observations (kpi, ts, value) from the last one at or before ``since`` on,
    up to (excluding) ``before`` if given.

    The one before ``since`` makes the window start on a stored point even when ``since``
    falls inside a gap; with none, the window is every observation after ``since``.
    """
    table = kpi_observations
    since = to_utc(since)
    anchor = sa.select(sa.func.max(table.c.ts)).where(table.c.kpi == kpi, table.c.ts <= since).scalar_subquery()
    query = (
        sa.select(table.c.kpi, table.c.ts, table.c.value)
        .where(
            table.c.kpi == kpi,
            table.c.ts >= sa.func.coalesce(anchor, sa.literal(since, table.c.ts.type)),
        )
        .order_by(table.c.ts)
    )
    if before is not None:
        query = query.where(table.c.ts < to_utc(before))
    return read_frame(engine, query, OBSERVATION_COLUMNS)


def observation_spans(engine: sa.Engine) -> pd.DataFrame:
    """Per KPI (sorted), its first and last observation time: ``kpi, first_ts, last_ts``."""
    return read_frame(engine, ts_span_of_every_kpi(kpi_observations), SPAN_COLUMNS)


def list_kpis(engine: sa.Engine) -> list[str]:
    """Every KPI with at least one observation, sorted."""
    query = sa.select(kpi_observations.c.kpi).distinct().order_by(kpi_observations.c.kpi)
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


def observations_version(engine: sa.Engine) -> str:
    """A cheap fingerprint of the observations that changes whenever a row is added or changed.

    Row count plus the newest ``ingested_at`` (which moves on every insert and every changed
    value); used as the data version of the ``raw_kpis`` source asset.
    """
    query = sa.select(sa.func.count(), sa.func.max(kpi_observations.c.ingested_at))
    with engine.connect() as connection:
        count, newest = connection.execute(query).one()
    return f"{count}:{to_utc(newest).isoformat() if newest is not None else 'none'}"


def observations_ingested_since(engine: sa.Engine, cursor_ts: TimeLike | None = None) -> pd.DataFrame:
    """Per KPI, the observations written after ``cursor_ts`` (all if None), sorted by kpi.

    Columns: kpi, n_rows, min_ts, max_ts, max_ingested_at. A sensor keeps the largest
    ``max_ingested_at`` as its cursor. ``ingested_at`` is the writer's clock at write time, so
    a cursor can skip a write whose transaction commits after a later one's; keep writers'
    transactions short (ingest batches are).
    """
    table = kpi_observations
    query = (
        sa.select(
            table.c.kpi,
            sa.func.count(),
            sa.func.min(table.c.ts),
            sa.func.max(table.c.ts),
            sa.func.max(table.c.ingested_at),
        )
        .group_by(table.c.kpi)
        .order_by(table.c.kpi)
    )
    if cursor_ts is not None:
        query = query.where(table.c.ingested_at > to_utc(cursor_ts))
    return read_frame(engine, query, INGESTED_SUMMARY_COLUMNS)


def insert_rejections(engine: sa.Engine, rejections: list[dict[str, Any]]) -> int:
    """Record rows that failed validation; returns how many were new.

    Each dict has ``raw`` (the raw row, a dict or its text), ``reason``, ``source`` and
    optionally ``line``. Rejections already stored (same source, line, raw and reason) are
    skipped, so re-ingesting a bad file does not duplicate them.
    """
    rejected_at = utc_now()
    rows = {}
    for rejection in rejections:
        row = _rejection_row(rejection)
        rows[row["fingerprint"]] = row | {"rejected_at": rejected_at}
    if not rows:
        return 0
    with write_transaction(engine) as connection:
        new = upsert(
            connection,
            rejected_observations,
            list(rows.values()),
            conflict=["fingerprint"],
            returning=True,
        )
    return len(new or ())


def _rejection_row(rejection: dict[str, Any]) -> dict[str, Any]:
    raw = rejection["raw"]
    raw = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)
    line = rejection.get("line")
    line = None if line is None or pd.isna(line) else int(line)
    source, reason = rejection.get("source"), str(rejection["reason"])
    # JSON keeps the parts unambiguous, unlike joining them with a separator.
    identity = json.dumps([source, line, raw, reason])
    return {
        "raw": raw,
        "reason": reason,
        "source": source,
        "line": line,
        "fingerprint": hashlib.sha256(identity.encode()).hexdigest(),
    }
