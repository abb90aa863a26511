"""The derived series: ``kpi_cleaned``, ``kpi_features`` and ``kpi_series``, the grid and
maintenance state of each KPI that lets the first two be kept up to date incrementally.

Reads of several KPIs take a mapping ``{kpi: since}`` and make one query for all of them, so a
run issues a bounded number of queries per chunk of KPIs, not per KPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from dataclasses import asdict, dataclass, field

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, build_frame, to_records, to_utc
from kpi_pipeline.store._sql import keyed_values, read_frame, rows_per_kpi, upsert
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import kpi_cleaned, kpi_features, kpi_observations, kpi_series

CLEANED_COLUMNS: dict[str, Kind] = {"kpi": "str", "ts": "utc", "value": "float", "filled": "bool", "gap": "bool"}
FEATURE_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "ts": "utc",
    **{column.name: "float" for column in kpi_features.columns if isinstance(column.type, sa.Double)},
    "is_weekend": "int",
    "is_holiday": "int",
}
OBSERVATION_COLUMNS: dict[str, Kind] = {"kpi": "str", "ts": "utc", "value": "float"}
GAP_COLUMNS: dict[str, Kind] = {"kpi": "str", "ts": "utc"}
CHANGE_COLUMNS: dict[str, Kind] = {"kpi": "str", "first_ts": "utc", "last_ts": "utc", "ingested_through": "utc"}

Since = TimeLike | Mapping[str, TimeLike | None] | None
"""One time for every KPI, a time per KPI (None: from its start), or None: everything."""


@dataclass(frozen=True)
class SeriesState:
    """One KPI's row of ``kpi_series`` (see the table's comments in ``schema``)."""

    kpi: str
    origin: pd.Timestamp
    step: pd.Timedelta | None
    step_counts: dict[int, int] = field(repr=False)
    observations: int
    duplicates: int
    last_observed: pd.Timestamp
    ingested_through: pd.Timestamp
    cleaned_at: pd.Timestamp
    changed_from: pd.Timestamp
    features_through: pd.Timestamp | None = None

    @property
    def features_current(self) -> bool:
        """Whether ``kpi_features`` follows the KPI's newest cleaning."""
        return self.features_through is not None and self.features_through >= self.cleaned_at


# -- state ----------------------------------------------------------------------------------


def load_series(engine: sa.Engine, kpis: Iterable[str] | None = None) -> dict[str, SeriesState]:
    """The ``kpi_series`` rows of ``kpis`` (every KPI if None), by KPI."""
    query = sa.select(kpi_series)
    if kpis is not None:
        query = query.where(kpi_series.c.kpi.in_(list(kpis)))
    return _states(engine, query)


def newest_cleaning(engine: sa.Engine) -> dict[str, SeriesState]:
    """The ``kpi_series`` rows of the KPIs the newest cleaning run wrote rows of."""
    newest = sa.select(sa.func.max(kpi_series.c.cleaned_at)).scalar_subquery()
    return _states(engine, sa.select(kpi_series).where(kpi_series.c.cleaned_at == newest))


def features_due(engine: sa.Engine) -> dict[str, SeriesState]:
    """The ``kpi_series`` rows of the KPIs cleaned since their features were last built."""
    query = sa.select(kpi_series).where(
        sa.or_(
            kpi_series.c.features_through.is_(None),
            kpi_series.c.cleaned_at > kpi_series.c.features_through,
        )
    )
    return _states(engine, query)


def _states(bind: sa.Engine | sa.Connection, query: sa.Select) -> dict[str, SeriesState]:
    query = query.order_by(kpi_series.c.kpi)
    if isinstance(bind, sa.Connection):
        rows = bind.execute(query).mappings().all()
    else:
        with bind.connect() as connection:
            rows = connection.execute(query).mappings().all()
    return {row["kpi"]: _state(row) for row in rows}


