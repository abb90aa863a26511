"""Per-KPI training and scoring: the steps behind the Dagster assets, as plain functions.

This module joins the store and the detection library and imports no Dagster, so the asset
graph, the CLI and the tests all run the same code. Both steps work on the cleaned series and
keep the no-look-ahead rule: a model is trained on a prefix of a series, and a point is scored
only by a model whose training window ended strictly before it. Training cleans everything
stored (``load_cleaned``); scoring cleans only the new points and the context before them
(``load_scoring_window``), so its cost grows with new points, not with history. Real-time
scoring (``api/realtime.py``, behind the API's ``POST /v1/score``) is that scoring step on
submitted points: the same detector rebuild (``load_detector``), window and grid, nothing
written.

Model versions are the end of their training window formatted as ``VERSION_FORMAT``, so
retraining on the same data rewrites the same registry rows instead of adding new ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.detection.ensemble import (
    DetectorConfig,
    EnsembleDetector,
    InsufficientHistory,
    confident_anomalies,
)
from kpi_pipeline.detection.events import assign_events, open_event_from, summarize_events
from kpi_pipeline.detection.preprocess import (
    Grid,
    clean_observations,
)
from kpi_pipeline.detection.walkforward import history_cutoffs, score_segment, walk_forward
from kpi_pipeline.errors import describe_error
from kpi_pipeline.ingestion import IngestResult

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"


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


def load_cleaned(
    engine: sa.Engine, kpis: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, pd.Timedelta]]:
    """Every stored observation (of ``kpis``, if given), cleaned: ``(kpi, ts, value, filled,
    gap)`` rows and each KPI's step."""
    return clean_observations(store.load_observations(engine, kpis))


SCORING_SLACK_POINTS = 24
"""Grid points read before the context a scoring window needs. Cleaning a window differs from
cleaning the whole series only in its first ``max_fill_periods + 1`` slots (see
``clean_observations``); the slack keeps those out of the context."""


INCREMENTAL_MAX_SLOTS = 48
"""Real-time scoring judges the slots after a KPI's newest observation one by one (from the
judged tail) up to this many; more are judged with whole-window arithmetic, which is faster
for long stretches. It forecasts these slots in one go when it reads the observations, so that
scoring them needs no forecast (which can take milliseconds)."""


def scoring_reach(detector: EnsembleDetector) -> pd.Timedelta:
    """How far before the first point to score a scoring window reads: the detector's context
    and ``SCORING_SLACK_POINTS``, in steps of its grid."""
    return (detector.context_points + SCORING_SLACK_POINTS) * detector.freq_


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
            detector = EnsembleDetector.shell_from_artifact(model.artifact)
            grids[kpi] = Grid(span.first_ts, detector.freq_)
            parts.append(
                store.load_observations_from(engine, kpi, scored_until - scoring_reach(detector))
            )
    observations = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["kpi", "ts", "value"]
    )
    return clean_observations(observations, grids=grids)[0]


# -- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiTraining:
    """What training did for one KPI."""

    kpi: str
    status: str
    """``trained``, ``up to date`` (no scored point newer than its newest model),
    ``insufficient history`` or ``failed`` (an unexpected error, in ``detail``; the next run
    tries again)."""
    versions: tuple[str, ...] = ()
    """Versions written in this run, oldest first."""
    detail: str = ""
    pruned: tuple[str, ...] = ()
    """Versions deleted in this run because they can score nothing any more
    (``prune_models``), oldest first."""


def train_models(
    engine: sa.Engine,
    cleaned: pd.DataFrame,
    config: DetectorConfig,
    *,
    trained_at: pd.Timestamp | None = None,
    rescore_horizon: pd.Timedelta | None = None,
    progress: Progress = _quiet,
) -> list[KpiTraining]:
    """Train and register models for every KPI of ``cleaned``, then prune the versions that
    can score nothing any more (``prune_models``; ``rescore_horizon`` None: keep them all).

    A KPI without models has its history walked forward exactly as ``evaluate`` walks a series
    (``walkforward.walk_forward``): a version per training cutoff, each trained on the points
    before it without the confident anomalies that earlier versions found; all of its versions
    are registered in one transaction. A KPI with models gets one new version (the nightly
    retrain) on every point scored so far, once points newer than its newest model have been
    scored. Training only on scored points means the skipped points (confident anomalies,
    confirmed incidents) are known for every point it uses; new points are scored by the newest
    earlier version either way. A KPI with too little history is reported, not raised.
    """
    trained_at = trained_at if trained_at is not None else pd.Timestamp.now("UTC")
    newest_models = store.load_latest_models(engine, "ensemble")
    last_scored = store.last_scored_ts(engine)
    excluded = training_exclusions(engine, config)
    results = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        kpi = str(kpi)
        ts = pd.DatetimeIndex(rows["ts"])
        exclude = ts.isin(excluded[kpi]) if kpi in excluded else np.zeros(len(ts), dtype=bool)
        newest = newest_models.get(kpi)
        try:
            if newest is None:
                result = _train_history(engine, kpi, rows, exclude, config, trained_at)
            else:
                cutoff = _retrain_cutoff(ts, newest, last_scored.get(kpi))
                if cutoff:
                    result = _retrain(engine, kpi, rows, cutoff, exclude, config, trained_at)
                else:
                    result = KpiTraining(kpi, "up to date")
            if rescore_horizon is not None:
                pruned = prune_models(engine, kpi, last_scored.get(kpi), rescore_horizon)
                result = dataclasses.replace(result, pruned=pruned)
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            result = KpiTraining(kpi, "failed", detail=describe_error(error))
        progress(f"{kpi}: {_describe_training(result)}")
        results.append(result)
    return results


