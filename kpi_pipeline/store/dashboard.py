"""Read-side queries for the dashboard and the Dagster UI's metadata: overview, series, models.

They are written for many KPIs with long histories and no index beyond the (kpi, ts) keys: KPI
names come from a loose index scan, and every per-KPI aggregate is a correlated subquery that
seeks into that key, so an overview of 1,000 KPIs reads a few rows per KPI instead of the
whole score table. Windows ("last 24 h", "last 7 days") end at ``as_of``, the newest scored
point of any KPI rather than the wall clock, so replayed or delayed data reads the same way
as live data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, build_frame, coerce, to_utc, utc_now
from kpi_pipeline.store._sql import every_kpi, read_frame, window
from kpi_pipeline.store.schema import (
    SEVERITIES,
    anomalies,
    anomaly_feedback,
    anomaly_scores,
    kpi_models,
    kpi_observations,
)
from kpi_pipeline.store.scores import ANOMALY_COLUMNS, of_kind

RECENT = pd.Timedelta(hours=24)
WEEK = pd.Timedelta(days=7)

OVERVIEW_SORTS: tuple[str, ...] = ("severity", "recency", "name")
"""``severity``: anomalous KPIs first (worst latest point, then most anomalies in 24 h and 7 d);
``recency``: most recent anomaly first; ``name``: alphabetical."""

OVERVIEW_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "ts": "utc",
    "value": "float",
    "expected": "float",
    "lower": "float",
    "upper": "float",
    "score": "float",
    "is_anomaly": "bool",
    "severity": "str",
    "anomalies_24h": "int",
    "anomalies_7d": "int",
    "last_anomaly": "utc",
    "outages_7d": "int",
}
SERIES_COLUMNS: dict[str, Kind] = {
    "ts": "utc",
    "value": "float",
    "expected": "float",
    "lower": "float",
    "upper": "float",
    "score": "float",
    "is_anomaly": "bool",
    "severity": "str",
    "flagged_by": "str",
    "feedback": "str",
}
MODEL_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "kind": "str",
    "version": "str",
    "trained_at": "utc",
    "train_start": "utc",
    "train_end": "utc",
    "n_points": "int",
}


@dataclass(frozen=True)
class OverviewPage:
    """One page of the KPI overview."""

    rows: pd.DataFrame
    """Columns of ``OVERVIEW_COLUMNS``; ``ts`` .. ``severity`` describe the KPI's newest scored
    point (all missing for a KPI with observations but no scores yet)."""
    total: int
    """KPIs matching the search, on all pages."""
    as_of: pd.Timestamp | None
    """End of the 24 h / 7 d windows: the newest scored point of any KPI (None: nothing scored)."""


def relative_deviation(value: pd.Series, expected: pd.Series) -> pd.Series:
    """How far values are off their expectation, ``(value - expected) / |expected|``; missing
    where either is missing or nothing was expected (0)."""
    return (value - expected) / expected.abs().where(expected != 0)


def _kpi_names(search: str | None = None) -> sa.Subquery:
    """Every KPI with observations or scores (one ``kpi`` column), optionally name-filtered."""
    parts = [
        sa.select(names.c.kpi).where(names.c.kpi.is_not(None))
        for names in (
            every_kpi(kpi_observations),
            every_kpi(anomaly_scores),
        )
    ]
    union = sa.union(*parts).subquery("kpi_names")
    query = sa.select(union.c.kpi)
    if search:
        query = query.where(sa.func.lower(union.c.kpi).contains(search.lower(), autoescape=True))
    return query.subquery("kpis")


def _newest(scores: sa.FromClause) -> sa.ColumnElement:
    return sa.func.max(scores.c.ts)


def _count(_scores: sa.FromClause) -> sa.ColumnElement:
    return sa.func.count()


def _per_kpi(
    kpis: sa.Subquery,
    aggregate: Callable[[sa.FromClause], sa.ColumnElement],
    after: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    anomalous: bool = False,
    kind: str | None = None,
) -> sa.ScalarSelect:
    """``aggregate`` over each KPI's scores with ``after < ts <= until`` (only anomalous ones if
    ``anomalous``, only those of ``kind`` if given, see ``of_kind``), correlated to ``kpis``:
    one seek into the (kpi, ts) key per KPI."""
    scores = anomaly_scores.alias("s")
    conditions = [scores.c.kpi == kpis.c.kpi]
    if after is not None:
        conditions.append(scores.c.ts > after)
    if until is not None:
        conditions.append(scores.c.ts <= until)
    if anomalous:
        conditions.append(scores.c.is_anomaly)
    if kind is not None:
        conditions.append(of_kind(scores, kind))
    return sa.select(aggregate(scores)).where(*conditions).scalar_subquery()


def list_kpi_names(engine: sa.Engine, search: str | None = None) -> list[str]:
    """Every KPI with observations or scores, sorted; ``search`` keeps names containing it."""
    kpis = _kpi_names(search)
    with engine.connect() as connection:
        return list(connection.execute(sa.select(kpis.c.kpi).order_by(kpis.c.kpi)).scalars())


def data_as_of(engine: sa.Engine) -> pd.Timestamp | None:
    """The newest scored point of any KPI (None when nothing is scored)."""
    kpis = _kpi_names()
    # FROM kpis, so that the newest score is one index probe per KPI: without it the subquery
    # is not correlated and reads every score of every KPI (a cost that grew with history).
    newest = sa.select(sa.func.max(_per_kpi(kpis, _newest))).select_from(kpis)
    with engine.connect() as connection:
        value = connection.execute(newest).scalar()
    return None if value is None else to_utc(value)


def kpi_overview(
    engine: sa.Engine,
    *,
    page: int = 1,
    page_size: int = 50,
    sort: str = "severity",
    search: str | None = None,
    as_of: TimeLike | None = None,
) -> OverviewPage:
    """One page (1-based) of the KPI overview: each KPI's newest point and recent anomaly counts.

    Anomaly counts cover ``(as_of - 24 h, as_of]`` and ``(as_of - 7 d, as_of]``, and
    ``last_anomaly`` the newest anomaly within those 7 days. ``as_of`` defaults to
    ``data_as_of``. ``sort`` is one of ``OVERVIEW_SORTS``.
    """
    if sort not in OVERVIEW_SORTS:
        raise ValueError(f"sort must be one of {OVERVIEW_SORTS}, not {sort!r}")
    if page < 1 or page_size < 1:
        raise ValueError("page and page_size must be at least 1")
    as_of = to_utc(as_of) if as_of is not None else data_as_of(engine)
    kpis = _kpi_names(search)
    with engine.connect() as connection:
        total = connection.execute(sa.select(sa.func.count()).select_from(kpis)).scalar_one()
    # With nothing scored there is nothing to count; any window end will do.
    end = as_of if as_of is not None else utc_now()
    summary = sa.select(
        kpis.c.kpi,
        _per_kpi(kpis, _newest).label("latest_ts"),
        _per_kpi(kpis, _count, end - RECENT, end, True, "anomaly").label("anomalies_24h"),
        _per_kpi(kpis, _count, end - WEEK, end, True, "anomaly").label("anomalies_7d"),
        _per_kpi(kpis, _count, end - WEEK, end, True, "outage").label("outages_7d"),
        _per_kpi(kpis, _newest, end - WEEK, end, anomalous=True).label("last_anomaly"),
    ).subquery("summary")
    latest = anomaly_scores
    query = sa.select(
        summary.c.kpi,
        summary.c.latest_ts,
        latest.c.value,
        latest.c.expected,
        latest.c.lower,
        latest.c.upper,
        latest.c.score,
        sa.func.coalesce(latest.c.is_anomaly, False),
        latest.c.severity,
        summary.c.anomalies_24h,
        summary.c.anomalies_7d,
        summary.c.last_anomaly,
        summary.c.outages_7d,
    ).outerjoin(latest, sa.and_(latest.c.kpi == summary.c.kpi, latest.c.ts == summary.c.latest_ts))
    query = query.order_by(*_overview_order(sort, summary, latest))
    query = query.limit(page_size).offset((page - 1) * page_size)
    rows = read_frame(engine, query, OVERVIEW_COLUMNS)
    return OverviewPage(rows=rows, total=total, as_of=as_of)


def _overview_order(sort: str, summary: sa.Subquery, latest: sa.Table) -> list:
    """ORDER BY terms for ``sort``; ties are broken by name so pages never overlap."""
    if sort == "name":
        return [summary.c.kpi]
    if sort == "recency":
        return [summary.c.last_anomaly.is_(None), summary.c.last_anomaly.desc(), summary.c.kpi]
    # An anomalous newest point ranks by its severity; an unscored KPI sorts after the rest.
    status = sa.case(
        *((latest.c.is_anomaly & (latest.c.severity == level), rank + 2) for rank, level in enumerate(SEVERITIES)),
        (latest.c.is_anomaly, 1),
        (latest.c.ts.is_not(None), 0),
        else_=-1,
    )
    return [
        status.desc(),
        summary.c.anomalies_24h.desc(),
        summary.c.anomalies_7d.desc(),
        summary.c.kpi,
    ]


def sparklines(
    engine: sa.Engine,
    kpis: Sequence[str],
    since: TimeLike,
    until: TimeLike,
    max_points: int = 168,
) -> dict[str, list[float]]:
    """Per KPI, its scored values in ``[since, until]`` averaged down to at most ``max_points``
    buckets (gaps skipped); a KPI without points gets an empty list."""
    if not kpis:
        return {}
    table = anomaly_scores
    query = (
        sa.select(table.c.kpi, table.c.ts, table.c.value)
        .where(*window(table, list(kpis), since, until), table.c.value.is_not(None))
        .order_by(table.c.kpi, table.c.ts)
    )
    frame = read_frame(engine, query, {"kpi": "str", "ts": "utc", "value": "float"})
    lines: dict[str, list[float]] = {kpi: [] for kpi in kpis}
    for kpi, rows in frame.groupby("kpi", sort=False):
        values = rows["value"].to_numpy()
        buckets = np.array_split(values, min(len(values), max_points))
        lines[str(kpi)] = [float(bucket.mean()) for bucket in buckets]
    return lines


def kpi_time_range(engine: sa.Engine, kpi: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last timestamp of a KPI over its observations and scores (None if unknown)."""
    bounds: list[TimeLike] = []
    with engine.connect() as connection:
        for table in (kpi_observations, anomaly_scores):
            query = sa.select(sa.func.min(table.c.ts), sa.func.max(table.c.ts)).where(table.c.kpi == kpi)
            bounds.extend(value for value in connection.execute(query).one() if value is not None)
    if not bounds:
        return None
    stamps = [to_utc(value) for value in bounds]
    return min(stamps), max(stamps)


