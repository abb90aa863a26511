"""KPI groups: declared in a YAML file, judged jointly after every scoring run.

This module joins the store and ``detection.multivariate`` and imports no Dagster (as
``pipeline`` does). A group's detector learns from its members' stored scores: the residuals
of each member's value against the expected value its own model gave (out-of-sample, as new
points will be judged), so a group needs its members scored first, and nothing of the per-KPI
path changes (docs/multivariate.md).

Per group, ``update_groups``: reads the members' points scored since the group last judged
(all of them the first time), walks the group's detector forward over them exactly as a new
KPI is walked (a version per cutoff, each trained on the points before it, each point judged by
the newest version trained strictly before it), writes each member's group component, derives
the group events again from the first point that may extend the newest one, and retrains when
a retrain period has passed since the newest version.

The groups file::

    groups:
      checkout:
        members: [orders, revenue, conversion_rate]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kpi_pipeline.detection.calibration import ROBUST_SCALE
from kpi_pipeline.detection.multivariate import (
    GroupConfig,
    GroupDetector,
    InsufficientGroupHistory,
    group_events,
    member_residuals,
    positive_members,
)
from kpi_pipeline.detection.preprocess import infer_frequency
from kpi_pipeline.detection.walkforward import retrain_every_points
from kpi_pipeline.errors import describe_error
from kpi_pipeline.store import groups as group_store

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
MIN_MOVERS = 2
"""Members that must move for a timestamp to fire: one member alone is its own KPI's event."""

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiGroup:
    name: str
    members: tuple[str, ...]


class _GroupEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: list[str] = Field(min_length=1)


class _GroupsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: dict[str, _GroupEntry] = Field(default_factory=dict)


def parse_groups(text: str, source: str = "groups file") -> list[KpiGroup]:
    """The groups of a groups file's text; ``ValueError`` naming the problem (bad YAML or
    layout, a group of fewer than two members, a KPI listed twice or in two groups)."""
    try:
        data = yaml.safe_load(text) or {}
        parsed = _GroupsFile.model_validate(data)
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"{source}: {error}") from error
    groups, owner = [], {}
    for name, entry in parsed.groups.items():
        members = tuple(entry.members)
        if not name.strip():
            raise ValueError(f"{source}: a group needs a name")
        if len(set(members)) != len(members):
            raise ValueError(f"{source}: group {name!r} lists a KPI twice: {', '.join(members)}")
        if len(members) < 2:
            raise ValueError(f"{source}: group {name!r} has {len(members)} member; a group needs at least 2")
        for kpi in members:
            if kpi in owner:
                raise ValueError(
                    f"{source}: KPI {kpi!r} is in groups {owner[kpi]!r} and {name!r}; a KPI may be in one group"
                )
            owner[kpi] = name
        groups.append(KpiGroup(name, members))
    return groups


def load_groups(path: str | Path | None) -> list[KpiGroup]:
    """The groups of the file at ``path`` (``KPI_GROUPS_FILE``); none if ``path`` is empty."""
    if not path:
        return []
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"groups file {path}: {error}") from error
    return parse_groups(text, f"groups file {path}")


def check_members_known(groups: Sequence[KpiGroup], known: set[str]) -> None:
    """``ValueError`` naming every member that is not a known KPI."""
    unknown = [f"{kpi!r} (group {group.name!r})" for group in groups for kpi in group.members if kpi not in known]
    if unknown:
        raise ValueError(f"groups file names unknown KPIs: {', '.join(unknown)}")


def groups_yaml(groups: Sequence[KpiGroup]) -> str:
    """``groups`` as a groups file."""
    return yaml.safe_dump(
        {"groups": {group.name: {"members": list(group.members)} for group in groups}}, sort_keys=False
    )


# -- judging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupUpdate:
    """What ``update_groups`` did for one group."""

    group: str
    status: str
    """``judged``, ``up to date``, ``insufficient history`` or ``failed`` (``detail``)."""
    judged: int = 0
    """Timestamps judged in this run."""
    fired: int = 0
    events: int = 0
    """Group events written (new or extended) in this run."""
    versions: tuple[str, ...] = ()
    detail: str = ""


