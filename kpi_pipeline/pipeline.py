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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
from kpi_pipeline.detection.artifacts import DOCUMENT_HEAD
from kpi_pipeline.detection.events import assign_events, open_event_from, summarize_events
from kpi_pipeline.detection.feedback import threshold_raise
from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.preprocess import (
    Grid,
    clean_observations,
    kpi_slices,
)
from kpi_pipeline.detection.walkforward import context_window, history_cutoffs, walk_forward
from kpi_pipeline.errors import describe_error
from kpi_pipeline.ingestion import IngestResult

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"


Progress = Callable[[str], None]
Columns = dict[str, Any]
"""A KPI's scores as columns (``EnsembleDetector.score_columns``), with ``model_version`` and,
once events are assigned, ``event_id``."""


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
    rejections = [{"line": r.line, "raw": r.raw, "reason": r.reason, "source": source} for r in result.rejections]
    store.insert_rejections(engine, rejections)
    return counts


def load_cleaned(engine: sa.Engine, kpis: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, pd.Timedelta]]:
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
    return _reach(detector.freq_, detector.context_points)


def _reach(step: pd.Timedelta, context: int) -> pd.Timedelta:
    """``scoring_reach`` of a detector with grid ``step`` and ``context`` points."""
    return (context + SCORING_SLACK_POINTS) * step


SCORING_CHUNK_KPIS = 500
"""KPIs a scoring run reads and writes together: each chunk costs a fixed number of
statements (its observation windows, newest models, the model versions that score it, the
false positives that raise thresholds, the stored scores open events continue from, and one
upsert), whatever its number of KPIs."""


def load_scoring_window(engine: sa.Engine, chunk_kpis: int = SCORING_CHUNK_KPIS) -> pd.DataFrame:
    """The cleaned points ``score_new_points`` needs, and no more.

    Per KPI: the points after its last scored one, preceded by the context its newest model
    scores with plus ``SCORING_SLACK_POINTS``; with no new points, only the last scored point.
    The window is cleaned on the grid the model was trained on (the series' first timestamp and
    the model's step), so the rows read are bounded by new points + context whatever the length
    of the history, and the scores come out as if the whole series had been cleaned. A KPI
    never scored (or without a model) is read whole: all of its points are new. KPIs are read
    ``chunk_kpis`` at a time, two statements per chunk.
    """
    parts = list(_scoring_windows(engine, store.observation_spans(engine), store.last_scored_ts(engine), chunk_kpis))
    if not parts:
        return clean_observations(pd.DataFrame(columns=["kpi", "ts", "value"]))[0]
    return pd.concat(parts, ignore_index=True)


def _scoring_windows(
    engine: sa.Engine, spans: pd.DataFrame, last_scored: dict[str, pd.Timestamp], chunk_kpis: int
) -> Iterator[pd.DataFrame]:
    """``load_scoring_window``'s rows, one chunk of KPIs at a time (``spans``:
    ``store.observation_spans``)."""
    for start in range(0, len(spans), chunk_kpis):
        chunk = spans.iloc[start : start + chunk_kpis]
        windows = _newest_scoring_windows(engine, chunk["kpi"].tolist())
        since: dict[str, pd.Timestamp | None] = {}
        grids = {}
        for span in chunk.itertuples(index=False):
            kpi, scored_until, window = span.kpi, last_scored.get(span.kpi), windows.get(span.kpi)
            if scored_until is None or window is None:
                since[kpi] = None
            elif span.last_ts <= scored_until:
                since[kpi] = scored_until
            elif isinstance(window, Exception):
                # An unreadable model fails its KPI alone: its new points alone are read, and
                # scoring them reads the model again and records why it fails.
                since[kpi] = scored_until
            else:
                step, context = window
                grids[kpi] = Grid(span.first_ts, step)
                since[kpi] = scored_until - _reach(step, context)
        yield clean_observations(store.load_observation_windows(engine, since), grids=grids)[0]