def kpi_series(
    engine: sa.Engine, kpi: str, since: TimeLike | None = None, until: TimeLike | None = None
) -> pd.DataFrame:
    """One KPI's points in ``[since, until]`` for charting, sorted by ts (``SERIES_COLUMNS``).

    Scored points carry their expectation, band, score, severity and feedback; observed points
    not scored yet (before the first model) appear with their value only.
    """
    scores, feedback = anomaly_scores, anomaly_feedback
    scored_query = (
        sa.select(*(scores.c[name] for name in SERIES_COLUMNS if name != "feedback"), feedback.c.label)
        .outerjoin(feedback, sa.and_(feedback.c.kpi == scores.c.kpi, feedback.c.ts == scores.c.ts))
        .where(*window(scores, kpi, since, until))
    )
    observations = kpi_observations
    observed_query = sa.select(observations.c.ts, observations.c.value).where(*window(observations, kpi, since, until))
    scored = read_frame(engine, scored_query, SERIES_COLUMNS)
    observed = read_frame(engine, observed_query, {"ts": "utc", "value": "float"})
    unscored = observed[~observed["ts"].isin(scored["ts"])]
    if unscored.empty:
        return scored.sort_values("ts", ignore_index=True)
    unscored = unscored.reindex(columns=list(SERIES_COLUMNS)).assign(is_anomaly=False)
    frame = pd.concat([scored, unscored], ignore_index=True) if len(scored) else unscored
    return coerce(frame, SERIES_COLUMNS).sort_values("ts", ignore_index=True)


