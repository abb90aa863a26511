"""The model registry: one row per trained model (kpi, kind, version) with its artifact."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import TimeLike, to_utc
from kpi_pipeline.store._sql import upsert, window
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import kpi_models


@dataclass(frozen=True)
class ModelRecord:
    """A row of ``kpi_models``; timestamps are tz-aware UTC."""

    kpi: str
    kind: str
    version: str
    trained_at: pd.Timestamp
    train_start: pd.Timestamp | None
    train_end: pd.Timestamp | None
    n_points: int | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    artifact: bytes | None


def save_model(
    engine: sa.Engine,
    *,
    kpi: str,
    kind: str,
    version: str,
    trained_at: TimeLike,
    train_start: TimeLike | None,
    train_end: TimeLike | None,
    n_points: int | None,
    params: dict[str, Any],
    metrics: dict[str, Any],
    artifact: bytes | None,
) -> None:
    """Store a trained model, replacing any earlier row with the same (kpi, kind, version).

    ``params`` and ``metrics`` may hold numpy scalars and timestamps; NaN is stored as null.
    """
    save_models(
        engine,
        [
            dict(
                kpi=kpi,
                kind=kind,
                version=version,
                trained_at=trained_at,
                train_start=train_start,
                train_end=train_end,
                n_points=n_points,
                params=params,
                metrics=metrics,
                artifact=artifact,
            )
        ],
    )


def save_models(engine: sa.Engine, models: Sequence[dict[str, Any]]) -> None:
    """Store several models (each with ``save_model``'s arguments) in one transaction: all of
    them, or none if the write fails (a KPI's walk-forward versions are never half written)."""
    rows = [
        {
            **model,
            "trained_at": to_utc(model["trained_at"]),
            "train_start": None if model["train_start"] is None else to_utc(model["train_start"]),
            "train_end": None if model["train_end"] is None else to_utc(model["train_end"]),
            "n_points": None if model["n_points"] is None else int(model["n_points"]),
            "params": _jsonable(model["params"]),
            "metrics": _jsonable(model["metrics"]),
        }
        for model in models
    ]
    if not rows:
        return
    keys = {column.name for column in kpi_models.primary_key}
    with write_transaction(engine) as connection:
        upsert(connection, kpi_models, rows, update=[name for name in rows[0] if name not in keys])


NEWEST_FIRST = (
    kpi_models.c.train_end.desc().nulls_last(),
    kpi_models.c.trained_at.desc(),
    kpi_models.c.version.desc(),
)
"""Model recency: latest training cutoff first, then latest trained (the serving reads use it too,
so they pick the same version)."""


def load_latest_models(
    engine: sa.Engine, kind: str, kpis: Iterable[str] | None = None, artifact_head: int | None = None
) -> dict[str, ModelRecord]:
    """The newest model of ``kind`` for each KPI (all KPIs if None): latest training cutoff.

    Walk-forward training writes several versions in one run, so recency is the end of the
    training data (``train_end``), then the time of training. ``artifact_head``: read only that
    many first bytes of each artifact (``artifact`` is then their head, for readers of the
    artifact's document alone: ``artifacts.read_document``).
    """
    table = kpi_models
    recency = sa.func.row_number().over(partition_by=table.c.kpi, order_by=NEWEST_FIRST).label("recency")
    ranked = sa.select(table, recency).where(table.c.kind == kind, *window(table, kpis)).subquery()
    columns = [ranked.c[column.name] for column in table.columns]
    if artifact_head is not None:
        head = sa.func.substr(ranked.c.artifact, 1, artifact_head).label("artifact")
        columns = [head if column.name == "artifact" else column for column in columns]
    query = sa.select(*columns).where(ranked.c.recency == 1)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return {row["kpi"]: _record(row) for row in rows}


def load_model_versions(engine: sa.Engine, kpi: str, kind: str, artifacts: bool = True) -> list[ModelRecord]:
    """Every version of one KPI's ``kind`` model, oldest training cutoff first.

    ``artifacts=False`` leaves the stored models out (``artifact`` None): choosing which
    versions apply needs only their training windows.
    """
    table = kpi_models
    columns = [c for c in table.c if artifacts or c.name != "artifact"]
    query = (
        sa.select(*columns)
        .where(table.c.kpi == kpi, table.c.kind == kind)
        .order_by(table.c.train_end.asc().nulls_first(), table.c.trained_at.asc())
    )
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [_record(row, artifacts) for row in rows]


def prune_model_versions(engine: sa.Engine, kpi: str, needed_from: TimeLike) -> list[str]:
    """Delete the versions of ``kpi`` that can score no point at or after ``needed_from``;
    returns them, oldest first.

    A point is scored by the newest version whose training window ended strictly before it, so
    those points need every version that ended at or after ``needed_from`` and the newest one
    that ended before it; older versions go, every kind of a version together. Idempotent:
    a second call deletes nothing. Versions without a training end (which score nothing) are
    left alone.
    """
    table = kpi_models
    of_kpi = table.c.kpi == kpi
    boundary = (
        sa.select(sa.func.max(table.c.train_end))
        .where(of_kpi, table.c.train_end < to_utc(needed_from))
        .scalar_subquery()
    )
    doomed = sa.and_(of_kpi, table.c.train_end < boundary)
    with write_transaction(engine) as connection:
        versions = (
            connection.execute(
                sa.select(table.c.version)
                .where(doomed)
                .group_by(table.c.version)
                .order_by(sa.func.min(table.c.train_end))
            )
            .scalars()
            .all()
        )
        if versions:
            connection.execute(sa.delete(table).where(of_kpi, table.c.version.in_(versions)))
    return list(versions)


def _record(row: Any, artifact: bool = True) -> ModelRecord:
    def utc_or_none(value: Any) -> pd.Timestamp | None:
        return None if value is None else to_utc(value)

    return ModelRecord(
        kpi=row["kpi"],
        kind=row["kind"],
        version=row["version"],
        trained_at=to_utc(row["trained_at"]),
        train_start=utc_or_none(row["train_start"]),
        train_end=utc_or_none(row["train_end"]),
        n_points=row["n_points"],
        params=row["params"] or {},
        metrics=row["metrics"] or {},
        artifact=None if not artifact or row["artifact"] is None else bytes(row["artifact"]),
    )


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars unwrapped, times as ISO text, NaN as None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf and Postgres jsonb rejects them
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value
