"""Per-KPI training and scoring: the steps behind the Dagster assets, as plain functions.

This module joins the store and the detection library and imports no Dagster, so the asset
graph, the CLI and the tests all run the same code. Both steps work on the cleaned series and
keep the no-look-ahead rule: a model is trained on a prefix of a series, and a point is scored
only by a model whose training window ended strictly before it. Training cleans everything
stored (``load_cleaned``); scoring cleans only the new points and the context before them
(``load_scoring_window``), so its cost grows with new points, not with history.

Model versions are the end of their training window formatted as ``VERSION_FORMAT``, so
retraining on the same data rewrites the same registry rows instead of adding new ones.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector, InsufficientHistory
from kpi_pipeline.detection.events import assign_events, open_event_from, summarize_events
from kpi_pipeline.detection.features import build_features
from kpi_pipeline.detection.preprocess import Grid, clean_observations
from kpi_pipeline.detection.walkforward import (
    initial_training_points,
    retrain_every_points,
    score_segment,
    training_cutoffs,
)
from kpi_pipeline.ingestion import IngestResult

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"

CONFIDENT_SEVERITIES = store.SEVERITIES[store.SEVERITIES.index("high") :]
"""Anomalies this severe are kept out of later training sets, unless marked false positives."""

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


def open_store(url: str | None = None) -> sa.Engine:
    """An engine on ``url`` (default: the configured database) with the schema up to date."""
    engine = store.make_engine(url)
    store.migrate(engine)
    return engine


def store_ingested(engine: sa.Engine, result: IngestResult, source: str) -> store.UpsertCounts:
    """Write a validated input: observations upserted, its rejected rows recorded."""
    counts = store.upsert_observations(engine, result.observations, source)
    rejections = [
        {"line": r.line, "raw": r.raw, "reason": r.reason, "source": source}
        for r in result.rejections
    ]
    store.insert_rejections(engine, rejections)
    return counts


def load_cleaned(engine: sa.Engine) -> tuple[pd.DataFrame, dict[str, pd.Timedelta]]:
    """Every stored observation, cleaned: ``(kpi, ts, value, filled, gap)`` rows and each step."""
    return clean_observations(store.load_observations(engine))


SCORING_SLACK_POINTS = 24
"""Grid points read before the context a scoring window needs. Cleaning a window differs from
cleaning the whole series only in its first ``max_fill_periods + 1`` slots (see
``clean_observations``); the slack keeps those out of the context."""


def load_scoring_window(engine: sa.Engine) -> pd.DataFrame:
    """The cleaned points ``score_new_points`` needs, and no more.

    Per KPI: the points after its last scored one, preceded by the context its newest model
    scores with plus ``SCORING_SLACK_POINTS``; with no new points, only the last scored point.
    The window is cleaned on the grid the model was trained on (the series' first timestamp and
    the model's step), so the rows read are bounded by new points + context whatever the length
    of the history, and the scores come out as if the whole series had been cleaned. A KPI
    never scored (or without a model) is read whole: all of its points are new.
    """
    last_scored = store.last_scored_ts(engine)
    newest = store.load_latest_models(engine, "ensemble")
    parts, grids = [], {}
    for span in store.observation_spans(engine).itertuples(index=False):
        kpi, scored_until, model = span.kpi, last_scored.get(span.kpi), newest.get(span.kpi)
        if scored_until is None or model is None:
            parts.append(store.load_observations(engine, [kpi]))
        elif span.last_ts <= scored_until:
            parts.append(store.load_observations_from(engine, kpi, scored_until))
        else:
            # The registered ensemble row holds the detector without its fitted components:
            # enough to know its grid step and how many earlier points scoring needs.
            detector: EnsembleDetector = pickle.loads(model.artifact)
            grids[kpi] = Grid(span.first_ts, detector.freq_)
            reach = (detector.context_points + SCORING_SLACK_POINTS) * detector.freq_
            parts.append(store.load_observations_from(engine, kpi, scored_until - reach))
    observations = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["kpi", "ts", "value"]
    )
    return clean_observations(observations, grids=grids)[0]


def feature_table(
    cleaned: pd.DataFrame, frequencies: dict[str, pd.Timedelta], country: str
) -> pd.DataFrame:
    """The seed feature set of every KPI, long shape: ``kpi, ts, value`` then the features."""
    parts = [
        pd.concat(
            [
                rows[["kpi", "ts", "value"]].reset_index(drop=True),
                build_features(rows["ts"], rows["value"], frequencies.get(str(kpi)), country),
            ],
            axis=1,
        )
        for kpi, rows in cleaned.groupby("kpi", sort=True)
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# -- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiTraining:
    """What training did for one KPI."""

    kpi: str
    status: str
    """``trained``, ``up to date`` (no scored point newer than its newest model) or
    ``insufficient history``."""
    versions: tuple[str, ...] = ()
    """Versions written in this run, oldest first."""
    detail: str = ""


def train_models(
    engine: sa.Engine,
    cleaned: pd.DataFrame,
    config: DetectorConfig,
    *,
    trained_at: pd.Timestamp | None = None,
    progress: Progress = _quiet,
) -> list[KpiTraining]:
    """Train and register models for every KPI of ``cleaned``.

    A KPI without models gets walk-forward versions (one per training cutoff, each trained on
    the points before it), so its history can be scored without look-ahead. A KPI with models
    gets one new version (the nightly retrain) on every point scored so far, once points newer
    than its newest model have been scored. Training only on scored points means the skipped
    points (confident anomalies, confirmed incidents) are known for every point it uses; new
    points are scored by the newest earlier version either way. A KPI with too little history
    is reported, not raised.
    """
    trained_at = trained_at if trained_at is not None else pd.Timestamp.now("UTC")
    newest_models = store.load_latest_models(engine, "ensemble")
    last_scored = store.last_scored_ts(engine)
    excluded = training_exclusions(engine)
    results = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        kpi = str(kpi)
        ts = pd.DatetimeIndex(rows["ts"])
        newest = newest_models.get(kpi)
        if newest is None:
            cutoffs = _walk_forward_cutoffs(ts, config)
        else:
            cutoffs = _retrain_cutoff(ts, newest, last_scored.get(kpi))
        if cutoffs:
            result = _train_kpi(engine, kpi, rows, cutoffs, excluded.get(kpi), config, trained_at)
        elif newest is None:
            shortfall = f"{len(ts)} points, need more than {config.min_train_points}"
            result = KpiTraining(kpi, "insufficient history", detail=shortfall)
        else:
            result = KpiTraining(kpi, "up to date")
        progress(f"{kpi}: {_describe_training(result)}")
        results.append(result)
    return results


def training_exclusions(engine: sa.Engine) -> dict[str, pd.DatetimeIndex]:
    """Per KPI, the points training skips: confident anomalies and points confirmed as incidents.

    An analyst's ``false_positive`` label puts a confident anomaly back into training.
    """
    flagged = store.load_anomalies(engine)
    confident = flagged["severity"].isin(CONFIDENT_SEVERITIES) & (
        flagged["feedback"] != "false_positive"
    )
    confirmed = flagged["feedback"] == "true_positive"
    skipped = flagged[confident | confirmed]
    return {str(kpi): pd.DatetimeIndex(rows["ts"]) for kpi, rows in skipped.groupby("kpi")}


def _train_kpi(
    engine: sa.Engine,
    kpi: str,
    rows: pd.DataFrame,
    cutoffs: list[int],
    excluded: pd.DatetimeIndex | None,
    config: DetectorConfig,
    trained_at: pd.Timestamp,
) -> KpiTraining:
    """Train and register a version at each cutoff of one KPI."""
    ts = pd.DatetimeIndex(rows["ts"])
    values = rows["value"].to_numpy(dtype=float)
    exclude = ts.isin(excluded) if excluded is not None else np.zeros(len(ts), dtype=bool)
    versions, shortfall = [], ""
    for end in cutoffs:
        detector = EnsembleDetector(config)
        try:
            detector.fit(ts[:end], values[:end], exclude=exclude[:end])
        except InsufficientHistory as error:
            shortfall = str(error)
            continue
        versions.append(_register(engine, kpi, detector, ts[end - 1], trained_at))
    if not versions:
        return KpiTraining(kpi, "insufficient history", detail=shortfall)
    return KpiTraining(kpi, "trained", tuple(versions))


def _walk_forward_cutoffs(ts: pd.DatetimeIndex, config: DetectorConfig) -> list[int]:
    """Positions p at which a new KPI gets a version trained on points ``[0, p)``."""
    initial = initial_training_points(len(ts), config.min_train_points)
    return training_cutoffs(len(ts), initial, retrain_every_points(ts))


def _retrain_cutoff(
    ts: pd.DatetimeIndex, newest: store.ModelRecord, last_scored: pd.Timestamp | None
) -> list[int]:
    """The nightly retrain's cutoff: every scored point, if some are newer than ``newest``."""
    scored = 0 if last_scored is None else int(ts.searchsorted(last_scored, side="right"))
    return [scored] if scored and ts[scored - 1] > newest.train_end else []


def _register(
    engine: sa.Engine,
    kpi: str,
    detector: EnsembleDetector,
    train_end: pd.Timestamp,
    trained_at: pd.Timestamp,
) -> str:
    """Save each artifact of ``detector`` as a registry row; returns the version.

    ``train_end`` is the end of the training window rather than the last point actually used,
    so excluded or missing trailing points can never let a model score a point it could see.
    """
    version = train_end.strftime(VERSION_FORMAT)
    # to_artifacts yields the ensemble row last; scoring looks versions up by it, so a version
    # only becomes visible once all of its rows are written.
    for kind, artifact in detector.to_artifacts().items():
        store.save_model(
            engine,
            kpi=kpi,
            kind=kind,
            version=version,
            trained_at=trained_at,
            train_start=detector.train_start_,
            train_end=train_end,
            n_points=detector.n_train_points_,
            params=detector.config.to_dict(),
            metrics=detector.metrics_,
            artifact=artifact,
        )
    return version


def _describe_training(result: KpiTraining) -> str:
    if result.status != "trained":
        return f"{result.status} {result.detail}".strip()
    if len(result.versions) == 1:
        return f"trained version {result.versions[0]}"
    first, last = result.versions[0], result.versions[-1]
    return f"trained {len(result.versions)} versions ({first} .. {last})"


# -- scoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiScoring:
    """What scoring did for one KPI."""

    kpi: str
    scored: int
    """New points scored and written."""
    anomalies: int
    unscored: int
    """New points left unscored because no model was trained before them."""
    versions: tuple[str, ...] = ()
    """Model versions that scored them."""


def score_new_points(
    engine: sa.Engine,
    cleaned: pd.DataFrame,
    *,
    since: pd.Timestamp | None = None,
    scored_at: pd.Timestamp | None = None,
    progress: Progress = _quiet,
) -> list[KpiScoring]:
    """Score every point newer than the KPI's last scored one with the stored models.

    Nothing is fitted here. Each point gets the newest version trained strictly before it;
    points before the first model stay unscored (insufficient history), and so do points before
    ``since`` if given. Events continue the event left open by the previous batch. ``cleaned``
    holds each KPI's whole series or, as ``load_scoring_window`` reads it, its new points and
    the context before them.
    """
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now("UTC")
    last_scored = store.last_scored_ts(engine)
    results = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        kpi = str(kpi)
        ts = pd.DatetimeIndex(rows["ts"])
        first_new = 0 if kpi not in last_scored else int(ts.searchsorted(last_scored[kpi], "right"))
        if since is not None:
            first_new = max(first_new, int(ts.searchsorted(since, "left")))
        result = _score_kpi(engine, kpi, rows, first_new, scored_at)
        progress(f"{kpi}: {_describe_scoring(result)}")
        results.append(result)
    return results


def _score_kpi(
    engine: sa.Engine, kpi: str, rows: pd.DataFrame, first_new: int, scored_at: pd.Timestamp
) -> KpiScoring:
    new_points = len(rows) - first_new
    if new_points == 0:
        return KpiScoring(kpi, 0, 0, 0)
    scores, merge_gap = _score_with_stored_models(engine, kpi, rows, first_new)
    if scores.empty:
        return KpiScoring(kpi, 0, 0, new_points)
    open_event = None
    if first_new > 0:
        recent = _recent_scores(engine, kpi, rows, first_new, merge_gap)
        open_event = open_event_from(recent, merge_gap)
    scores["event_id"], _alerts = assign_events(
        kpi, pd.DatetimeIndex(scores["ts"]), scores["is_anomaly"].to_numpy(), merge_gap, open_event
    )
    store.upsert_scores(engine, scores.assign(kpi=kpi, scored_at=scored_at))
    return KpiScoring(
        kpi,
        scored=len(scores),
        anomalies=int(scores["is_anomaly"].sum()),
        unscored=new_points - len(scores),
        versions=tuple(scores["model_version"].unique()),
    )


def _score_with_stored_models(
    engine: sa.Engine, kpi: str, rows: pd.DataFrame, first_new: int
) -> tuple[pd.DataFrame, int]:
    """Scores of the points from ``first_new`` on that some model may score, with the version
    used; and the event merge gap of the newest model used (0 rows if no model applies)."""
    ts = pd.DatetimeIndex(rows["ts"])
    values = rows["value"].to_numpy(dtype=float)
    gap = rows["gap"].to_numpy(dtype=bool)
    models = [m for m in store.load_model_versions(engine, kpi, "ensemble") if m.train_end]
    train_ends = pd.DatetimeIndex([model.train_end for model in models], tz="UTC")
    # Index of the newest model whose training window ended strictly before each point.
    model_of = train_ends.searchsorted(ts[first_new:], side="left") - 1
    used = np.unique(model_of[model_of >= 0])
    if len(used) == 0:
        return pd.DataFrame(), 0
    detectors = _detectors(engine, kpi, [models[index] for index in used])
    parts = []
    for index in used:
        model = models[index]
        # model_of never decreases with time, so each model scores one contiguous segment.
        positions = first_new + np.flatnonzero(model_of == index)
        segment = score_segment(
            detectors[model.version], ts, values, gap, positions[0], positions[-1] + 1
        )
        parts.append(segment.assign(model_version=model.version))
    merge_gap = detectors[models[used[-1]].version].config.event_merge_gap
    return pd.concat(parts, ignore_index=True), merge_gap


def _detectors(
    engine: sa.Engine, kpi: str, models: list[store.ModelRecord]
) -> dict[str, EnsembleDetector]:
    """The fitted detectors of registered ensemble versions, rebuilt from their rows."""
    wanted = {model.version for model in models}
    components = {
        kind: _component_rows(engine, kpi, kind, wanted)
        for kind in EnsembleDetector.COMPONENT_KINDS
    }
    detectors = {}
    for model in models:
        artifacts = {"ensemble": model.artifact}
        for kind, rows in components.items():
            if model.version not in rows:
                raise LookupError(f"model {kpi} {model.version} has no {kind} artifact")
            artifacts[kind] = rows[model.version].artifact
        detectors[model.version] = EnsembleDetector.from_artifacts(artifacts)
    return detectors


def _component_rows(
    engine: sa.Engine, kpi: str, kind: str, versions: set[str]
) -> dict[str, store.ModelRecord]:
    """Registry rows of ``kind`` for ``versions``.

    Component artifacts are large (an Isolation Forest is ~1 MB), so the usual case, only the
    newest version, reads one row; older versions need the KPI's whole history of that kind
    until the store can read a single version.
    """
    newest = store.load_latest_models(engine, kind, [kpi]).get(kpi)
    if newest is not None and versions == {newest.version}:
        return {newest.version: newest}
    return {
        record.version: record
        for record in store.load_model_versions(engine, kpi, kind)
        if record.version in versions
    }


def _recent_scores(
    engine: sa.Engine, kpi: str, rows: pd.DataFrame, first_new: int, merge_gap: int
) -> pd.DataFrame:
    """The stored scores an open event may still continue from: the last ``merge_gap + 1``."""
    ts = rows["ts"]
    since = ts.iloc[max(0, first_new - merge_gap - 1)]
    return store.load_scores(engine, [kpi], since=since, until=ts.iloc[first_new - 1])


def _describe_scoring(result: KpiScoring) -> str:
    if result.scored == 0 and result.unscored == 0:
        return "no new points"
    parts = []
    if result.scored:
        parts.append(f"scored {result.scored} points, {result.anomalies} anomalous")
    if result.unscored:
        parts.append(f"{result.unscored} points unscored (insufficient history)")
    return "; ".join(parts)


# -- events ---------------------------------------------------------------------------------


def anomaly_events(engine: sa.Engine) -> pd.DataFrame:
    """One row per anomaly event across all KPIs, newest first (see ``summarize_events``)."""
    return summarize_events(store.load_anomalies(engine))


# -- backfill -------------------------------------------------------------------------------


def backfill(
    engine: sa.Engine,
    config: DetectorConfig,
    since: pd.Timestamp,
    until: pd.Timestamp,
    *,
    kpis: list[str] | None = None,
    retrain_every: pd.Timedelta = pd.Timedelta(days=1),
    progress: Progress = _quiet,
) -> list[KpiScoring]:
    """Train and score the points with ``since <= ts <= until`` as the schedules would have.

    KPIs without models first get walk-forward versions over their history up to ``until``.
    Then the range is replayed in steps of ``retrain_every``: score the step's new points, then
    retrain on everything scored so far (the daily retrain). No point after ``until`` is read,
    so nothing looks ahead; points before ``since`` stay unscored, points already scored are
    left alone. Returns the points scored per KPI.
    """
    cleaned, _ = load_cleaned(engine)
    if kpis is not None:
        cleaned = cleaned[cleaned["kpi"].isin(kpis)]
    cleaned = cleaned[cleaned["ts"] <= until]
    if cleaned.empty:
        return []
    untrained = sorted(set(cleaned["kpi"]) - store.trained_kpis(engine))
    if untrained:
        progress(f"walk-forward training of {', '.join(untrained)} up to {until}")
        train_models(engine, cleaned[cleaned["kpi"].isin(untrained)], config, progress=progress)
    totals: dict[str, KpiScoring] = {}
    start = max(since, cleaned["ts"].min())
    for end in _step_ends(start, until, retrain_every):
        part = cleaned[cleaned["ts"] <= end]
        step = score_new_points(engine, part, since=since)
        train_models(engine, part, config)
        for result in step:
            totals[result.kpi] = _add_scoring(totals.get(result.kpi), result)
        scored = sum(r.scored for r in step)
        progress(f"up to {end}: scored {scored} points, {sum(r.anomalies for r in step)} anomalous")
    return [totals[kpi] for kpi in sorted(totals)]


def _step_ends(start: pd.Timestamp, until: pd.Timestamp, every: pd.Timedelta) -> list[pd.Timestamp]:
    """``start + every``, ``start + 2 * every``, ... and ``until`` itself last."""
    if every <= pd.Timedelta(0):
        raise ValueError(f"retrain interval must be positive, not {every}")
    ends, end = [], start + every
    while end < until:
        ends.append(end)
        end += every
    return [*ends, until]


def _add_scoring(total: KpiScoring | None, step: KpiScoring) -> KpiScoring:
    if total is None:
        return step
    versions = tuple(dict.fromkeys(total.versions + step.versions))
    return KpiScoring(
        step.kpi,
        scored=total.scored + step.scored,
        anomalies=total.anomalies + step.anomalies,
        unscored=total.unscored + step.unscored,
        versions=versions,
    )


# -- data quality ---------------------------------------------------------------------------

QUALITY_COLUMNS = [
    "kpi", "last_ts", "frequency", "age", "duplicate_timestamps", "recent_points", "missing_points"
]


def data_quality(
    engine: sa.Engine, *, recent_points: int, now: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Per KPI, what the data-quality checks judge.

    ``last_ts`` / ``age``: the newest observation and how old it is at ``now``; ``frequency``:
    the inferred sampling interval (NaT for a single point); ``duplicate_timestamps``: stored
    observations that fall on a grid slot another one already holds (e.g. 10:00 and 10:00:30
    in an hourly series), which cleaning averages away; ``missing_points``: points of the
    last ``recent_points`` grid slots with no observation (interpolated or a gap).
    """
    now = now if now is not None else pd.Timestamp.now("UTC")
    observations = store.load_observations(engine)
    cleaned, frequencies = clean_observations(observations)
    rows = []
    for kpi, raw in observations.groupby("kpi", sort=True):
        kpi = str(kpi)
        frequency = frequencies.get(kpi)
        recent = cleaned[cleaned["kpi"] == kpi].tail(recent_points)
        last = raw["ts"].max()
        rows.append(
            {
                "kpi": kpi,
                "last_ts": last,
                "frequency": frequency if frequency is not None else pd.NaT,
                "age": now - last,
                "duplicate_timestamps": _grid_collisions(raw["ts"], frequency),
                "recent_points": len(recent),
                "missing_points": int((recent["filled"] | recent["gap"]).sum()),
            }
        )
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)


def _grid_collisions(ts: pd.Series, frequency: pd.Timedelta | None) -> int:
    """Timestamps that snap to a grid slot already taken (the grid cleaning puts them on)."""
    if frequency is None:
        return 0
    slots = ((ts - ts.min()) / frequency).round()
    return int(len(slots) - slots.nunique())
