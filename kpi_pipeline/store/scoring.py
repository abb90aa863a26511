"""The batched reads of the scoring step: per chunk of KPIs, one statement each for their
observation windows, the model versions that can score their new points, and the stored scores
an open event may continue from; the rows of every KPI of the chunk come back together.

Each takes a mapping KPI -> bounds, sent as a ``VALUES`` list joined on the table's
``(kpi, ts)`` / ``(kpi, kind, version)`` key, so the rows read follow the bounds, not the
history, and the number of statements follows the number of chunks, not of KPIs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

from kpi_pipeline.store._convert import TimeLike, build_frame, coerce, to_utc
from kpi_pipeline.store._sql import bulk_utc, keyed_values, read_frame, rows_per_kpi
from kpi_pipeline.store.models import ModelRecord, _record
from kpi_pipeline.store.observations import OBSERVATION_COLUMNS, load_observations
from kpi_pipeline.store.schema import anomaly_scores, kpi_models, kpi_observations
from kpi_pipeline.store.scores import SCORE_COLUMNS

MODEL_ROWS_PER_FETCH = 64
"""Registry rows fetched at a time by ``load_scoring_models``: its caller holds one KPI's
models at a time, not a whole chunk's (today about 2 MB a KPI)."""


def load_observation_windows(engine: sa.Engine, since: Mapping[str, TimeLike | None]) -> pd.DataFrame:
    """Per KPI of ``since``, its observations (kpi, ts, value) from the last one at or before
    its ``since`` on (every one if None), sorted by kpi and ts: ``load_observations_from`` for
    many KPIs in one statement (and one more for the KPIs read whole)."""
    whole = [kpi for kpi, start in since.items() if start is None]
    bounded = [(kpi, to_utc(start)) for kpi, start in since.items() if start is not None]
    parts = [load_observations(engine, whole)] if whole else []
    if bounded:
        table = kpi_observations
        wanted = keyed_values("wanted", [sa.column("kpi", sa.Text), sa.column("since", table.c.ts.type)], bounded)
        # The window starts on a stored point even when ``since`` falls inside a gap.
        anchor = (
            sa.select(sa.func.max(table.c.ts))
            .where(table.c.kpi == wanted.c.kpi, table.c.ts <= wanted.c.since)
            .scalar_subquery()
        )
        starts = sa.select(wanted.c.kpi, sa.func.coalesce(anchor, wanted.c.since).label("start")).cte("starts")
        in_window = (table.c.kpi == starts.c.kpi) & (table.c.ts >= starts.c.start)
        if engine.dialect.name == "postgresql":
            parts.append(_windows_as_arrays(engine, starts, in_window))
        else:
            # Unordered: the frame is sorted below (a sort on the server spilled to disk).
            columns = [table.c.kpi, bulk_utc(table.c.ts), table.c.value]
            query = rows_per_kpi(engine.dialect.name, starts, columns, in_window)
            parts.append(read_frame(engine, query, OBSERVATION_COLUMNS))
    if not parts:
        return build_frame([], OBSERVATION_COLUMNS)
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame.sort_values(["kpi", "ts"], ignore_index=True, kind="stable")


def _windows_as_arrays(engine: sa.Engine, starts: sa.CTE, in_window: sa.ColumnElement[bool]) -> pd.DataFrame:
    """The windows of ``load_observation_windows`` on PostgreSQL: one row per KPI holding its
    timestamps (microseconds since the epoch) and values as arrays in time order, so that a
    million observations cross as a thousand rows (a row per observation cost about 1 s more
    per 500 KPIs at 1,088 points each, in SQLAlchemy's rows and pandas' string column)."""
    table = kpi_observations
    window = rows_per_kpi("postgresql", starts, [table.c.kpi, table.c.ts, table.c.value], in_window).subquery()
    epoch_us = sa.cast(sa.extract("epoch", window.c.ts) * 1_000_000, sa.BigInteger)  # numeric: exact
    query = sa.select(
        window.c.kpi,
        sa.func.array_agg(aggregate_order_by(epoch_us, window.c.ts), type_=ARRAY(sa.BigInteger)),
        sa.func.array_agg(aggregate_order_by(window.c.value, window.c.ts), type_=ARRAY(sa.Float)),
    ).group_by(window.c.kpi)
    with engine.connect() as connection:
        rows = sorted(connection.execute(query).all(), key=lambda row: row[0])
    kpis = [row[0] for row in rows]
    lengths = [len(row[1]) for row in rows]
    stamps = np.fromiter((us for row in rows for us in row[1]), dtype=np.int64, count=sum(lengths))
    values = np.fromiter((v for row in rows for v in row[2]), dtype=np.float64, count=sum(lengths))
    frame = pd.DataFrame(
        {
            "kpi": np.repeat(np.array(kpis, dtype=object), lengths),
            "ts": pd.DatetimeIndex(stamps.view("datetime64[us]")).tz_localize("UTC"),
            "value": values,
        }
    )
    return coerce(frame, OBSERVATION_COLUMNS)