def prune_models(
    engine: sa.Engine, kpi: str, last_scored: pd.Timestamp | None, rescore_horizon: pd.Timedelta
) -> tuple[str, ...]:
    """Delete the versions of ``kpi`` that can score nothing any more; returns them.

    Scoring gives each point the newest version trained strictly before it. Kept: every version
    that can score a point after ``last_scored - rescore_horizon`` (the points not scored yet,
    and those a backfill or re-scoring within the horizon may score again), which includes the
    newest. A KPI never scored keeps everything: its walk-forward versions are about to score
    its history. Per KPI this keeps the versions trained within the horizon, plus one.
    """
    if last_scored is None:
        return ()
    return tuple(store.prune_model_versions(engine, kpi, last_scored - rescore_horizon))


def training_exclusions(
    engine: sa.Engine, config: DetectorConfig
) -> dict[str, pd.DatetimeIndex]:
    """Per KPI, the points training skips: confident anomalies (``confident_anomalies``, as the
    walk-forward decides them) and points confirmed as incidents.

    An analyst's ``false_positive`` label puts a confident anomaly back into training.
    """
    flagged = store.load_anomalies(engine)
    confident = confident_anomalies(flagged, config) & (
        flagged["feedback"] != "false_positive"
    ).to_numpy()
    confirmed = (flagged["feedback"] == "true_positive").to_numpy()
    skipped = flagged[confident | confirmed]
    return {str(kpi): pd.DatetimeIndex(rows["ts"]) for kpi, rows in skipped.groupby("kpi")}


def _train_history(
    engine: sa.Engine,
    kpi: str,
    rows: pd.DataFrame,
    exclude: np.ndarray,
    config: DetectorConfig,
    trained_at: pd.Timestamp,
) -> KpiTraining:
    """Walk a new KPI's history forward and register every version it fitted, atomically."""
    ts = pd.DatetimeIndex(rows["ts"])
    cutoffs = history_cutoffs(ts, config)
    if not cutoffs:
        shortfall = f"{len(ts)} points, need more than {config.min_train_points}"
        return KpiTraining(kpi, "insufficient history", detail=shortfall)
    walked = walk_forward(
        ts, rows["value"].to_numpy(dtype=float), cutoffs, config,
        gap=rows["gap"].to_numpy(dtype=bool), exclude=exclude,
    )
    if not walked.models:
        return KpiTraining(kpi, "insufficient history", detail=walked.skipped[-1][1])
    versions = _register(
        engine, kpi, [(detector, ts[end - 1]) for end, detector in walked.models], trained_at
    )
    return KpiTraining(kpi, "trained", versions)


def _retrain(
    engine: sa.Engine,
    kpi: str,
    rows: pd.DataFrame,
    end: int,
    exclude: np.ndarray,
    config: DetectorConfig,
    trained_at: pd.Timestamp,
) -> KpiTraining:
    """The nightly retrain of a KPI with models: one version on its first ``end`` points."""
    ts = pd.DatetimeIndex(rows["ts"])
    detector = EnsembleDetector(config)
    try:
        detector.fit(ts[:end], rows["value"].to_numpy(dtype=float)[:end], exclude=exclude[:end])
    except InsufficientHistory as error:
        return KpiTraining(kpi, "insufficient history", detail=str(error))
    return KpiTraining(kpi, "trained", _register(engine, kpi, [(detector, ts[end - 1])], trained_at))


def _retrain_cutoff(
    ts: pd.DatetimeIndex, newest: store.ModelRecord, last_scored: pd.Timestamp | None
) -> int:
    """The nightly retrain's cutoff: every scored point, if some are newer than ``newest``
    (0: nothing to retrain)."""
    scored = 0 if last_scored is None else int(ts.searchsorted(last_scored, side="right"))
    return scored if scored and ts[scored - 1] > newest.train_end else 0


def _register(
    engine: sa.Engine,
    kpi: str,
    fitted: list[tuple[EnsembleDetector, pd.Timestamp]],
    trained_at: pd.Timestamp,
) -> tuple[str, ...]:
    """Save each artifact of each ``(detector, train_end)`` as registry rows in one
    transaction; returns the versions.

    ``train_end`` is the end of the training window rather than the last point actually used,
    so excluded or missing trailing points can never let a model score a point it could see.
    """
    rows = [
        dict(
            kpi=kpi,
            kind=kind,
            version=train_end.strftime(VERSION_FORMAT),
            trained_at=trained_at,
            train_start=detector.train_start_,
            train_end=train_end,
            n_points=detector.n_train_points_,
            params=detector.config.to_dict(),
            metrics=detector.metrics_,
            artifact=artifact,
        )
        for detector, train_end in fitted
        for kind, artifact in detector.to_artifacts().items()
    ]
    store.save_models(engine, rows)
    return tuple(train_end.strftime(VERSION_FORMAT) for _, train_end in fitted)