def _newest_scoring_windows(engine: sa.Engine, kpis: list[str]) -> dict[str, tuple[pd.Timedelta, int] | Exception]:
    """Per KPI with a model, the grid step and context of its newest ``ensemble`` version (or
    why they cannot be read). They are in the artifact's document, so its first bytes are read
    (``DOCUMENT_HEAD``, a few percent of it), then the whole of those that need it: artifacts
    written before format version 3, an unusually large document."""
    windows = _scoring_windows_of(store.load_latest_models(engine, "ensemble", kpis=kpis, artifact_head=DOCUMENT_HEAD))
    unread = [kpi for kpi, window in windows.items() if isinstance(window, Exception)]
    if unread:
        windows.update(_scoring_windows_of(store.load_latest_models(engine, "ensemble", kpis=unread)))
    return windows


def _scoring_windows_of(models: dict[str, store.ModelRecord]) -> dict[str, tuple[pd.Timedelta, int] | Exception]:
    windows: dict[str, tuple[pd.Timedelta, int] | Exception] = {}
    for kpi, model in models.items():
        try:
            windows[kpi] = _scoring_window(model)
        except Exception as error:  # noqa: BLE001 - one KPI's unreadable model is its own failure
            # Without its traceback, which holds this frame and the chunk's artifacts.
            windows[kpi] = error.with_traceback(None)
    return windows


def _scoring_window(model: store.ModelRecord) -> tuple[pd.Timedelta, int]:
    """The grid step of a registered ``ensemble`` row and the earlier points its detector
    scores with (``scoring_reach`` without decoding the detector)."""
    return EnsembleDetector.scoring_window_of_artifact(model.artifact)


def _registered_ensemble(model: store.ModelRecord) -> EnsembleDetector:
    """The detector of a registered ``ensemble`` row without its fitted components: enough to
    know its grid step and how many earlier points scoring needs."""
    return EnsembleDetector.shell_from_artifact(model.artifact)


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
    earlier version either way. A KPI with too little history is reported, not raised. Each
    KPI is trained with its stored parameters (tuned, then pinned) applied, and registered with them.
    """
    trained_at = trained_at if trained_at is not None else pd.Timestamp.now("UTC")
    # Only this run's KPIs: a shard's run reads its own models and anomalies, not every KPI's.
    kpis = sorted(str(kpi) for kpi in cleaned["kpi"].unique())
    newest_models = store.load_latest_models(engine, "ensemble", kpis)
    last_scored = store.last_scored_ts(engine)
    excluded = training_exclusions(engine, config, kpis)
    overrides = store.load_parameters(engine, kpis)
    results = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        kpi = str(kpi)
        ts = pd.DatetimeIndex(rows["ts"])
        exclude = ts.isin(excluded[kpi]) if kpi in excluded else np.zeros(len(ts), dtype=bool)
        newest = newest_models.get(kpi)
        try:
            kpi_config = apply_parameters(config, overrides.get(kpi, {}))
            if newest is None:
                result = _train_history(engine, kpi, rows, exclude, kpi_config, trained_at)
            else:
                cutoff = _retrain_cutoff(ts, newest, last_scored.get(kpi))
                if cutoff:
                    result = _retrain(engine, kpi, rows, cutoff, exclude, kpi_config, trained_at)
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
    engine: sa.Engine, config: DetectorConfig, kpis: list[str] | None = None
) -> dict[str, pd.DatetimeIndex]:
    """Per KPI (of ``kpis``; all if None), the points training skips: confident anomalies
    (``confident_anomalies``, as the walk-forward decides them) and points confirmed as incidents.

    An analyst's ``false_positive`` label puts a confident anomaly back into training.
    """
    flagged = store.load_anomalies(engine, kpis)
    confident = confident_anomalies(flagged, config) & (flagged["feedback"] != "false_positive").to_numpy()
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
        ts,
        rows["value"].to_numpy(dtype=float),
        cutoffs,
        config,
        gap=rows["gap"].to_numpy(dtype=bool),
        exclude=exclude,
    )
    if not walked.models:
        return KpiTraining(kpi, "insufficient history", detail=walked.skipped[-1][1])
    versions = _register(engine, kpi, [(detector, ts[end - 1]) for end, detector in walked.models], trained_at)
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


def _retrain_cutoff(ts: pd.DatetimeIndex, newest: store.ModelRecord, last_scored: pd.Timestamp | None) -> int:
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
    chunk_kpis: int = SCORING_CHUNK_KPIS,
) -> list[KpiScoring]:
    """Score every point newer than the KPI's last scored one with the stored models.

    Nothing is fitted here. Each point gets the newest version trained strictly before it;
    points before the first model stay unscored (insufficient history), and so do points before
    ``since`` if given. Events continue the event left open by the previous batch. ``cleaned``
    holds each KPI's whole series or, as ``load_scoring_window`` reads it, its new points and
    the context before them. KPIs are scored ``chunk_kpis`` at a time, with three reads and one
    write per chunk; one KPI's failure is recorded in its result and the others complete.
    """
    tally = _Tally(progress, cleaned["kpi"].nunique())
    return _score_cleaned(engine, cleaned, store.last_scored_ts(engine), since, scored_at, tally, chunk_kpis)


def score_latest(
    engine: sa.Engine,
    *,
    scored_at: pd.Timestamp | None = None,
    progress: Progress = _quiet,
    chunk_kpis: int = SCORING_CHUNK_KPIS,
) -> list[KpiScoring]:
    """``score_new_points(engine, load_scoring_window(engine))``, one chunk of KPIs at a time
    (read, clean, score, write), so that memory holds one chunk's windows whatever the number
    of KPIs: the ``anomaly_scores`` asset's step."""
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now("UTC")
    last_scored = store.last_scored_ts(engine)
    spans = store.observation_spans(engine)
    tally = _Tally(progress, len(spans))
    results = []
    for cleaned in _scoring_windows(engine, spans, last_scored, chunk_kpis):
        results.extend(_score_cleaned(engine, cleaned, last_scored, None, scored_at, tally, chunk_kpis))
    return results