@dataclass
class _Members:
    """The members' points side by side (timestamps x members)."""

    ts: pd.DatetimeIndex
    value: np.ndarray
    expected: np.ndarray
    mv_score: np.ndarray
    mv_z: np.ndarray
    members: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, rows: pd.DataFrame, members: tuple[str, ...]) -> _Members:
        def wide(column: str) -> pd.DataFrame:
            return rows.pivot(index="ts", columns="kpi", values=column).reindex(columns=list(members))

        value = wide("value")
        return cls(
            pd.DatetimeIndex(value.index),
            value.to_numpy(dtype=float),
            wide("expected").to_numpy(dtype=float),
            wide("multivariate_score").to_numpy(dtype=float),
            wide("multivariate_z").to_numpy(dtype=float),
            members,
        )

    def __len__(self) -> int:
        return len(self.ts)


def update_groups(
    engine: sa.Engine,
    groups: Sequence[KpiGroup],
    config: GroupConfig | None = None,
    *,
    trained_at: pd.Timestamp | None = None,
    progress: Progress = _quiet,
) -> list[GroupUpdate]:
    """Judge every group's points scored since it last judged (see the module docstring); one
    group's failure is reported in its result and the others go on."""
    config = config or GroupConfig()
    trained_at = trained_at if trained_at is not None else pd.Timestamp.now("UTC")
    states = group_store.load_group_states(engine)
    results = []
    for group in groups:
        try:
            state = states.get(group.name)
            if state is None or state.members != group.members:
                group_store.reset_group(engine, group.name, group.members)
                state = group_store.GroupState(group.members, None)
            result = _update_group(engine, group, state.scored_until, config, trained_at)
        except Exception as error:  # noqa: BLE001 - one group's failure must not stop the others
            result = GroupUpdate(group.name, "failed", detail=describe_error(error))
        progress(f"group {group.name}: {_describe(result)}")
        results.append(result)
    return results


def _update_group(
    engine: sa.Engine, group: KpiGroup, scored_until: pd.Timestamp | None, config: GroupConfig, trained_at
) -> GroupUpdate:
    models = group_store.load_group_models(engine, group.name)
    detectors = [(m.train_end, m.version, GroupDetector.from_artifact(m.artifact)) for m in models]
    new_rows = group_store.load_member_scores(engine, group.members, since=scored_until)
    if new_rows.empty:
        return GroupUpdate(group.name, "up to date")
    new = _Members.of(new_rows, group.members)
    history = new
    if detectors:
        # Read back over a retrain's window and every point since the newest version, on the
        # grid step that version was trained on (a run may bring a single new point).
        step = pd.Timedelta(seconds=models[-1].params.get("step_seconds") or 3600)
        since = min(new.ts[-1] - (config.train_window_points + 1) * step, models[-1].train_end)
        history = _Members.of(group_store.load_member_scores(engine, group.members, since=since), group.members)
    # Versions: walked forward over a group never judged, else the retrain once a period passed.
    fitted, shortfall = _fit_versions(group, history, detectors, config, upto=new.ts[-1])
    detectors.extend(fitted)
    versions = tuple(version for _, version, _ in fitted)
    judged_mask = np.zeros(len(new), dtype=bool)
    score = np.zeros(len(new))
    z = np.full(new.value.shape, np.nan)
    moved = np.zeros(new.value.shape, dtype=bool)
    if detectors:
        ends = pd.DatetimeIndex([end for end, _, _ in detectors])
        version_of = ends.searchsorted(new.ts, side="left") - 1
        for index in np.unique(version_of[version_of >= 0]):
            at = version_of == index
            judgement = detectors[index][2].judge(new.value[at], new.expected[at])
            score[at], z[at], moved[at] = judgement.score, judgement.z, judgement.moved
            judged_mask |= at
    if not judged_mask.any() and not fitted:
        return GroupUpdate(group.name, "insufficient history", detail=shortfall)
    component = group_component(score, moved)
    components = _component_rows(new, component, z, judged_mask)
    # The judged timestamps are final; later ones wait for a version trained before them.
    done_until = new.ts[judged_mask][-1] if judged_mask.any() else scored_until
    # Events: from the first point that may belong to the newest stored event.
    merged = _with_components(history if detectors else new, new, component, z, judged_mask)
    events = _events_from(group, merged, config, new.ts[0])
    step = infer_frequency(history.ts)
    model_rows = [_model_row(group, detector, end, version, trained_at, step) for end, version, detector in fitted]
    group_store.save_group_results(
        engine,
        group.name,
        models=model_rows,
        components=components,
        events=events,
        scored_until=done_until,
    )
    return GroupUpdate(
        group.name,
        "judged",
        judged=int(judged_mask.sum()),
        fired=int((component >= 0.5).any(axis=1).sum()),
        events=len(events),
        versions=versions,
        detail=shortfall,
    )


