"""KPI parameters: per-KPI overrides of the detector's configuration (``kpi_parameters``).

A KPI has at most two rows: the parameters tuning chose (source ``tuned``, with the objective
and trials) and those pinned by hand (``pinned``). Training applies the tuned ones, then the
pinned ones, on top of the run's configuration, so a pinned key always wins; tuning writes only
its own row and so never overwrites a pin. Keys and values are checked before anything is
written (``detection.parameters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.detection.parameters import as_json, check_parameters
from kpi_pipeline.store._convert import TimeLike, to_utc, utc_column, utc_now
from kpi_pipeline.store._sql import connected, upsert
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import kpi_parameters

PARAMETER_COLUMNS: tuple[str, ...] = (
    "kpi",
    "source",
    "params",
    "objective",
    "objective_value",
    "default_value",
    "trials",
    "pruned_trials",
    "updated_at",
)
"""Columns of ``load_parameter_rows``; the tuning columns are missing (None) on pinned rows."""


def save_tuned_parameters(
    engine: sa.Engine,
    kpi: str,
    params: Mapping[str, Any],
    *,
    objective: str,
    objective_value: float,
    default_value: float,
    trials: int,
    pruned_trials: int,
    at: TimeLike | None = None,
) -> None:
    """Replace ``kpi``'s tuned parameters (idempotent upsert); its pinned ones are untouched."""
    row = dict(
        kpi=kpi,
        source="tuned",
        params=as_json(check_parameters(params)),
        objective=objective,
        objective_value=float(objective_value),
        default_value=float(default_value),
        trials=int(trials),
        pruned_trials=int(pruned_trials),
        updated_at=utc_now() if at is None else to_utc(at),
    )
    with write_transaction(engine) as connection:
        upsert(connection, kpi_parameters, [row], update=[name for name in row if name not in ("kpi", "source")])


def pin_parameters(engine: sa.Engine, kpi: str, params: Mapping[str, Any], at: TimeLike | None = None) -> dict:
    """Pin ``params`` for ``kpi`` (added to, or replacing, its earlier pins); returns every pin
    of ``kpi`` now. Raises ``InvalidParameter`` on an unknown key or a bad value, writing nothing."""
    checked = check_parameters(params)
    with write_transaction(engine) as connection:
        pinned = {**_pinned(connection, kpi), **as_json(checked)}
        row = dict(kpi=kpi, source="pinned", params=pinned, updated_at=utc_now() if at is None else to_utc(at))
        upsert(connection, kpi_parameters, [row], update=["params", "updated_at"])
    return pinned


def unpin_parameters(engine: sa.Engine, kpi: str, keys: Iterable[str] | None = None) -> list[str]:
    """Remove pins of ``kpi``: those of ``keys``, or all; returns the keys removed. Raises
    ``KeyError`` naming any key of ``keys`` that is not pinned, removing nothing."""
    with write_transaction(engine) as connection:
        pinned = _pinned(connection, kpi)
        wanted = sorted(pinned) if keys is None else sorted(set(keys))
        missing = [key for key in wanted if key not in pinned]
        if missing:
            raise KeyError(f"{kpi} has no pinned {', '.join(missing)} (pinned: {', '.join(sorted(pinned)) or 'none'})")
        left = {key: value for key, value in pinned.items() if key not in wanted}
        where = (kpi_parameters.c.kpi == kpi) & (kpi_parameters.c.source == "pinned")
        if left:
            connection.execute(sa.update(kpi_parameters).where(where).values(params=left, updated_at=utc_now()))
        else:
            connection.execute(sa.delete(kpi_parameters).where(where))
    return wanted


def _pinned(connection: sa.Connection, kpi: str) -> dict[str, Any]:
    table = kpi_parameters
    found = connection.execute(
        sa.select(table.c.params).where(table.c.kpi == kpi, table.c.source == "pinned")
    ).scalar_one_or_none()
    return dict(found or {})


def load_parameters(engine: sa.Engine, kpis: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per KPI (of ``kpis``; all if None) with any parameters, the overrides training applies:
    its tuned parameters updated with its pinned ones, checked (lists back to tuples)."""
    table = kpi_parameters
    # 'pinned' sorts before 'tuned': read tuned first so that pins are applied last.
    query = sa.select(table.c.kpi, table.c.params).order_by(table.c.kpi, table.c.source.desc())
    if kpis is not None:
        query = query.where(table.c.kpi.in_(sorted(set(kpis))))
    merged: dict[str, dict[str, Any]] = {}
    with connected(engine) as connection:
        for kpi, params in connection.execute(query):
            merged.setdefault(kpi, {}).update(params or {})
    return {kpi: check_parameters(params) for kpi, params in merged.items()}


def load_parameter_rows(engine: sa.Engine, kpis: Iterable[str] | None = None) -> pd.DataFrame:
    """The stored rows (``PARAMETER_COLUMNS``; ``params`` a dict), by KPI, pinned before tuned."""
    table = kpi_parameters
    query = sa.select(*(table.c[name] for name in PARAMETER_COLUMNS)).order_by(table.c.kpi, table.c.source)
    if kpis is not None:
        query = query.where(table.c.kpi.in_(sorted(set(kpis))))
    with connected(engine) as connection:
        rows = [row._asdict() for row in connection.execute(query)]
    frame = pd.DataFrame(rows, columns=list(PARAMETER_COLUMNS)).astype(object)
    frame["updated_at"] = utc_column(frame["updated_at"])
    return frame