def _score_cleaned(
    engine: sa.Engine,
    cleaned: pd.DataFrame,
    last_scored: dict[str, pd.Timestamp],
    since: pd.Timestamp | None,
    scored_at: pd.Timestamp | None,
    tally: _Tally,
    chunk_kpis: int,
) -> list[KpiScoring]:
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now("UTC")
    work = []
    if not cleaned["kpi"].is_monotonic_increasing:
        cleaned = cleaned.sort_values("kpi", kind="stable")
    # Each KPI's rows as slices of whole columns: a groupby builds a frame per KPI.
    kpis = cleaned["kpi"].to_numpy(dtype=object)
    every_ts = pd.DatetimeIndex(cleaned["ts"])
    values, gaps = cleaned["value"].to_numpy(dtype=float), cleaned["gap"].to_numpy(dtype=bool)
    for first, end in kpi_slices(kpis):
        kpi, ts = str(kpis[first]), every_ts[first:end]
        first_new = 0 if kpi not in last_scored else int(ts.searchsorted(last_scored[kpi], "right"))
        if since is not None:
            first_new = max(first_new, int(ts.searchsorted(since, "left")))
        work.append(_NewPoints(kpi, ts, values[first:end], gaps[first:end], first_new))
    results: list[KpiScoring] = []
    for start in range(0, len(work), chunk_kpis):
        chunk = _score_chunk(engine, work[start : start + chunk_kpis], scored_at)
        tally.chunk_done(chunk)
        results.extend(chunk)
    return results


@dataclass
class _Tally:
    """A scoring run's progress: a line per KPI with something to report (anomalies, outages,
    a failure, points left unscored) and a line per chunk; a line per quiet KPI would flood
    the run's log at thousands of KPIs."""

    progress: Progress
    total: int
    done: int = 0

    def chunk_done(self, chunk: list[KpiScoring]) -> None:
        quiet = 0
        for result in chunk:
            if result.anomalies or result.outages or result.error or result.unscored:
                self.progress(f"{result.kpi}: {_describe_scoring(result)}")
            else:
                quiet += 1
        self.done += len(chunk)
        self.progress(
            f"{self.done:,} of {max(self.total, self.done):,} KPIs done: {sum(r.scored for r in chunk):,} points "
            f"scored in this chunk of {len(chunk):,} KPIs"
            + (f" ({quiet:,} with nothing anomalous, failed or left unscored, not listed)" if quiet else "")
        )


