"""Read queries behind the API: latest scores, KPI overview, score series, anomaly pages.

They run once per HTTP request, so they return plain rows (dicts of Python values, timestamps
as aware UTC ``datetime``) rather than DataFrames, the hot ones are built once at import
(building a statement costs more than running it), and each reads only what it returns:

- "every KPI" hops the ``(kpi, ts)`` primary key from one KPI to the next (a loose index scan:
  one probe per KPI), since ``SELECT DISTINCT kpi`` reads every row; each KPI's newest row is
  then one more probe;
- a score series reads the newest ``limit`` rows of one KPI backwards along the key;
- anomaly pages use keyset pagination on ``(ts, kpi)``, so a deep page costs what the first does.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import TimeLike, to_utc
from kpi_pipeline.store._sql import edge_ts, every_kpi, newest_ts_of_every_kpi
from kpi_pipeline.store.schema import (
    anomalies,
    anomaly_scores,
    kpi_models,
    kpi_observations,
)
from kpi_pipeline.store.database import driver_errors
from kpi_pipeline.store.models import NEWEST_FIRST
from kpi_pipeline.store.scores import anomalies_query

Row = dict[str, Any]

SERVED_SCORE_COLUMNS = (
    "ts",
    "value",
    "expected",
    "lower",
    "upper",
    "score",
    "is_anomaly",
    "severity",
    "flagged_by",
    "model_version",
)
"""What the API shows of a scored point."""

ANOMALY_COLUMNS = (
    "kpi",
    *SERVED_SCORE_COLUMNS,
    "prophet_score",
    "iforest_score",
    "event_id",
    "scored_at",
    "feedback",
    "feedback_note",
    "feedback_at",
)


@dataclass(frozen=True)
class ScoreFreshness:
    """How current the scores are: the newest scored point and when it was written."""

    kpis: int
    """KPIs with at least one score."""
    latest_ts: dt.datetime | None
    latest_scored_at: dt.datetime | None


def _newest_of_every_kpi(table: sa.Table) -> sa.Subquery:
    """(kpi, ts) of the newest row of every KPI of ``table``."""
    return newest_ts_of_every_kpi(table).order_by(None).subquery()


def _newest_of_given_kpis(table: sa.Table) -> sa.Subquery:
    """(kpi, ts) of the newest row of the KPIs bound to ``kpis`` (a list)."""
    probe = table.alias()
    return (
        sa.select(probe.c.kpi, sa.func.max(probe.c.ts).label("ts"))
        .where(probe.c.kpi.in_(sa.bindparam("kpis", expanding=True)))
        .group_by(probe.c.kpi)
        .subquery()
    )


def _latest_scores(newest: sa.Subquery) -> sa.Select:
    table = anomaly_scores
    return (
        sa.select(table.c.kpi, *(table.c[name] for name in SERVED_SCORE_COLUMNS), table.c.scored_at)
        .select_from(newest)
        .join(table, sa.and_(table.c.kpi == newest.c.kpi, table.c.ts == newest.c.ts))
        .order_by(table.c.kpi)
    )


def _newest_model_version() -> sa.Select:
    table = kpi_models
    return (
        sa.select(table.c.version)
        .where(table.c.kpi == sa.bindparam("kpi"), table.c.kind == sa.bindparam("kind"))
        .order_by(*NEWEST_FIRST)
        .limit(1)
    )


def _newest_models(kind: str) -> sa.Subquery:
    """kpi, version, trained_at, train_end of each KPI's newest ``kind`` model, no artifact.

    "Newest" is the order of ``models.load_latest_models``: latest training cutoff first.
    """
    table = kpi_models
    recency = sa.func.row_number().over(partition_by=table.c.kpi, order_by=NEWEST_FIRST)
    ranked = (
        sa.select(
            table.c.kpi,
            table.c.version,
            table.c.trained_at,
            table.c.train_end,
            recency.label("recency"),
        )
        .where(table.c.kind == kind)
        .subquery()
    )
    return (
        sa.select(ranked.c.kpi, ranked.c.version, ranked.c.trained_at, ranked.c.train_end)
        .where(ranked.c.recency == 1)
        .subquery()
    )


def _kpi_overview() -> sa.Select:
    names = every_kpi(kpi_observations)
    newest = (
        sa.select(
            names.c.kpi,
            edge_ts(kpi_observations, names.c.kpi).label("observed_ts"),
            edge_ts(anomaly_scores, names.c.kpi).label("score_ts"),
        )
        .where(names.c.kpi.is_not(None))
        .subquery()
    )
    observation, score = kpi_observations, anomaly_scores
    model = _newest_models("ensemble")
    return (
        sa.select(
            newest.c.kpi,
            newest.c.observed_ts,
            observation.c.value.label("observed_value"),
            newest.c.score_ts,
            score.c.value.label("score_value"),
            score.c.expected,
            score.c.lower,
            score.c.upper,
            score.c.score,
            score.c.is_anomaly,
            score.c.severity,
            model.c.version.label("model_version"),
            model.c.trained_at,
            model.c.train_end,
        )
        .select_from(newest)
        .outerjoin(
            observation,
            sa.and_(observation.c.kpi == newest.c.kpi, observation.c.ts == newest.c.observed_ts),
        )
        .outerjoin(score, sa.and_(score.c.kpi == newest.c.kpi, score.c.ts == newest.c.score_ts))
        .outerjoin(model, model.c.kpi == newest.c.kpi)
        .order_by(newest.c.kpi)
    )


def _score_series() -> sa.Select:
    table = anomaly_scores
    return (
        sa.select(*(table.c[name] for name in SERVED_SCORE_COLUMNS))
        .where(
            table.c.kpi == sa.bindparam("kpi"),
            table.c.ts >= sa.bindparam("start"),
            table.c.ts <= sa.bindparam("end"),
        )
        .order_by(table.c.ts.desc())
        .limit(sa.bindparam("limit"))
    )


# The hot queries are built once: building a statement costs more than running it.
_LATEST_SCORES = _latest_scores(_newest_of_every_kpi(anomaly_scores))
_LATEST_SCORES_OF = _latest_scores(_newest_of_given_kpis(anomaly_scores))
_KPI_OVERVIEW = _kpi_overview()
_SCORE_SERIES = _score_series()
_NEWEST_MODEL_VERSION = _newest_model_version()
_EARLIEST = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)
_LATEST = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)


def _rows(engine: sa.Engine, query: sa.Executable, **params: Any) -> list[Row]:
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # One statement needs no transaction: no BEGIN and ROLLBACK round trips. (SQLite's
            # engine issues its own BEGIN, which autocommit mode would leave open.)
            connection.execution_options(isolation_level="AUTOCOMMIT")
        result = connection.execute(query, params)
        names = list(result.keys())
        return [dict(zip(names, row, strict=True)) for row in result.all()]


@functools.cache
def _driver_sql(query: sa.Select, dialect: sa.Dialect) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """``query`` compiled once for ``dialect``: its SQL text, its column names, and the values
    of the parameters it binds itself (such as a literal ``LIMIT``)."""
    compiled = query.compile(dialect=dialect)
    fixed = {name: value for name, value in compiled.params.items() if value is not None}
    return compiled.string, tuple(query.selected_columns.keys()), fixed


def _hot_rows(engine: sa.Engine, query: sa.Select, **params: Any) -> list[Row]:
    """``_rows`` for the per-request reads, on psycopg 3 straight through the driver: the
    statement is compiled once, and results come in Postgres's binary format (cheaper than
    text for both sides for floats and timestamps), without SQLAlchemy's per-row processing
    (half the cost of a 168-point series). ``params`` must be plain driver values (str, int,
    aware ``datetime``); the timestamps returned are aware UTC, as the session runs in UTC.
    Driver errors surface as SQLAlchemy's, as from ``_rows``. Other drivers (psycopg2, SQLite)
    go through ``_rows``: binary results are a psycopg 3 cursor option."""
    if (engine.dialect.name, engine.dialect.driver) != ("postgresql", "psycopg"):
        return _rows(engine, query, **params)
    sql, names, fixed = _driver_sql(query, engine.dialect)
    params = fixed | params
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        driver = connection.connection.driver_connection
        assert driver is not None  # None only once the connection is invalidated
        with driver_errors(engine, connection, sql, params), driver.cursor(binary=True) as cursor:
            cursor.execute(sql, params)
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _utc_datetime(value: TimeLike) -> dt.datetime:
    """``value`` as an aware UTC ``datetime``; a plain one (as the API passes) without pandas."""
    if isinstance(value, dt.datetime) and not isinstance(value, pd.Timestamp):
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value
    return to_utc(value).floor("us").to_pydatetime()


def latest_scores(engine: sa.Engine, kpis: Iterable[str] | None = None) -> list[Row]:
    """The newest scored point of each KPI (all KPIs if None), sorted by KPI.

    Keys: ``kpi``, ``SERVED_SCORE_COLUMNS`` and ``scored_at``. KPIs without scores are left out.
    """
    if kpis is None:
        return _hot_rows(engine, _LATEST_SCORES)
    return _rows(engine, _LATEST_SCORES_OF, kpis=sorted(set(kpis)))


def score_freshness(engine: sa.Engine) -> ScoreFreshness:
    """The newest scored point over all KPIs and when it was scored (a cheap health probe).

    ``latest_scored_at`` is taken over each KPI's newest point, which the latest scoring run
    of that KPI wrote.
    """
    newest = latest_scores(engine)
    return ScoreFreshness(
        kpis=len(newest),
        latest_ts=max((row["ts"] for row in newest), default=None),
        latest_scored_at=max((row["scored_at"] for row in newest), default=None),
    )


def newest_model_version(engine: sa.Engine, kpi: str, kind: str = "ensemble") -> str | None:
    """The version ``models.load_latest_models`` would load for ``kpi``, without reading any
    artifact (a per-request probe); None if the KPI has no ``kind`` model."""
    rows = _hot_rows(engine, _NEWEST_MODEL_VERSION, kpi=kpi, kind=kind)
    return rows[0]["version"] if rows else None


def kpi_overview(engine: sa.Engine) -> list[Row]:
    """Every KPI with observations: its newest observation, newest score and newest model.

    Keys: ``kpi``, ``observed_ts``, ``observed_value``, ``score_ts``, ``score_value``,
    ``expected``, ``lower``, ``upper``, ``score``, ``is_anomaly``, ``severity``,
    ``model_version``, ``trained_at``, ``train_end``; missing parts are None.
    """
    return _rows(engine, _KPI_OVERVIEW)


def score_series(
    engine: sa.Engine,
    kpi: str,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    limit: int = 1000,
) -> tuple[list[Row], bool]:
    """The newest ``limit`` scored points of ``kpi`` with ``start <= ts <= end``, oldest first,
    and whether older points of that window were left out."""
    rows = _hot_rows(
        engine,
        _SCORE_SERIES,
        kpi=kpi,
        start=_EARLIEST if start is None else _utc_datetime(start),
        end=_LATEST if end is None else _utc_datetime(end),
        limit=limit + 1,
    )
    return rows[:limit][::-1], len(rows) > limit


def anomaly_page(
    engine: sa.Engine,
    *,
    kpis: Sequence[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    min_severity: str | None = None,
    limit: int = 100,
    after: tuple[TimeLike, str] | None = None,
    kind: str | None = None,
) -> tuple[list[Row], tuple[dt.datetime, str] | None]:
    """Anomalous points with any feedback, newest first (ties: KPI name descending).

    ``after`` is the ``(ts, kpi)`` key of the last row of the previous page; returns the rows
    (keys ``ANOMALY_COLUMNS``) and the key to pass for the next page, None on the last page.
    Points without a severity are left out when ``min_severity`` is given; only anomalies or
    only outages with ``kind`` (``anomaly`` / ``outage``).
    """
    view = anomalies
    query = anomalies_query(ANOMALY_COLUMNS, kpis, since, until, min_severity, kind)
    if after is not None:
        after_ts, after_kpi = to_utc(after[0]), after[1]
        # ``ts <= after_ts`` is implied by the keyset condition; stated alone it bounds the
        # index scan, so a deep page starts at its first row instead of filtering its way there.
        query = query.where(
            view.c.ts <= after_ts,
            sa.or_(view.c.ts < after_ts, sa.and_(view.c.ts == after_ts, view.c.kpi < after_kpi)),
        )
    query = query.order_by(view.c.ts.desc(), view.c.kpi.desc()).limit(limit + 1)
    rows = _rows(engine, query)
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], (last["ts"], last["kpi"])


@dataclass(frozen=True)
class ObservationWatermark:
    """What a cache of a KPI's recent observations is checked against: it changes whenever a
    row with ``ts >= since`` is added or changes value (which bumps its ``ingested_at``)."""

    first_ts: dt.datetime | None
    """The KPI's first observation, whatever ``since``: the origin of its grid."""
    rows: int
    last_ts: dt.datetime | None
    last_ingested_at: dt.datetime | None


