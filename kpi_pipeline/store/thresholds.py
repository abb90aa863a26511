"""The false positives that raise a KPI's threshold, and the resets that forget them.

The raise itself is derived at scoring time (``detection.feedback.threshold_raise``) from the
``anomaly_feedback`` table: one false positive per event, at the event's first labelled point.
A reset (table ``threshold_resets``) makes the feedback given up to then stop counting.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, to_utc, utc_now
from kpi_pipeline.store._sql import read_frame, upsert
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import anomaly_feedback, anomaly_scores, threshold_resets

_FALSE_POSITIVE_COLUMNS: dict[str, Kind] = {"kpi": "str", "ts": "utc", "event_id": "str"}


def load_false_positives(engine: sa.Engine, kpis: Iterable[str] | None = None) -> dict[str, pd.DatetimeIndex]:
    """Per KPI (of ``kpis``; all if None) with any, the false positives that raise its
    threshold: the first labelled point of each event marked ``false_positive`` after the KPI's
    last reset, oldest first. Labels on several points of one event count once."""
    feedback, scores, resets = anomaly_feedback, anomaly_scores, threshold_resets
    query = (
        sa.select(feedback.c.kpi, feedback.c.ts, scores.c.event_id)
        .select_from(
            feedback.outerjoin(scores, sa.and_(scores.c.kpi == feedback.c.kpi, scores.c.ts == feedback.c.ts)).outerjoin(
                resets, resets.c.kpi == feedback.c.kpi
            )
        )
        .where(
            feedback.c.label == "false_positive",
            sa.or_(resets.c.reset_at.is_(None), feedback.c.created_at > resets.c.reset_at),
        )
    )
    if kpis is not None:
        query = query.where(feedback.c.kpi.in_(sorted(set(kpis))))
    rows = read_frame(engine, query, _FALSE_POSITIVE_COLUMNS)
    if rows.empty:
        return {}
    # A point without an event (its scores rewritten since) is an event of its own.
    rows["event"] = rows["event_id"].fillna(rows["ts"].astype(str))
    firsts = rows.groupby(["kpi", "event"], sort=False)["ts"].min().reset_index()
    return {
        str(kpi): pd.DatetimeIndex(group["ts"].sort_values(), tz="UTC")
        for kpi, group in firsts.groupby("kpi", sort=True)
    }


def reset_threshold(engine: sa.Engine, kpi: str, at: TimeLike | None = None) -> pd.Timestamp:
    """Forget the false positives labelled on ``kpi`` up to ``at`` (default now) for its
    threshold; returns the reset time. Labels given later raise it again. Idempotent."""
    when = utc_now() if at is None else to_utc(at)
    with write_transaction(engine) as connection:
        upsert(connection, threshold_resets, [{"kpi": kpi, "reset_at": when}], update=["reset_at"])
    return pd.Timestamp(when)


def threshold_reset_times(engine: sa.Engine, kpis: Iterable[str] | None = None) -> dict[str, pd.Timestamp]:
    """When each KPI's threshold was last reset (KPIs never reset are absent)."""
    query = sa.select(threshold_resets.c.kpi, threshold_resets.c.reset_at)
    if kpis is not None:
        query = query.where(threshold_resets.c.kpi.in_(sorted(set(kpis))))
    with engine.connect() as connection:
        return {str(kpi): to_utc(reset_at) for kpi, reset_at in connection.execute(query)}