@dataclass(frozen=True)
class _NewPoints:
    """A KPI's cleaned series (timestamps, values, whether each point is inside a long gap), of
    which the points from ``first_new`` on are to be scored."""

    kpi: str
    ts: pd.DatetimeIndex
    values: np.ndarray
    gap: np.ndarray
    first_new: int

    @property
    def count(self) -> int:
        return len(self.ts) - self.first_new

    def failed(self, error: BaseException) -> KpiScoring:
        return KpiScoring(self.kpi, 0, 0, self.count, error=describe_error(error))


def _score_chunk(engine: sa.Engine, chunk: list[_NewPoints], scored_at: pd.Timestamp) -> list[KpiScoring]:
    """Score a chunk of KPIs: one read of the model versions that apply, one of the false
    positives that raise thresholds, one of the stored scores open events continue from, one
    upsert. A KPI that fails is recorded with its error
    (a failed read or write fails the KPIs it was for) and the others go on."""
    done: dict[str, KpiScoring] = {}
    pending = {item.kpi: item for item in chunk if item.count > 0}
    for item in chunk:
        if item.count == 0:
            done[item.kpi] = KpiScoring(item.kpi, 0, 0, 0)
    scored: dict[str, tuple[Columns, int]] = {}
    spans = {kpi: (item.ts[item.first_new], item.ts[-1]) for kpi, item in pending.items()}
    try:
        false_positives = store.load_false_positives(engine, pending) if pending else {}
        for kpi, models in store.load_scoring_models(engine, spans):
            try:
                scores, merge_gap = _score_with_models(pending[kpi], models, false_positives.get(kpi))
            except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
                done[kpi] = pending[kpi].failed(error)
                continue
            if scores is not None:
                scored[kpi] = scores, merge_gap
    except Exception as error:  # noqa: BLE001 - the read failed: the chunk's KPIs left unscored
        for kpi, item in pending.items():
            done.setdefault(kpi, item.failed(error))
        scored.clear()
    for kpi, item in pending.items():
        if kpi not in done and kpi not in scored:  # no model trained before its new points
            done[kpi] = KpiScoring(kpi, 0, 0, item.count)
    written = _with_events(engine, {kpi: pending[kpi] for kpi in scored}, scored, done)
    _write_scores(engine, written, scored_at, pending, done)
    for kpi, scores in written.items():
        if kpi in done:
            continue
        outages = int((scores["flagged_by"] == "gap").sum())
        count = len(scores["ts"])
        done[kpi] = KpiScoring(
            kpi,
            scored=count,
            anomalies=int(scores["is_anomaly"].sum()) - outages,
            unscored=pending[kpi].count - count,
            versions=tuple(dict.fromkeys(scores["model_version"].tolist())),
            outages=outages,
        )
    return [done[item.kpi] for item in chunk]


def _with_events(
    engine: sa.Engine,
    items: dict[str, _NewPoints],
    scored: dict[str, tuple[Columns, int]],
    done: dict[str, KpiScoring],
) -> dict[str, Columns]:
    """The scores of each KPI with their ``event_id``s, continuing the event the stored scores
    leave open: the last ``merge_gap + 1`` scores before the new points, read in one go."""
    spans = {}
    for kpi, item in items.items():
        if item.first_new > 0:
            merge_gap = scored[kpi][1]
            spans[kpi] = item.ts[max(0, item.first_new - merge_gap - 1)], item.ts[item.first_new - 1]
    try:
        stored = store.load_score_windows(engine, spans)
    except Exception as error:  # noqa: BLE001 - the read failed: the KPIs that needed it fail
        for kpi in spans:
            done[kpi] = items[kpi].failed(error)
        stored = None
    recent = {} if stored is None else _rows_of_each_kpi(stored)
    written = {}
    for kpi, (scores, merge_gap) in scored.items():
        if kpi in done:
            continue
        try:
            open_event = None
            if items[kpi].first_new > 0 and kpi in recent:
                open_event = open_event_from(recent[kpi], merge_gap)
            scores["event_id"], _alerts = assign_events(
                kpi,
                scores["ts"],
                scores["is_anomaly"],
                merge_gap,
                open_event,
            )
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            done[kpi] = items[kpi].failed(error)
            continue
        written[kpi] = scores
    return written