def _observation_watermark() -> sa.Select:
    table = kpi_observations
    return sa.select(
        edge_ts(table, sa.bindparam("kpi"), sa.func.min).label("first_ts"),
        sa.func.count().label("rows"),
        sa.func.max(table.c.ts).label("last_ts"),
        sa.func.max(table.c.ingested_at).label("last_ingested_at"),
    ).where(table.c.kpi == sa.bindparam("kpi"), table.c.ts >= sa.bindparam("since"))


_OBSERVATION_WATERMARK = _observation_watermark()


def observation_watermark(engine: sa.Engine, kpi: str, since: TimeLike | None = None) -> ObservationWatermark:
    """``kpi``'s first observation, and the count, newest ``ts`` and newest ``ingested_at`` of
    its observations with ``ts >= since`` (all of them if None): one statement, which reads
    only the index entries and rows from ``since`` on."""
    since = _EARLIEST if since is None else _utc_datetime(since)
    (row,) = _hot_rows(engine, _OBSERVATION_WATERMARK, kpi=kpi, since=since)
    return ObservationWatermark(**row)


_NEWEST_OBSERVATION_TS = sa.select(edge_ts(kpi_observations, sa.bindparam("kpi")).label("ts"))


def newest_observation_ts(engine: sa.Engine, kpi: str) -> dt.datetime | None:
    """``kpi``'s newest observation's ``ts`` (None without any): one probe of the index."""
    (row,) = _hot_rows(engine, _NEWEST_OBSERVATION_TS, kpi=kpi)
    return None if row["ts"] is None else _utc_datetime(row["ts"])


def ping(engine: sa.Engine) -> None:
    """One round trip to the database; raises if it cannot be reached."""
    with engine.connect() as connection:
        connection.execute(sa.select(1))


def kpi_exists(engine: sa.Engine, kpi: str) -> bool:
    """Whether ``kpi`` has an observation, a score or a model."""
    probes = [sa.exists().where(table.c.kpi == kpi) for table in (kpi_observations, anomaly_scores, kpi_models)]
    with engine.connect() as connection:
        return bool(connection.scalar(sa.select(sa.or_(*probes))))
