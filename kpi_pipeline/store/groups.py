"""KPI groups: their state, their detector versions, their members' group component and their
events (docs/multivariate.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, build_frame, to_utc, utc_now
from kpi_pipeline.store._sql import read_frame, upsert, window
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import anomaly_scores, group_events, group_models, kpi_groups

MEMBER_COLUMNS: dict[str, Kind] = {
    "kpi": "str",
    "ts": "utc",
    "value": "float",
    "expected": "float",
    "score": "float",
    "is_anomaly": "bool",
    "multivariate_score": "float",
    "multivariate_z": "float",
}
EVENT_COLUMNS: dict[str, Kind] = {
    "group_name": "str",
    "event_id": "str",
    "start": "utc",
    "end": "utc",
    "points": "int",
    "peak_score": "float",
    "members": "str",
    "updated_at": "utc",
}


@dataclass(frozen=True)
class GroupState:
    """A row of ``kpi_groups``."""

    members: tuple[str, ...]
    scored_until: pd.Timestamp | None


@dataclass(frozen=True)
class GroupModelRecord:
    """A row of ``group_models``; timestamps are tz-aware UTC."""

    group_name: str
    version: str
    train_end: pd.Timestamp
    members: tuple[str, ...]
    artifact: bytes
    params: dict


def load_group_states(engine: sa.Engine) -> dict[str, GroupState]:
    """Every group's stored state, by name."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(kpi_groups.c.group_name, kpi_groups.c.members, kpi_groups.c.scored_until))
        return {
            name: GroupState(tuple(members), None if until is None else to_utc(until)) for name, members, until in rows
        }


def reset_group(engine: sa.Engine, name: str, members: Sequence[str]) -> None:
    """Record ``name`` with ``members`` as never judged: its versions and events (fitted on
    other members, or none) are deleted, and so is the group component of its old members."""
    with write_transaction(engine) as connection:
        old = connection.execute(sa.select(kpi_groups.c.members).where(kpi_groups.c.group_name == name)).scalar()
        connection.execute(sa.delete(group_models).where(group_models.c.group_name == name))
        connection.execute(sa.delete(group_events).where(group_events.c.group_name == name))
        cleared = sorted(set(old or ()) | set(members))
        connection.execute(
            sa.update(anomaly_scores)
            .where(anomaly_scores.c.kpi.in_(cleared))
            .values(multivariate_score=None, multivariate_z=None)
        )
        row = {"group_name": name, "members": list(members), "scored_until": None, "updated_at": utc_now()}
        upsert(connection, kpi_groups, [row], update=["members", "scored_until", "updated_at"])


def load_member_scores(
    engine: sa.Engine, members: Sequence[str], since: TimeLike | None = None, until: TimeLike | None = None
) -> pd.DataFrame:
    """The members' scored points with ``since < ts <= until`` (open if None), by ts then kpi:
    value, expected, the member's own score and its group component."""
    table = anomaly_scores
    conditions = window(table, list(members), None, until)
    if since is not None:
        conditions.append(table.c.ts > to_utc(since))
    query = sa.select(*(table.c[name] for name in MEMBER_COLUMNS)).where(*conditions)
    return read_frame(engine, query.order_by(table.c.ts, table.c.kpi), MEMBER_COLUMNS)


def load_group_models(engine: sa.Engine, name: str) -> list[GroupModelRecord]:
    """The versions of group ``name``, oldest training cutoff first."""
    table = group_models
    query = (
        sa.select(
            table.c.group_name, table.c.version, table.c.train_end, table.c.members, table.c.artifact, table.c.params
        )
        .where(table.c.group_name == name)
        .order_by(table.c.train_end)
    )
    with engine.connect() as connection:
        return [
            GroupModelRecord(group, version, to_utc(end), tuple(members), bytes(artifact), params or {})
            for group, version, end, members, artifact, params in connection.execute(query)
        ]


def save_group_results(
    engine: sa.Engine,
    name: str,
    *,
    models: Sequence[dict] = (),
    components: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None,
    scored_until: pd.Timestamp | None = None,
) -> None:
    """In one transaction: new versions (rows of ``group_models``), the members' group
    component (``kpi, ts, multivariate_score, multivariate_z``), the events (rows of
    ``group_events``, upserted by id) and how far the group has been judged. A rerun writes
    the same rows again."""
    now = utc_now()
    with write_transaction(engine) as connection:
        if models:
            rows = [{**model, "group_name": name, "trained_at": to_utc(model["trained_at"])} for model in models]
            upsert(connection, group_models, rows, update=[c for c in rows[0] if c not in ("group_name", "version")])
        if components is not None and not components.empty:
            statement = (
                sa.update(anomaly_scores)
                .where(anomaly_scores.c.kpi == sa.bindparam("b_kpi"), anomaly_scores.c.ts == sa.bindparam("b_ts"))
                .values(multivariate_score=sa.bindparam("b_score"), multivariate_z=sa.bindparam("b_z"))
            )
            connection.execute(
                statement,
                [
                    {"b_kpi": kpi, "b_ts": to_utc(ts), "b_score": _float(score), "b_z": _float(z)}
                    for kpi, ts, score, z in components[
                        ["kpi", "ts", "multivariate_score", "multivariate_z"]
                    ].itertuples(index=False)
                ],
            )
        if events is not None and not events.empty:
            rows = [
                {**row, "start": to_utc(row["start"]), "end": to_utc(row["end"]), "updated_at": now}
                for row in events.to_dict("records")
            ]
            upsert(connection, group_events, rows, update=["end", "points", "peak_score", "members", "updated_at"])
        if scored_until is not None:
            connection.execute(
                sa.update(kpi_groups)
                .where(kpi_groups.c.group_name == name)
                .values(scored_until=to_utc(scored_until), updated_at=now)
            )


def load_group_events(
    engine: sa.Engine, group: str | None = None, since: TimeLike | None = None, until: TimeLike | None = None
) -> pd.DataFrame:
    """Group events (of ``group``, if given) overlapping ``since .. until``, newest first."""
    table = group_events
    conditions = []
    if group is not None:
        conditions.append(table.c.group_name == group)
    if since is not None:
        conditions.append(table.c.end >= to_utc(since))
    if until is not None:
        conditions.append(table.c.start <= to_utc(until))
    query = sa.select(*(table.c[name] for name in EVENT_COLUMNS)).where(*conditions)
    return read_frame(engine, query.order_by(table.c.start.desc(), table.c.group_name), EVENT_COLUMNS)


def empty_events() -> pd.DataFrame:
    return build_frame([], EVENT_COLUMNS)


def _float(value) -> float | None:
    value = float(value)
    return None if value != value else value