ONGOING_OUTAGE_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "start": "utc",
    "last_observed": "utc",
    "missing_points": "int",
    "outage_since": "utc",
}


def ongoing_outages(
    bind: sa.Engine | sa.Connection, now: TimeLike, after_slots: int, kpis: Iterable[str] | None = None
) -> pd.DataFrame:
    """KPIs that have stopped reporting: at least ``after_slots`` slots of their grid have passed
    by ``now`` since their newest observation (``kpi_series.last_observed``). One row per KPI:
    ``start`` (the first missing slot, the slot the outage's score takes when data returns),
    ``last_observed``, ``missing_points`` (slots passed so far) and ``outage_since`` (when the
    ``after_slots``-th slot passed: when it became an outage); sorted by KPI."""
    query = sa.select(kpi_series)
    if kpis is not None:
        query = query.where(kpi_series.c.kpi.in_(sorted(set(kpis))))
    now = to_utc(now)
    rows: list[tuple[Any, ...]] = []
    for state in _states(bind, query).values():
        if state.step is None:
            continue
        # The newest observation's slot (observations snap to the nearest slot, as cleaning does).
        last_slot = state.origin + round((state.last_observed - state.origin) / state.step) * state.step
        missing = int((now - last_slot) // state.step)
        if missing >= after_slots:
            since = last_slot + after_slots * state.step
            rows.append((state.kpi, last_slot + state.step, state.last_observed, missing, since))
    return build_frame(rows, ONGOING_OUTAGE_COLUMNS)


def _state(row: Mapping) -> SeriesState:
    return SeriesState(
        kpi=row["kpi"],
        origin=to_utc(row["origin"]),
        step=None if row["step_us"] is None else pd.Timedelta(row["step_us"], unit="us"),
        step_counts={int(step): int(count) for step, count in row["step_counts"].items()},
        observations=int(row["observations"]),
        duplicates=int(row["duplicates"]),
        last_observed=to_utc(row["last_observed"]),
        ingested_through=to_utc(row["ingested_through"]),
        cleaned_at=to_utc(row["cleaned_at"]),
        changed_from=to_utc(row["changed_from"]),
        features_through=(None if row["features_through"] is None else to_utc(row["features_through"])),
    )


def _state_row(state: SeriesState) -> dict[str, Any]:
    row = asdict(state)
    step = row.pop("step")
    row["step_us"] = None if step is None else int(step / pd.Timedelta(microseconds=1))
    row["step_counts"] = {str(step): count for step, count in sorted(state.step_counts.items())}
    return row


# -- observations ---------------------------------------------------------------------------


def observation_changes(engine: sa.Engine, slack: pd.Timedelta) -> pd.DataFrame:
    """Per KPI, the observations ingested after its ``kpi_series.ingested_through`` (all of a
    KPI without a row there): ``kpi, first_ts, last_ts, ingested_through`` (their earliest and
    newest ts, their newest ingested_at), sorted by KPI.

    Reads the ``ingested_at`` index from ``slack`` before the newest ``ingested_through`` of
    any KPI, so its cost follows the rows ingested since the previous run; a row is missed if
    its writer's clock or transaction lags the others' by more than ``slack``.
    """
    observations, series = kpi_observations, kpi_series
    with engine.connect() as connection:
        newest = connection.scalar(sa.select(sa.func.max(series.c.ingested_through)))
    query = (
        sa.select(
            observations.c.kpi,
            sa.func.min(observations.c.ts),
            sa.func.max(observations.c.ts),
            sa.func.max(observations.c.ingested_at),
        )
        .select_from(observations.outerjoin(series, series.c.kpi == observations.c.kpi))
        .where(
            sa.or_(
                series.c.ingested_through.is_(None),
                observations.c.ingested_at > series.c.ingested_through,
            )
        )
        .group_by(observations.c.kpi)
        .order_by(observations.c.kpi)
    )
    if newest is not None:
        query = query.where(observations.c.ingested_at > to_utc(newest) - slack)
    return read_frame(engine, query, CHANGE_COLUMNS)


def count_observations(engine: sa.Engine, until: Mapping[str, TimeLike]) -> dict[str, int]:
    """Per KPI, its observations with ``ts <= until[kpi]`` (0 for none)."""
    if not until:
        return {}
    table = kpi_observations
    # Each KPI through the key (``rows_per_kpi``), not an OR per KPI (see ``_read_since``).
    bounds = keyed_values(
        "bounds",
        [sa.column("kpi", sa.Text), sa.column("until", table.c.ts.type)],
        [(kpi, to_utc(ts)) for kpi, ts in until.items()],
    )
    rows = rows_per_kpi(
        engine.dialect.name, bounds, [table.c.kpi], (table.c.kpi == bounds.c.kpi) & (table.c.ts <= bounds.c.until)
    ).subquery()
    query = sa.select(rows.c.kpi, sa.func.count()).group_by(rows.c.kpi)
    with engine.connect() as connection:
        counted: dict[str, int] = dict(connection.execute(query).all())
    return {kpi: int(counted.get(kpi, 0)) for kpi in until}


def load_observations_since(engine: sa.Engine, since: Mapping[str, TimeLike | None]) -> pd.DataFrame:
    """The observations (kpi, ts, value) of each KPI of ``since`` from its time on (None: all
    of them), sorted by kpi and ts; one query."""
    return _read_since(engine, kpi_observations, OBSERVATION_COLUMNS, since.keys(), since)


# -- cleaned rows ---------------------------------------------------------------------------


def load_cleaned_rows(engine: sa.Engine, kpis: Iterable[str] | None = None, since: Since = None) -> pd.DataFrame:
    """Rows of ``kpi_cleaned`` (kpi, ts, value, filled, gap) of ``kpis`` (all if None) with
    ``ts >= since`` (see ``Since``), sorted by kpi and ts: what ``clean_observations`` makes of
    the stored observations, as the ``cleaned_kpis`` asset last maintained it."""
    return _read_since(engine, kpi_cleaned, CLEANED_COLUMNS, kpis, since)


def load_gap_slots(engine: sa.Engine, kpis: Iterable[str] | None = None) -> pd.DataFrame:
    """The missing-data slots of ``kpi_cleaned`` (``gap`` rows: longer gaps than cleaning fills)
    of ``kpis`` (all if None): ``kpi, ts``, sorted by kpi and ts."""
    query = sa.select(kpi_cleaned.c.kpi, kpi_cleaned.c.ts).where(kpi_cleaned.c.gap)
    if kpis is not None:
        query = query.where(kpi_cleaned.c.kpi.in_(sorted(set(kpis))))
    return read_frame(engine, query.order_by(kpi_cleaned.c.kpi, kpi_cleaned.c.ts), GAP_COLUMNS)


def save_cleaned(
    engine: sa.Engine,
    rows: pd.DataFrame,
    states: Iterable[SeriesState],
    rebuilt: Iterable[str] = (),
) -> None:
    """In one transaction: drop the cleaned rows of the ``rebuilt`` KPIs, upsert ``rows``
    (columns of ``kpi_cleaned``; a row stored with the same values is not touched) and the
    KPIs' ``kpi_series`` rows (all but ``features_through``, which ``save_features`` keeps)."""
    state_rows = [_state_row(state) for state in states]
    with write_transaction(engine) as connection:
        rebuilt = list(rebuilt)
        if rebuilt:
            connection.execute(sa.delete(kpi_cleaned).where(kpi_cleaned.c.kpi.in_(rebuilt)))
        changing = ["value", "filled", "gap"]
        upsert(
            connection, kpi_cleaned, to_records(rows, list(CLEANED_COLUMNS)), update=changing, only_if_changed=changing
        )
        for row in state_rows:
            row.pop("features_through")
        upsert(
            connection,
            kpi_series,
            state_rows,
            update=[name for name in (state_rows[0] if state_rows else ()) if name != "kpi"],
        )


# -- features -------------------------------------------------------------------------------


def load_features(engine: sa.Engine, kpis: Iterable[str] | None = None, since: Since = None) -> pd.DataFrame:
    """Rows of ``kpi_features`` of ``kpis`` (all if None) with ``ts >= since`` (see ``Since``),
    sorted by kpi and ts."""
    return _read_since(engine, kpi_features, FEATURE_COLUMNS, kpis, since)


def save_features(
    engine: sa.Engine,
    rows: pd.DataFrame,
    built: Mapping[str, TimeLike],
    rebuilt: Iterable[str] = (),
) -> None:
    """In one transaction: drop the feature rows of the ``rebuilt`` KPIs, upsert ``rows``
    (columns of ``kpi_features``) and record that each KPI of ``built`` has its features
    built for its cleaning at ``built[kpi]`` (its ``cleaned_at`` when the rows were read)."""
    with write_transaction(engine) as connection:
        rebuilt = list(rebuilt)
        if rebuilt:
            connection.execute(sa.delete(kpi_features).where(kpi_features.c.kpi.in_(rebuilt)))
        features = [name for name in FEATURE_COLUMNS if name not in ("kpi", "ts")]
        upsert(
            connection, kpi_features, to_records(rows, list(FEATURE_COLUMNS)), update=features, only_if_changed=features
        )
        if built:
            statement = (
                sa.update(kpi_series)
                .where(kpi_series.c.kpi == sa.bindparam("key"))
                .values(features_through=sa.bindparam("through", type_=kpi_series.c.cleaned_at.type))
            )
            connection.execute(statement, [{"key": kpi, "through": to_utc(ts)} for kpi, ts in built.items()])


# -- shared ---------------------------------------------------------------------------------


def _read_since(
    engine: sa.Engine,
    table: sa.Table,
    columns: dict[str, Kind],
    kpis: Iterable[str] | None,
    since: Since,
) -> pd.DataFrame:
    """The rows of ``table`` (``columns``) of ``kpis`` (all if None) from ``since`` on (see
    ``Since``), sorted by kpi and ts; one query.

    Per-KPI bounds are a ``VALUES`` list whose rows each read their KPI through the ``(kpi,
    ts)`` key (``rows_per_kpi``). (As one ``OR`` of a condition per KPI, PostgreSQL scanned the
    whole table and tested every condition on every row: 92 s for 1,000 KPIs x 365 days.)"""
    selected = [table.c[name] for name in columns]
    query = sa.select(*selected).order_by(table.c.kpi, table.c.ts)
    if isinstance(since, Mapping):
        wanted = since if kpis is None else {kpi: since.get(kpi) for kpi in kpis}
        whole = [kpi for kpi, ts in wanted.items() if ts is None]
        bounded = [(kpi, to_utc(ts)) for kpi, ts in wanted.items() if ts is not None]
        parts = []
        if whole:
            parts.append(sa.select(*selected).where(table.c.kpi.in_(whole)))
        if bounded:
            bounds = keyed_values("bounds", [sa.column("kpi", sa.Text), sa.column("since", table.c.ts.type)], bounded)
            in_bounds = (table.c.kpi == bounds.c.kpi) & (table.c.ts >= bounds.c.since)
            parts.append(rows_per_kpi(engine.dialect.name, bounds, selected, in_bounds))
        if not parts:
            return build_frame([], columns)
        rows = (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery()
        query = sa.select(*(rows.c[name] for name in columns)).order_by(rows.c.kpi, rows.c.ts)
    else:
        if kpis is not None:
            query = query.where(table.c.kpi.in_(list(kpis)))
        if since is not None:
            query = query.where(table.c.ts >= to_utc(since))
    return read_frame(engine, query, columns)