def group_component(score: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Each member's group component (timestamps x members): the group score where the member
    moved and at least ``MIN_MOVERS`` members did, else 0. A member's combined score is the
    larger of its own score and this (the ensemble's rule across its calibrated components)."""
    several = moved.sum(axis=1) >= MIN_MOVERS
    return np.where(moved & several[:, None], np.asarray(score)[:, None], 0.0)


def _fit_versions(
    group: KpiGroup, history: _Members, detectors: list, config: GroupConfig, upto: pd.Timestamp
) -> tuple[list[tuple[pd.Timestamp, str, GroupDetector]], str]:
    """The versions to add: walk-forward cutoffs of a group without versions; else one on
    everything up to ``upto`` once a retrain period has passed since the newest version."""
    residuals_ok = np.isfinite(member_residuals(history.value, history.expected, np.zeros(len(group.members)))).all(
        axis=1
    )
    every = retrain_every_points(history.ts)
    if detectors:
        newest = detectors[-1][0]
        since_newest = int((history.ts > newest).sum())
        cutoffs = [int(history.ts.searchsorted(upto, side="right"))] if since_newest >= every else []
    else:
        complete = np.cumsum(residuals_ok)
        first = int(np.searchsorted(complete, config.min_train_points)) + 1
        cutoffs = list(range(first, len(history) + 1, every))
    fitted, shortfall = [], ""
    for cutoff in cutoffs:
        start = max(0, cutoff - config.train_window_points)
        value, expected = history.value[start:cutoff], history.expected[start:cutoff]
        log_space = positive_members(value, expected)
        residuals = member_residuals(value, expected, np.broadcast_to(log_space, value.shape))
        detector = GroupDetector(group.members, config)
        try:
            detector.fit(residuals, log_space)
        except InsufficientGroupHistory as error:
            shortfall = str(error)
            continue
        end = history.ts[cutoff - 1]
        fitted.append((end, end.strftime(VERSION_FORMAT), detector))
    if not cutoffs and not detectors:
        shortfall = f"{int(residuals_ok.sum())} timestamps with every member scored, need {config.min_train_points}"
    return fitted, shortfall


def _component_rows(new: _Members, component: np.ndarray, z: np.ndarray, judged: np.ndarray) -> pd.DataFrame:
    """Long rows (kpi, ts, multivariate_score, multivariate_z) of the judged points that exist."""
    parts = []
    for j, kpi in enumerate(new.members):
        present = judged & np.isfinite(new.value[:, j]) | judged & np.isfinite(new.expected[:, j])
        parts.append(
            pd.DataFrame(
                {
                    "kpi": kpi,
                    "ts": new.ts[present],
                    "multivariate_score": component[present, j],
                    "multivariate_z": z[present, j],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _with_components(
    history: _Members, new: _Members, component: np.ndarray, z: np.ndarray, judged: np.ndarray
) -> _Members:
    """``history`` with the new points' group components as just judged (stored ones before)."""
    mv_score, mv_z = history.mv_score.copy(), history.mv_z.copy()
    rows = history.ts.get_indexer(new.ts[judged])
    mv_score[rows], mv_z[rows] = component[judged], z[judged]
    return _Members(history.ts, history.value, history.expected, mv_score, mv_z, history.members)


def _events_from(group: KpiGroup, members: _Members, config: GroupConfig, first_new: pd.Timestamp) -> pd.DataFrame:
    """The group events that hold a point from ``first_new`` on, from the stored components:
    a timestamp fired where a member's component reaches 0.5."""
    fired_score = np.nan_to_num(np.nanmax(np.where(np.isfinite(members.mv_score), members.mv_score, 0.0), axis=1))
    moved = np.nan_to_num(members.mv_score) >= 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = members.value / members.expected - 1.0
    events = group_events(
        group.name,
        members.ts,
        fired_score,
        np.nan_to_num(members.mv_z),
        relative,
        members.members,
        moved,
        config.event_merge_gap,
    )
    return events[events["end"] >= first_new].reset_index(drop=True)


def _model_row(
    group: KpiGroup, detector: GroupDetector, end: pd.Timestamp, version: str, trained_at, step: pd.Timedelta | None
) -> dict:
    return {
        "version": version,
        "trained_at": trained_at,
        "train_start": None,
        "train_end": end,
        "n_points": detector.n_train_points_,
        "members": list(group.members),
        "params": {**detector._config.to_dict(), "step_seconds": None if step is None else step.total_seconds()},
        "artifact": detector.to_artifact(),
    }


def _describe(result: GroupUpdate) -> str:
    if result.status != "judged":
        return f"{result.status} {result.detail}".strip()
    text = f"judged {result.judged} timestamps, {result.fired} fired, {result.events} events written"
    if result.versions:
        text += f"; trained {len(result.versions)} versions"
    return text


# -- suggestions ------------------------------------------------------------------------------


def suggest_groups(scores: pd.DataFrame, threshold: float = 0.3, min_points: int = 168) -> list[KpiGroup]:
    """Groups of KPIs whose residuals (value against expected, from their stored scores)
    correlate: KPIs linked by a robust correlation of at least ``threshold`` (Spearman's, on
    the timestamps both have), joined transitively; each KPI in one group, groups of at least
    two, named after their first member."""
    rows = scores[np.isfinite(scores["value"]) & np.isfinite(scores["expected"])]
    if rows.empty:
        return []
    wide_value = rows.pivot(index="ts", columns="kpi", values="value")
    wide_expected = rows.pivot(index="ts", columns="kpi", values="expected")
    log_space = positive_members(wide_value.to_numpy(dtype=float), wide_expected.to_numpy(dtype=float))
    residuals = pd.DataFrame(
        member_residuals(wide_value.to_numpy(dtype=float), wide_expected.to_numpy(dtype=float), log_space),
        index=wide_value.index,
        columns=wide_value.columns,
    )
    residuals = _clip_outliers(residuals)
    correlation = residuals.corr(method="spearman", min_periods=min_points)
    kpis = list(correlation.columns)
    parent = {kpi: kpi for kpi in kpis}

    def root(kpi: str) -> str:
        while parent[kpi] != kpi:
            kpi = parent[kpi]
        return kpi

    for i, a in enumerate(kpis):
        for b in kpis[i + 1 :]:
            if abs(correlation.loc[a, b]) >= threshold:
                parent[root(b)] = root(a)
    clusters: dict[str, list[str]] = {}
    for kpi in kpis:
        clusters.setdefault(root(kpi), []).append(kpi)
    found = [sorted(members) for members in clusters.values() if len(members) >= 2]
    return [KpiGroup(members[0], tuple(members)) for members in sorted(found)]


def _clip_outliers(residuals: pd.DataFrame) -> pd.DataFrame:
    """Residuals clipped at 5 robust standard deviations: incidents must not make KPIs
    look related."""
    center = residuals.median()
    spread = ROBUST_SCALE * (residuals - center).abs().median()
    return residuals.clip(center - 5 * spread, center + 5 * spread, axis=1)