def severity_counts(
    engine: sa.Engine,
    *,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    scored_since: TimeLike | None = None,
    kind: str | None = None,
) -> dict[str, int]:
    """Anomalous points per severity (every level present, least severe first), optionally
    only those with ``since <= ts <= until``, those written at or after ``scored_since`` and
    those of ``kind`` (``anomaly`` or ``outage``, see ``of_kind``)."""
    view = anomalies
    query = sa.select(view.c.severity, sa.func.count()).where(*window(view, None, since, until))
    if kind is not None:
        query = query.where(of_kind(view, kind))
    if scored_since is not None:
        query = query.where(view.c.scored_at >= to_utc(scored_since))
    with engine.connect() as connection:
        found: dict[str, int] = dict(connection.execute(query.group_by(view.c.severity)).all())
    return {level: int(found.get(level, 0)) for level in SEVERITIES}


def newest_anomalies(engine: sa.Engine, limit: int = 10) -> pd.DataFrame:
    """The ``limit`` newest anomalous points of any KPI with their feedback, newest first."""
    view = anomalies
    query = sa.select(*(view.c[name] for name in ANOMALY_COLUMNS)).order_by(view.c.ts.desc(), view.c.kpi).limit(limit)
    return read_frame(engine, query, ANOMALY_COLUMNS)


def model_versions(engine: sa.Engine, kpis: str | Sequence[str] | None = None, kind: str = "ensemble") -> pd.DataFrame:
    """Registered versions of ``kind`` (all KPIs if None), newest training cutoff first per KPI.

    Columns: ``MODEL_COLUMNS`` then one column per training metric (``residual_scale``,
    ``in_sample_mae``, ...). Artifacts are not read.
    """
    table = kpi_models
    query = (
        sa.select(*(table.c[name] for name in MODEL_COLUMNS), table.c.metrics)
        .where(table.c.kind == kind, *window(table, kpis))
        .order_by(table.c.kpi, table.c.train_end.desc(), table.c.trained_at.desc())
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = build_frame([row[:-1] for row in rows], MODEL_COLUMNS)
    metrics = pd.json_normalize([row[-1] or {} for row in rows])
    metrics = metrics.drop(columns=[c for c in metrics.columns if c in frame.columns])
    return pd.concat([frame, metrics.set_axis(frame.index)], axis=1) if len(rows) else frame


def model_artifacts(engine: sa.Engine, kpi: str, version: str) -> dict[str, bytes]:
    """The serialized models of one registered version, by kind (empty if unknown)."""
    table = kpi_models
    query = sa.select(table.c.kind, table.c.artifact).where(
        table.c.kpi == kpi, table.c.version == version, table.c.artifact.is_not(None)
    )
    with engine.connect() as connection:
        return {kind: bytes(artifact) for kind, artifact in connection.execute(query)}