def _rows_of_each_kpi(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of each KPI of ``frame`` (sorted by KPI), as slices: a ``groupby`` builds a
    frame per KPI at about half a millisecond each."""
    kpis = frame["kpi"].to_numpy(dtype=object)
    return {str(kpis[first]): frame.iloc[first:end] for first, end in kpi_slices(kpis)}


def _write_scores(
    engine: sa.Engine,
    written: dict[str, Columns],
    scored_at: pd.Timestamp,
    items: dict[str, _NewPoints],
    done: dict[str, KpiScoring],
) -> None:
    """Upsert the chunk's scores in one go; if that fails, KPI by KPI, so that only the KPIs
    whose write fails are recorded as failed (their results in ``done``)."""
    if not written:
        return
    try:
        store.upsert_scores(engine, _with_kpi(written, scored_at))
        return
    except Exception:  # noqa: BLE001 - find the KPIs at fault below
        pass
    for kpi, scores in written.items():
        try:
            store.upsert_scores(engine, _with_kpi({kpi: scores}, scored_at))
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            done[kpi] = items[kpi].failed(error)


def _with_kpi(scores: dict[str, Columns], scored_at: pd.Timestamp) -> pd.DataFrame:
    """The scores of each KPI of ``scores`` in one frame, with their ``kpi`` and ``scored_at``
    columns. Each KPI's scores stay columns until here: a frame costs about a millisecond to
    build, and as much to add a column to, so one per KPI cost seconds per 1,000 KPIs."""
    parts = list(scores.values())
    kpis = np.repeat(np.array(list(scores), dtype=object), [len(part["ts"]) for part in parts])
    return pd.DataFrame({**_concat_columns(parts), "kpi": kpis, "scored_at": scored_at})


def _concat_columns(parts: list[Columns]) -> Columns:
    """Score columns one after the other (``ts`` a ``DatetimeIndex``, the others arrays)."""
    if len(parts) == 1:
        return parts[0]
    return {
        name: parts[0][name].append([part[name] for part in parts[1:]])
        if name == "ts"
        else np.concatenate([part[name] for part in parts])
        for name in parts[0]
    }


def _score_with_models(
    item: _NewPoints, models: list[store.ModelRecord], false_positives: pd.DatetimeIndex | None = None
) -> tuple[Columns | None, int]:
    """Scores of the points from ``first_new`` on that some model of ``models`` (the registry
    rows of the versions that may apply, every kind, oldest training cutoff first) may score,
    with the version used, as columns; and the event merge gap of the newest model used (None
    if no model applies). ``false_positives``: the KPI's (``store.load_false_positives``), which
    raise its threshold (``feedback.threshold_raise``)."""
    ts, values, gap, first_new = item.ts, item.values, item.gap, item.first_new
    versions = [m for m in models if m.kind == "ensemble" and m.train_end]
    train_ends = pd.DatetimeIndex([model.train_end for model in versions], tz="UTC")
    # Index of the newest model whose training window ended strictly before each point.
    model_of = train_ends.searchsorted(ts[first_new:], side="left") - 1
    used = np.unique(model_of[model_of >= 0])
    if len(used) == 0:
        return None, 0
    artifacts: dict[str, dict[str, bytes]] = {}
    for model in models:
        if model.artifact is not None:
            artifacts.setdefault(model.version, {})[model.kind] = model.artifact
    detectors = _detectors(item.kpi, {versions[i].version: artifacts.get(versions[i].version, {}) for i in used})
    parts = []
    for index in used:
        model = versions[index]
        # model_of never decreases with time, so each model scores one contiguous segment.
        positions = first_new + np.flatnonzero(model_of == index)
        detector = detectors[model.version]
        start, end = positions[0], positions[-1] + 1
        raised = 0.0 if false_positives is None else threshold_raise(false_positives, ts[start:end], detector.config)
        window, context = context_window(detector, start, end)
        segment = detector.score_columns(ts[window], values[window], context, gap[window], raised)
        segment["model_version"] = np.full(end - start, model.version, dtype=object)
        parts.append(segment)
    merge_gap = detectors[versions[used[-1]].version].config.event_merge_gap
    return _concat_columns(parts), merge_gap


def _detectors(kpi: str, artifacts: dict[str, dict[str, bytes]]) -> dict[str, EnsembleDetector]:
    """The fitted detectors of registered ensemble versions, rebuilt from their artifacts
    (per version, by kind)."""
    return {version: detector_from_artifacts(kpi, version, by_kind) for version, by_kind in artifacts.items()}


class NoModel(LookupError):
    """The KPI exists but no (complete) model has been trained for it yet."""


def load_detector(engine: sa.Engine, kpi: str, version: str) -> EnsembleDetector:
    """The fitted detector of version ``version`` of ``kpi``'s ensemble, rebuilt from its
    registry rows (about 250 KB of arrays and JSON, docs/models.md)."""
    return detector_from_artifacts(kpi, version, store.model_artifacts(engine, kpi, version))


def detector_from_artifacts(kpi: str, version: str, artifacts: dict[str, bytes]) -> EnsembleDetector:
    """The fitted detector of a registered ensemble version from its artifacts, by kind;
    raises ``NoModel`` if one is missing."""
    missing = [kind for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble") if kind not in artifacts]
    if missing:
        raise NoModel(f"model {version} of {kpi!r} is incomplete (no {', '.join(missing)} artifact); retrain it")
    return EnsembleDetector.from_artifacts(artifacts)


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


# -- feedback-adaptive thresholds -----------------------------------------------------------


@dataclass(frozen=True)
class KpiThreshold:
    """A KPI's anomaly threshold as its next points are judged (surprise units)."""

    kpi: str
    base: float
    """The newest model's threshold, before feedback."""
    raised_by: float
    """What analysts' false positives add (``feedback.threshold_raise``), at ``as_of``."""
    false_positives: int
    """False-positive events counted (since the last reset)."""
    cap: float
    as_of: pd.Timestamp | None
    """The newest scored point (None: nothing scored yet)."""
    reset_at: pd.Timestamp | None = None

    @property
    def effective(self) -> float:
        return self.base + self.raised_by


def kpi_thresholds(engine: sa.Engine, kpis: list[str] | None = None) -> dict[str, KpiThreshold]:
    """Per trained KPI (of ``kpis``; all if None), its threshold with the feedback raise the
    next points get: the raise at its newest scored point."""
    models = store.load_latest_models(engine, "ensemble", kpis)
    false_positives = store.load_false_positives(engine, list(models))
    resets = store.threshold_reset_times(engine, list(models))
    last_scored = store.last_scored_ts(engine)
    result = {}
    for kpi, model in sorted(models.items()):
        if model.artifact is None:  # a registry row without its model: nothing to judge with
            continue
        detector = _registered_ensemble(model)
        fps = false_positives.get(kpi, pd.DatetimeIndex([], tz="UTC"))
        as_of = last_scored.get(kpi)
        # Just after the newest scored point: a false positive on that point counts too.
        at = pd.DatetimeIndex([as_of + pd.Timedelta(microseconds=1)]) if as_of is not None else None
        raised = 0.0 if at is None else float(threshold_raise(fps, at, detector.config)[0])
        result[kpi] = KpiThreshold(
            kpi,
            base=float(detector.threshold_),
            raised_by=raised,
            false_positives=int((fps <= as_of).sum()) if as_of is not None else 0,
            cap=detector.config.feedback_threshold_cap,
            as_of=as_of,
            reset_at=resets.get(kpi),
        )
    return result


# -- events ---------------------------------------------------------------------------------


def anomaly_events(engine: sa.Engine, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per anomaly event across all KPIs, newest first (see ``summarize_events``);
    with ``since``, the events with a point at or after it (their points from ``since`` on)."""
    return summarize_events(store.load_anomalies(engine, since=since))


RECENT_EVENTS = pd.Timedelta(days=7)
"""The span the ``anomalies`` asset summarises on each scoring run, up to the newest scored
point: a summary of every event ever would cost more with each run."""


def recent_anomaly_events(engine: sa.Engine) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """``anomaly_events`` of the ``RECENT_EVENTS`` up to the newest scored point, and that
    point (None, and no events, when nothing is scored): read through the index of anomalous
    points, so the cost follows the recent anomalies, not the history."""
    as_of = store.data_as_of(engine)
    return anomaly_events(engine, since=None if as_of is None else as_of - RECENT_EVENTS), as_of


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
        train_models(
            engine, cleaned[cleaned["kpi"].isin(untrained)], config, rescore_horizon=rescore_horizon, progress=progress
        )
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