def load_scoring_models(
    engine: sa.Engine, spans: Mapping[str, tuple[TimeLike, TimeLike]], kind: str = "ensemble"
) -> Iterator[tuple[str, list[ModelRecord]]]:
    """Per KPI of ``spans`` that has some, the registry rows (every kind, artifacts included)
    of the versions that can score its points from ``first`` to ``last``: the newest ``kind``
    version trained before ``first`` and those trained from ``first`` to before ``last``.

    One statement; yields one KPI at a time (sorted by KPI), its rows by training cutoff, then
    time of training, then kind, while the rest are still being fetched.
    """
    if not spans:
        return
    table = kpi_models
    wanted = keyed_values(
        "wanted",
        [
            sa.column("kpi", sa.Text),
            sa.column("first", table.c.train_end.type),
            sa.column("last", table.c.train_end.type),
        ],
        [(kpi, to_utc(first), to_utc(last)) for kpi, (first, last) in spans.items()],
    )
    before_first = (
        sa.select(sa.func.max(table.c.train_end))
        .where(table.c.kpi == wanted.c.kpi, table.c.kind == kind, table.c.train_end < wanted.c.first)
        .scalar_subquery()
    )
    bounds = sa.select(
        wanted.c.kpi,
        sa.func.coalesce(before_first, wanted.c.first).label("start"),
        wanted.c.last.label("end"),
    ).cte("bounds")
    query = (
        sa.select(table)
        .join_from(
            bounds,
            table,
            (table.c.kpi == bounds.c.kpi) & (table.c.train_end >= bounds.c.start) & (table.c.train_end < bounds.c.end),
        )
        .order_by(table.c.kpi, table.c.train_end, table.c.trained_at, table.c.kind)
    )
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=MODEL_ROWS_PER_FETCH).execute(query)
        kpi: str = ""
        records: list[ModelRecord] = []
        for row in result.mappings():
            if row["kpi"] != kpi:
                if records:
                    yield kpi, records
                kpi, records = str(row["kpi"]), []
            records.append(_record(row))
        if records:
            yield kpi, records


def load_score_windows(engine: sa.Engine, spans: Mapping[str, tuple[TimeLike, TimeLike]]) -> pd.DataFrame:
    """Per KPI of ``spans``, its stored scores with ``since <= ts <= until``, sorted by kpi
    and ts: ``load_scores`` of many KPI windows in one statement."""
    table = anomaly_scores
    if not spans:
        return build_frame([], SCORE_COLUMNS)
    wanted = keyed_values(
        "wanted",
        [
            sa.column("kpi", sa.Text),
            sa.column("since", table.c.ts.type),
            sa.column("until", table.c.ts.type),
        ],
        [(kpi, to_utc(since), to_utc(until)) for kpi, (since, until) in spans.items()],
    )
    columns = [bulk_utc(table.c[name]) if kind == "utc" else table.c[name] for name, kind in SCORE_COLUMNS.items()]
    # Each KPI's window through the (kpi, ts) key (``rows_per_kpi``): as a plain join,
    # Postgres misjudged the windows' size and scanned the whole table (a cost that grew with
    # history).
    in_window = (table.c.kpi == wanted.c.kpi) & table.c.ts.between(wanted.c.since, wanted.c.until)
    query = rows_per_kpi(engine.dialect.name, wanted, columns, in_window)
    frame = read_frame(engine, query, SCORE_COLUMNS)
    return frame.sort_values(["kpi", "ts"], ignore_index=True, kind="stable")