def _describe_training(result: KpiTraining) -> str:
    if result.status != "trained":
        text = f"{result.status} {result.detail}".strip()
    elif len(result.versions) == 1:
        text = f"trained version {result.versions[0]}"
    else:
        first, last = result.versions[0], result.versions[-1]
        text = f"trained {len(result.versions)} versions ({first} .. {last})"
    return text + (f"; pruned {len(result.pruned)} old versions" if result.pruned else "")


# -- scoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiScoring:
    """What scoring did for one KPI."""

    kpi: str
    scored: int
    """New points scored and written."""
    anomalies: int
    """Anomalous points among them, outages apart."""
    unscored: int
    """New points left unscored because no model was trained before them."""
    versions: tuple[str, ...] = ()
    """Model versions that scored them."""
    error: str = ""
    """Why scoring this KPI failed (nothing was written for it; the next run tries again)."""
    outages: int = 0
    """Outages that began among them (long stretches of missing data, one anomalous point
    flagged ``gap`` each)."""


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
        try:
            result = _score_kpi(engine, kpi, rows, first_new, scored_at)
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            result = KpiScoring(kpi, 0, 0, len(rows) - first_new, error=describe_error(error))
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
    outages = int((scores["flagged_by"] == "gap").sum())
    return KpiScoring(
        kpi,
        scored=len(scores),
        anomalies=int(scores["is_anomaly"].sum()) - outages,
        unscored=new_points - len(scores),
        versions=tuple(scores["model_version"].unique()),
        outages=outages,
    )


def _score_with_stored_models(
    engine: sa.Engine, kpi: str, rows: pd.DataFrame, first_new: int
) -> tuple[pd.DataFrame, int]:
    """Scores of the points from ``first_new`` on that some model may score, with the version
    used; and the event merge gap of the newest model used (0 rows if no model applies)."""
    ts = pd.DatetimeIndex(rows["ts"])
    values = rows["value"].to_numpy(dtype=float)
    gap = rows["gap"].to_numpy(dtype=bool)
    # Only the training windows: the artifacts of the versions used are loaded below.
    versions = store.load_model_versions(engine, kpi, "ensemble", artifacts=False)
    models = [m for m in versions if m.train_end]
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
    return {model.version: load_detector(engine, kpi, model.version) for model in models}


class NoModel(LookupError):
    """The KPI exists but no (complete) model has been trained for it yet."""


def load_detector(engine: sa.Engine, kpi: str, version: str) -> EnsembleDetector:
    """The fitted detector of version ``version`` of ``kpi``'s ensemble, rebuilt from its
    registry rows (about 250 KB of arrays and JSON, docs/models.md)."""
    artifacts = store.model_artifacts(engine, kpi, version)
    missing = [
        kind for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble") if kind not in artifacts
    ]
    if missing:
        raise NoModel(
            f"model {version} of {kpi!r} is incomplete (no {', '.join(missing)} artifact); "
            "retrain it"
        )
    return EnsembleDetector.from_artifacts(artifacts)


def _recent_scores(
    engine: sa.Engine, kpi: str, rows: pd.DataFrame, first_new: int, merge_gap: int
) -> pd.DataFrame:
    """The stored scores an open event may still continue from: the last ``merge_gap + 1``."""
    ts = rows["ts"]
    since = ts.iloc[max(0, first_new - merge_gap - 1)]
    return store.load_scores(engine, [kpi], since=since, until=ts.iloc[first_new - 1])


def _describe_scoring(result: KpiScoring) -> str:
    if result.error:
        return f"failed ({result.error}); {result.unscored} points left for the next run"
    if result.scored == 0 and result.unscored == 0:
        return "no new points"
    parts = []
    if result.scored:
        parts.append(f"scored {result.scored} points, {result.anomalies} anomalous")
    if result.outages:
        parts.append(f"{result.outages} outages (data missing)")
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
    rescore_horizon: pd.Timedelta | None = None,
    progress: Progress = _quiet,
) -> list[KpiScoring]:
    """Train and score the points with ``since <= ts <= until`` as the schedules would have
    (``rescore_horizon``: as ``train_models`` prunes).

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
        train_models(engine, cleaned[cleaned["kpi"].isin(untrained)], config,
                     rescore_horizon=rescore_horizon, progress=progress)
    totals: dict[str, KpiScoring] = {}
    start = max(since, cleaned["ts"].min())
    for end in _step_ends(start, until, retrain_every):
        part = cleaned[cleaned["ts"] <= end]
        step = score_new_points(engine, part, since=since)
        train_models(engine, part, config, rescore_horizon=rescore_horizon)
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
        error=step.error or total.error,
        outages=total.outages + step.outages,
    )
