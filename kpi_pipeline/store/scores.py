"""Anomaly scores, analyst feedback on them, and the ``anomalies`` view joining the two."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, coerce, to_records, to_utc, utc_now
from kpi_pipeline.store._sql import newest_ts_of_every_kpi, read_frame, upsert, window
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.notifications import notify_scores_written
from kpi_pipeline.store.schema import (
    FEEDBACK_LABELS,
    SEVERITIES,
    anomalies,
    anomaly_feedback,
    anomaly_scores,
)

SCORE_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "ts": "utc",
    "value": "float",
    "expected": "float",
    "lower": "float",
    "upper": "float",
    "iforest_score": "float",
    "prophet_score": "float",
    "score": "float",
    "is_anomaly": "bool",
    "severity": "str",
    "flagged_by": "str",
    "event_id": "str",
    "model_version": "str",
    "scored_at": "utc",
}
ANOMALY_COLUMNS: dict[str, Kind] = SCORE_COLUMNS | {
    "feedback": "str",
    "feedback_note": "str",
    "feedback_at": "utc",
}
_REQUIRED = ("kpi", "ts", "is_anomaly")
_KEY = ["kpi", "ts"]


def upsert_scores(engine: sa.Engine, df: pd.DataFrame) -> int:
    """Write scores (columns of ``anomaly_scores``), replacing earlier scores of the same points.

    kpi, ts and is_anomaly are required; other columns may be absent or NaN (stored as NULL),
    and ``scored_at`` defaults to now. Duplicate keys: the last row wins. Returns rows written.
    On Postgres, the commit also notifies the KPIs written (``notifications``).
    """
    frame = _score_frame(df)
    with write_transaction(engine) as connection:
        upsert(
            connection,
            anomaly_scores,
            to_records(frame, list(SCORE_COLUMNS)),
            update=[name for name in SCORE_COLUMNS if name not in _KEY],
        )
        notify_scores_written(connection, frame["kpi"].unique())
    return len(frame)


def _score_frame(df: pd.DataFrame) -> pd.DataFrame:
    unknown = set(df.columns) - set(SCORE_COLUMNS)
    missing = set(_REQUIRED) - set(df.columns)
    if unknown or missing:
        raise ValueError(f"scores: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
    nulls = df[list(_REQUIRED)].isna().sum()
    if nulls.any():
        raise ValueError(f"scores have null values: {nulls[nulls > 0].to_dict()}")
    frame = df.reindex(columns=list(SCORE_COLUMNS)).reset_index(drop=True)
    frame["scored_at"] = frame["scored_at"].fillna(utc_now())
    frame = coerce(frame, SCORE_COLUMNS)
    bad = set(frame["severity"].dropna()) - set(SEVERITIES)
    if bad:
        raise ValueError(f"unknown severities {sorted(bad)}; expected one of {SEVERITIES}")
    return frame.drop_duplicates(_KEY, keep="last")


def last_scored_ts(engine: sa.Engine) -> dict[str, pd.Timestamp]:
    """The newest scored timestamp of each KPI."""
    # Index probes per KPI: a GROUP BY would read every score ever written.
    with engine.connect() as connection:
        rows = connection.execute(newest_ts_of_every_kpi(anomaly_scores))
        return {kpi: to_utc(last) for kpi, last in rows}


def load_scores(
    engine: sa.Engine,
    kpis: list[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    only_anomalies: bool = False,
) -> pd.DataFrame:
    """Scores with ``since <= ts <= until``, sorted by kpi and ts."""
    table = anomaly_scores
    query = sa.select(*(table.c[name] for name in SCORE_COLUMNS)).where(*window(table, kpis, since, until))
    if only_anomalies:
        query = query.where(table.c.is_anomaly)
    return read_frame(engine, query.order_by(table.c.kpi, table.c.ts), SCORE_COLUMNS)


def load_anomalies(
    engine: sa.Engine,
    kpi: str | Sequence[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    min_severity: str | None = None,
) -> pd.DataFrame:
    """Anomalous points with any feedback (column ``feedback``), newest first.

    ``min_severity`` keeps points at least that severe (low < medium < high < critical);
    points without a severity are then left out.
    """
    view = anomalies
    query = anomalies_query(ANOMALY_COLUMNS, kpi, since, until, min_severity)
    return read_frame(engine, query.order_by(view.c.ts.desc(), view.c.kpi), ANOMALY_COLUMNS)


OUTAGE_FLAG = "gap"
"""``flagged_by`` of an outage: the first missing slot of a long gap (a KPI stopped reporting)."""


def of_kind(scores, kind: str) -> sa.ColumnElement:
    """Rows of ``kind``: ``outage`` (flagged ``gap``) or ``anomaly`` (everything else), so
    outages are counted apart from anomalies."""
    if kind == "outage":
        return scores.c.flagged_by == OUTAGE_FLAG
    if kind == "anomaly":
        return sa.or_(scores.c.flagged_by.is_(None), scores.c.flagged_by != OUTAGE_FLAG)
    raise ValueError(f"kind must be 'anomaly' or 'outage', not {kind!r}")


def anomalies_query(
    columns: Iterable[str],
    kpis: str | Iterable[str] | None,
    since: TimeLike | None,
    until: TimeLike | None,
    min_severity: str | None,
    kind: str | None = None,
) -> sa.Select:
    """``columns`` of the ``anomalies`` view in a KPI / time window, at least ``min_severity``
    severe (low < medium < high < critical; points without a severity are then left out), only
    those of ``kind`` (``anomaly`` or ``outage``, see ``of_kind``) if given."""
    view = anomalies
    query = sa.select(*(view.c[name] for name in columns)).where(*window(view, kpis, since, until))
    if kind is not None:
        query = query.where(of_kind(view, kind))
    if min_severity is not None:
        if min_severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {SEVERITIES}, not {min_severity!r}")
        query = query.where(view.c.severity.in_(SEVERITIES[SEVERITIES.index(min_severity) :]))
    return query


def set_feedback(engine: sa.Engine, kpi: str, ts: TimeLike, label: str, note: str | None = None) -> None:
    """Label a point ``true_positive`` or ``false_positive``, replacing any earlier label."""
    if label not in FEEDBACK_LABELS:
        raise ValueError(f"label must be one of {FEEDBACK_LABELS}, not {label!r}")
    row = {"kpi": kpi, "ts": to_utc(ts), "label": label, "note": note, "created_at": utc_now()}
    with write_transaction(engine) as connection:
        upsert(connection, anomaly_feedback, [row], update=["label", "note", "created_at"])
