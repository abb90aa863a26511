"""Statement helpers shared by the store modules: upsert, time-window filters, reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kpi_pipeline.store._convert import Kind, TimeLike, build_frame, to_utc

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

BATCH_SIZE = 5_000
"""Rows per executemany call: bounds statement and memory size on large frames."""


def upsert(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str] | None = None,
    update: Sequence[str] = (),
    only_if_changed: Sequence[str] = (),
    returning: bool = False,
) -> list[tuple] | None:
    """Insert ``rows`` into ``table``; on a key conflict update the ``update`` columns.

    ``conflict`` names the unique columns (default: the primary key). With no ``update``
    columns a conflicting row is left alone. With ``only_if_changed``, the existing row is
    updated only when one of those columns differs, so untouched rows keep their timestamps.
    With ``returning``, returns the key (the ``conflict`` columns' values) of each row this call
    inserted or updated, as the database answers it (RETURNING): a row another transaction
    wrote first is not among them. Repeated keys in ``rows``: the last row wins when updating,
    the first otherwise.
    """
    try:
        insert = _INSERTS[connection.dialect.name]
    except KeyError:
        raise NotImplementedError(f"unsupported database: {connection.dialect.name}") from None
    keys = list(conflict or (column.name for column in table.primary_key))

    def on_conflict(statement):
        if not update:
            return statement.on_conflict_do_nothing(index_elements=keys)
        changed = sa.or_(*(table.c[name].is_distinct_from(statement.excluded[name]) for name in only_if_changed))
        return statement.on_conflict_do_update(
            index_elements=keys,
            set_={name: statement.excluded[name] for name in update},
            where=changed if only_if_changed else None,
        )

    written: list[tuple] = []
    if _unnestable(connection, table, rows):
        # One statement of arrays per batch: psycopg's executemany sends one statement per row,
        # so statement triggers (migration 0004's notifications) would fire per row, and every
        # row would cost a round trip. One statement may not touch a key twice: repeated keys
        # keep the row executemany would have left.
        rows = _unique(rows, keys, keep_last=bool(update))
        names = list(rows[0])
        arrays = sa.select(
            *(
                sa.func.unnest(sa.bindparam(name, type_=postgresql.ARRAY(table.c[name].type))).label(name)
                for name in names
            )
        )
        statement = on_conflict(insert(table).from_select(names, arrays))
        batches: Iterator[dict[str, list[Any]] | Sequence[dict[str, Any]]] = (
            {name: [row[name] for row in rows[start : start + BATCH_SIZE]] for name in names}
            for start in range(0, len(rows), BATCH_SIZE)
        )
    else:
        statement = on_conflict(insert(table))
        batches = (rows[start : start + BATCH_SIZE] for start in range(0, len(rows), BATCH_SIZE))
    if returning:
        # RETURNING, as executemany's rowcount is not reliable on every driver (psycopg
        # reports -1) and cannot tell this call's writes from another transaction's.
        statement = statement.returning(*(table.c[name] for name in keys))
    for batch in batches:
        result = connection.execute(statement, batch)
        if returning:
            written.extend(tuple(row) for row in result.all())
    return written if returning else None


_ARRAY_TYPES = (sa.String, sa.Float, sa.Integer, sa.Boolean, sa.DateTime)


def _unnestable(connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> bool:
    """Whether ``rows`` can go to Postgres as arrays: several rows, plain column types."""
    if connection.dialect.name != "postgresql" or len(rows) < 2:
        return False
    for name in rows[0]:
        kind: sa.types.TypeEngine[Any] | type[sa.types.TypeEngine[Any]] = table.c[name].type
        kind = kind.impl if isinstance(kind, sa.TypeDecorator) else kind
        if not isinstance(kind, _ARRAY_TYPES):
            return False
    return True


def _unique(rows: Sequence[dict[str, Any]], keys: Sequence[str], keep_last: bool) -> list[dict[str, Any]]:
    unique: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[name] for name in keys)
        if keep_last:
            unique.pop(key, None)
            unique[key] = row
        elif key not in unique:
            unique[key] = row
    return list(unique.values())


def window(
    source: sa.TableClause,
    kpis: str | Iterable[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
) -> list[sa.ColumnElement[bool]]:
    """Conditions selecting ``kpis`` (all if None) with ``since <= ts <= until`` (open if None)."""
    conditions: list[sa.ColumnElement[bool]] = []
    if kpis is not None:
        conditions.append(source.c.kpi.in_([kpis] if isinstance(kpis, str) else list(kpis)))
    if since is not None:
        conditions.append(source.c.ts >= to_utc(since))
    if until is not None:
        conditions.append(source.c.ts <= to_utc(until))
    return conditions


Bind = sa.Engine | sa.Connection
"""Where a query runs: a new connection of an engine, or a connection in its transaction."""


@contextmanager
def connected(bind: Bind) -> Iterator[sa.Connection]:
    """``bind`` itself if it is a connection (its transaction goes on), else a new connection."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.connect() as connection:
            yield connection


def read_frame(bind: Bind, query: sa.Select, columns: Mapping[str, Kind]) -> pd.DataFrame:
    """Run ``query`` (selecting ``columns`` in order) into a DataFrame with fixed dtypes."""
    with connected(bind) as connection:
        rows = connection.execute(query).all()
    return build_frame(rows, columns)


def rows_per_kpi(
    dialect: str, wanted: sa.CTE, columns: Sequence[sa.ColumnElement], condition: sa.ColumnElement[bool]
) -> sa.Select:
    """``columns`` of the rows meeting ``condition``, which relates a table's ``(kpi, ts)`` key
    to a row of ``wanted`` (a KPI and its bounds), for every row of ``wanted``.

    On PostgreSQL each row of ``wanted`` reads its rows in a ``LATERAL`` subquery, which can
    only go through the key: one index range scan per KPI. As a plain join, the planner
    misjudged how many rows the bounds select and, at 10,000 KPIs x 365 days (87 M rows),
    hash-joined or nested-looped over a scan of the whole table for every chunk of KPIs.
    SQLite has no ``LATERAL`` and plans the plain join through the key."""
    inner = sa.select(*columns).where(condition)
    if dialect != "postgresql":
        return inner.select_from(wanted)
    # OFFSET 0 keeps the planner from flattening the subquery back into that plain join.
    per_kpi = inner.offset(0).lateral("per_kpi")
    return sa.select(per_kpi).select_from(wanted).join(per_kpi, sa.true())


def every_kpi(table: sa.Table) -> sa.CTE:
    """A one-column (``kpi``) CTE of every distinct KPI of ``table``, ending with one NULL row.

    Neither Postgres nor SQLite skips through an index for ``SELECT DISTINCT``; this recursive
    form asks the (kpi, ts) key for the smallest name after the previous one: one index probe
    per KPI instead of reading every row.
    """
    found = sa.select(sa.func.min(table.c.kpi).label("kpi")).cte(f"{table.name}_kpis", recursive=True)
    following = sa.select(sa.func.min(table.c.kpi)).where(table.c.kpi > found.c.kpi).scalar_subquery()
    return found.union_all(sa.select(following).where(found.c.kpi.is_not(None)))


def edge_ts(table: sa.Table, kpi: sa.ColumnElement[str], edge=sa.func.max) -> sa.ScalarSelect:
    """The newest (``edge=sa.func.min``: first) ``ts`` of ``kpi`` in ``table``: one probe of the
    primary key."""
    rows = table.alias()
    return sa.select(edge(rows.c.ts)).where(rows.c.kpi == kpi).scalar_subquery()


def ts_span_of_every_kpi(table: sa.Table) -> sa.Select:
    """(kpi, first ts, last ts) of every KPI of ``table``: two index probes per KPI, no scan."""
    names = every_kpi(table)
    return (
        sa.select(names.c.kpi, edge_ts(table, names.c.kpi, sa.func.min), edge_ts(table, names.c.kpi))
        .where(names.c.kpi.is_not(None))
        .order_by(names.c.kpi)
    )


def newest_ts_of_every_kpi(table: sa.Table) -> sa.Select:
    """(kpi, newest ts) of every KPI of ``table``: one index probe per KPI, no scan."""
    names = every_kpi(table)
    return (
        sa.select(names.c.kpi, edge_ts(table, names.c.kpi).label("ts"))
        .where(names.c.kpi.is_not(None))
        .order_by(names.c.kpi)
    )


def bulk_utc(column: sa.ColumnElement) -> sa.ColumnElement:
    """``column`` (a ``schema.UtcDateTime``) read as the dialect returns it, labelled with its
    name, for reads of many rows into frames: ``build_frame`` converts the whole column to UTC
    at once, as the type would value by value (naive values are UTC), at a fifth of the cost."""
    return sa.type_coerce(column, sa.DateTime(timezone=True)).label(column.name)


def keyed_values(name: str, columns: Sequence[sa.ColumnClause], rows: Sequence[tuple]) -> sa.CTE:
    """``rows`` as a CTE named ``name`` (``WITH name(columns) AS (VALUES ...)``), one row per
    KPI of a batch, to join a table on; the same SQL on Postgres and SQLite."""
    return sa.values(*columns, name=name).data(list(rows)).cte(name)
