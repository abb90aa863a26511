"""KPI failures: which KPIs failed to train or score in their last attempt, and why.

A stage's run records each KPI's outcome: a failure upserts the KPI's row (keeping when it began
failing and counting the attempts), a success deletes it. The table therefore holds what is
failing now; ``kpi-pipeline status`` and the dashboard read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, to_utc, utc_now
from kpi_pipeline.store._sql import read_frame
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import KPI_STAGES, kpi_failures

FAILURE_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "stage": "str",
    "reason": "str",
    "failing_since": "utc",
    "last_failed_at": "utc",
    "attempts": "int",
}


def record_kpi_outcomes(
    engine: sa.Engine,
    stage: str,
    failed: Mapping[str, str],
    succeeded: Iterable[str],
    at: TimeLike | None = None,
) -> None:
    """Record one run of ``stage``: ``failed`` KPIs (kpi -> reason) are failing as of ``at``
    (default now), ``succeeded`` ones no longer are. Idempotent; one transaction."""
    if stage not in KPI_STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(KPI_STAGES)}")
    when = utc_now() if at is None else to_utc(at)
    table = kpi_failures
    cleared = sorted(set(succeeded) - set(failed))
    with write_transaction(engine) as connection:
        for start in range(0, len(cleared), 500):
            connection.execute(
                sa.delete(table).where(table.c.stage == stage, table.c.kpi.in_(cleared[start : start + 500]))
            )
        if not failed:
            return
        known = {
            row.kpi: row
            for row in connection.execute(
                sa.select(table.c.kpi, table.c.failing_since, table.c.attempts, table.c.last_failed_at).where(
                    table.c.stage == stage, table.c.kpi.in_(sorted(failed))
                )
            )
        }
        for kpi, reason in sorted(failed.items()):
            before = known.get(kpi)
            if before is None:
                connection.execute(
                    sa.insert(table).values(
                        kpi=kpi,
                        stage=stage,
                        reason=reason,
                        failing_since=when,
                        last_failed_at=when,
                        attempts=1,
                    )
                )
            elif to_utc(before.last_failed_at) != when:  # a rerun of the same attempt counts once
                connection.execute(
                    sa.update(table)
                    .where(table.c.kpi == kpi, table.c.stage == stage)
                    .values(reason=reason, last_failed_at=when, attempts=before.attempts + 1)
                )


def load_kpi_failures(engine: sa.Engine, kpis: Iterable[str] | None = None) -> pd.DataFrame:
    """The failing KPIs (``FAILURE_COLUMNS``), by kpi and stage."""
    table = kpi_failures
    query = sa.select(*(table.c[name] for name in FAILURE_COLUMNS)).order_by(table.c.kpi, table.c.stage)
    if kpis is not None:
        query = query.where(table.c.kpi.in_(sorted(set(kpis))))
    return read_frame(engine, query, FAILURE_COLUMNS)
