"""Retention of observations and scores: old rows go, never those that training or scoring
still needs.

A KPI's rows at or after its *protected start* stay whatever their age: the earliest training
window start of its registered model versions (their retraining and re-scoring read those
points, and training reads the scores there to leave out past anomalies), and the start of its
newest anomaly event (the next scoring run may continue it). A KPI without models keeps
everything: its history is about to be walked forward. Deletes are idempotent.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import TimeLike, to_utc
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import (
    anomaly_scores,
    kpi_cleaned,
    kpi_features,
    kpi_models,
    kpi_observations,
    kpi_series,
)


def protected_starts(connection: sa.Connection) -> dict[str, pd.Timestamp]:
    """Per KPI with models, the time from which its observations and scores are kept."""
    training = dict(
        connection.execute(
            sa.select(kpi_models.c.kpi, sa.func.min(kpi_models.c.train_start)).group_by(kpi_models.c.kpi)
        ).all()
    )
    scores = anomaly_scores.c
    newest_event = (
        sa.select(
            scores.kpi,
            scores.event_id,
            sa.func.row_number().over(partition_by=scores.kpi, order_by=scores.ts.desc()).label("recency"),
        )
        .where(scores.event_id.is_not(None))
        .subquery()
    )
    event_starts = dict(
        connection.execute(
            sa.select(scores.kpi, sa.func.min(scores.ts))
            .join(
                newest_event,
                (newest_event.c.kpi == scores.kpi)
                & (newest_event.c.event_id == scores.event_id)
                & (newest_event.c.recency == 1),
            )
            .group_by(scores.kpi)
        ).all()
    )
    starts = {}
    for kpi, start in training.items():
        candidates = [to_utc(t) for t in (start, event_starts.get(kpi)) if t is not None]
        if candidates:
            starts[kpi] = min(candidates)
    return starts


def delete_old_observations(engine: sa.Engine, older_than: TimeLike) -> int:
    """Delete observations before ``older_than`` that nothing protects (see the module);
    returns how many. Their cleaned rows and features go with them, and each KPI's count of
    observations in ``kpi_series`` follows, so the next cleaning sees no change to rebuild."""
    return _delete_before(engine, kpi_observations, older_than, derived=True)


def delete_old_scores(engine: sa.Engine, older_than: TimeLike) -> int:
    """Delete scores before ``older_than`` that nothing protects (see the module); returns how
    many."""
    return _delete_before(engine, anomaly_scores, older_than)


def _delete_before(engine: sa.Engine, table: sa.Table, older_than: TimeLike, derived: bool = False) -> int:
    cutoff = to_utc(older_than)
    deleted = 0
    with write_transaction(engine) as connection:
        for kpi, start in protected_starts(connection).items():
            until = min(cutoff, start)
            gone = connection.execute(sa.delete(table).where(table.c.kpi == kpi, table.c.ts < until)).rowcount
            deleted += gone
            if derived and gone:
                for kept in (kpi_cleaned, kpi_features):
                    connection.execute(sa.delete(kept).where(kept.c.kpi == kpi, kept.c.ts < until))
                connection.execute(
                    sa.update(kpi_series)
                    .where(kpi_series.c.kpi == kpi)
                    .values(observations=kpi_series.c.observations - gone)
                )
    return deleted
