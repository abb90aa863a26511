"""Per-KPI training and scoring: the steps behind the Dagster assets, as plain functions.

This module joins the store and the detection library and imports no Dagster, so the asset
graph, the CLI and the tests all run the same code. Both steps work on the cleaned series and
keep the no-look-ahead rule: a model is trained on a prefix of a series, and a point is scored
only by a model whose training window ended strictly before it. Training cleans everything
stored (``load_cleaned``); scoring cleans only the new points and the context before them
(``load_scoring_window``), so its cost grows with new points, not with history. Real-time
scoring (``score_points``, behind the API's ``POST /v1/score``) is that scoring step on
submitted points: the same detector rebuild, window and grid, nothing written.

Model versions are the end of their training window formatted as ``VERSION_FORMAT``, so
retraining on the same data rewrites the same registry rows instead of adding new ones.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.detection.ensemble import (
    SCORE_COLUMNS,
    DetectorConfig,
    EnsembleDetector,
    InsufficientHistory,
    ScoringState,
    confident_anomalies,
)
from kpi_pipeline.detection.events import assign_events, open_event_from, summarize_events
from kpi_pipeline.detection.features import build_features
from kpi_pipeline.detection.preprocess import (
    Grid,
    clean_observations,
    clean_series,
    fill_between,
)
from kpi_pipeline.detection.walkforward import history_cutoffs, score_segment, walk_forward
from kpi_pipeline.errors import describe_error
from kpi_pipeline.ingestion import IngestResult
from kpi_pipeline.store import serving
from kpi_pipeline.store.notifications import HeardWrites, Token

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


def load_cleaned(engine: sa.Engine) -> tuple[pd.DataFrame, dict[str, pd.Timedelta]]:
    """Every stored observation, cleaned: ``(kpi, ts, value, filled, gap)`` rows and each step."""
    return clean_observations(store.load_observations(engine))


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


SCORING_CHUNK_KPIS = 500
"""KPIs a scoring run reads and writes together: each chunk costs a fixed number of
statements (its observation windows, newest models, the model versions that score it, the
stored scores open events continue from, and one upsert), whatever its number of KPIs."""


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
    parts = list(_scoring_windows(engine, store.last_scored_ts(engine), chunk_kpis))
    if not parts:
        return clean_observations(pd.DataFrame(columns=["kpi", "ts", "value"]))[0]
    return pd.concat(parts, ignore_index=True)


def _scoring_windows(
    engine: sa.Engine, last_scored: dict[str, pd.Timestamp], chunk_kpis: int
) -> Iterator[pd.DataFrame]:
    """``load_scoring_window``'s rows, one chunk of KPIs at a time."""
    spans = store.observation_spans(engine)
    for start in range(0, len(spans), chunk_kpis):
        chunk = spans.iloc[start : start + chunk_kpis]
        newest = store.load_latest_models(engine, "ensemble", kpis=chunk["kpi"].tolist())
        since: dict[str, pd.Timestamp | None] = {}
        grids = {}
        for span in chunk.itertuples(index=False):
            kpi, scored_until, model = span.kpi, last_scored.get(span.kpi), newest.get(span.kpi)
            if scored_until is None or model is None:
                since[kpi] = None
            elif span.last_ts <= scored_until:
                since[kpi] = scored_until
            else:
                detector = _registered_ensemble(model)
                grids[kpi] = Grid(span.first_ts, detector.freq_)
                since[kpi] = scored_until - scoring_reach(detector)
        yield clean_observations(store.load_observation_windows(engine, since), grids=grids)[0]


def _registered_ensemble(model: store.ModelRecord) -> EnsembleDetector:
    """The detector of a registered ``ensemble`` row without its fitted components: enough to
    know its grid step and how many earlier points scoring needs."""
    return pickle.loads(model.artifact)


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
    """``trained``, ``up to date`` (no scored point newer than its newest model),
    ``insufficient history`` or ``failed`` (an unexpected error, in ``detail``; the next run
    tries again)."""
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
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            result = KpiTraining(kpi, "failed", detail=describe_error(error))
        progress(f"{kpi}: {_describe_training(result)}")
        results.append(result)
    return results


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
    return _score_cleaned(
        engine, cleaned, store.last_scored_ts(engine), since, scored_at, progress, chunk_kpis
    )


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
    results = []
    for cleaned in _scoring_windows(engine, last_scored, chunk_kpis):
        results.extend(
            _score_cleaned(engine, cleaned, last_scored, None, scored_at, progress, chunk_kpis)
        )
    return results


def _score_cleaned(
    engine: sa.Engine,
    cleaned: pd.DataFrame,
    last_scored: dict[str, pd.Timestamp],
    since: pd.Timestamp | None,
    scored_at: pd.Timestamp | None,
    progress: Progress,
    chunk_kpis: int,
) -> list[KpiScoring]:
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now("UTC")
    work = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        kpi = str(kpi)
        ts = pd.DatetimeIndex(rows["ts"])
        first_new = 0 if kpi not in last_scored else int(ts.searchsorted(last_scored[kpi], "right"))
        if since is not None:
            first_new = max(first_new, int(ts.searchsorted(since, "left")))
        work.append(_NewPoints(kpi, rows, first_new))
    results = []
    for start in range(0, len(work), chunk_kpis):
        for result in _score_chunk(engine, work[start : start + chunk_kpis], scored_at):
            progress(f"{result.kpi}: {_describe_scoring(result)}")
            results.append(result)
    return results


@dataclass(frozen=True)
class _NewPoints:
    """A KPI's cleaned rows, of which those from ``first_new`` on are to be scored."""

    kpi: str
    rows: pd.DataFrame
    first_new: int

    @property
    def count(self) -> int:
        return len(self.rows) - self.first_new

    def failed(self, error: BaseException) -> KpiScoring:
        return KpiScoring(self.kpi, 0, 0, self.count, error=describe_error(error))


def _score_chunk(
    engine: sa.Engine, chunk: list[_NewPoints], scored_at: pd.Timestamp
) -> list[KpiScoring]:
    """Score a chunk of KPIs: one read of the model versions that apply, one of the stored
    scores open events continue from, one upsert. A KPI that fails is recorded with its error
    (a failed read or write fails the KPIs it was for) and the others go on."""
    done: dict[str, KpiScoring] = {}
    pending = {item.kpi: item for item in chunk if item.count > 0}
    for item in chunk:
        if item.count == 0:
            done[item.kpi] = KpiScoring(item.kpi, 0, 0, 0)
    scored: dict[str, tuple[pd.DataFrame, int]] = {}
    spans = {kpi: (item.rows["ts"].iloc[item.first_new], item.rows["ts"].iloc[-1])
             for kpi, item in pending.items()}
    try:
        for kpi, models in store.load_scoring_models(engine, spans):
            try:
                scores, merge_gap = _score_with_models(pending[kpi], models)
            except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
                done[kpi] = pending[kpi].failed(error)
                continue
            if not scores.empty:
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
        done[kpi] = KpiScoring(
            kpi,
            scored=len(scores),
            anomalies=int(scores["is_anomaly"].sum()) - outages,
            unscored=pending[kpi].count - len(scores),
            versions=tuple(scores["model_version"].unique()),
            outages=outages,
        )
    return [done[item.kpi] for item in chunk]


def _with_events(
    engine: sa.Engine,
    items: dict[str, _NewPoints],
    scored: dict[str, tuple[pd.DataFrame, int]],
    done: dict[str, KpiScoring],
) -> dict[str, pd.DataFrame]:
    """The scores of each KPI with their ``event_id``s, continuing the event the stored scores
    leave open: the last ``merge_gap + 1`` scores before the new points, read in one go."""
    spans = {}
    for kpi, item in items.items():
        if item.first_new > 0:
            ts = item.rows["ts"]
            merge_gap = scored[kpi][1]
            spans[kpi] = ts.iloc[max(0, item.first_new - merge_gap - 1)], ts.iloc[item.first_new - 1]
    try:
        stored = store.load_score_windows(engine, spans)
    except Exception as error:  # noqa: BLE001 - the read failed: the KPIs that needed it fail
        for kpi in spans:
            done[kpi] = items[kpi].failed(error)
        stored = None
    recent = {} if stored is None else {
        str(kpi): rows.reset_index(drop=True) for kpi, rows in stored.groupby("kpi", sort=False)
    }
    written = {}
    for kpi, (scores, merge_gap) in scored.items():
        if kpi in done:
            continue
        try:
            open_event = None
            if items[kpi].first_new > 0:
                open_event = open_event_from(recent.get(kpi, stored.iloc[:0]), merge_gap)
            scores["event_id"], _alerts = assign_events(
                kpi, pd.DatetimeIndex(scores["ts"]), scores["is_anomaly"].to_numpy(), merge_gap,
                open_event,
            )
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            done[kpi] = items[kpi].failed(error)
            continue
        written[kpi] = scores
    return written


def _write_scores(
    engine: sa.Engine,
    written: dict[str, pd.DataFrame],
    scored_at: pd.Timestamp,
    items: dict[str, _NewPoints],
    done: dict[str, KpiScoring],
) -> None:
    """Upsert the chunk's scores in one go; if that fails, KPI by KPI, so that only the KPIs
    whose write fails are recorded as failed (their results in ``done``)."""
    frames = {kpi: scores.assign(kpi=kpi, scored_at=scored_at) for kpi, scores in written.items()}
    if not frames:
        return
    try:
        store.upsert_scores(engine, pd.concat(frames.values(), ignore_index=True))
        return
    except Exception:  # noqa: BLE001 - find the KPIs at fault below
        pass
    for kpi, frame in frames.items():
        try:
            store.upsert_scores(engine, frame)
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            done[kpi] = items[kpi].failed(error)


def _score_with_models(
    item: _NewPoints, models: list[store.ModelRecord]
) -> tuple[pd.DataFrame, int]:
    """Scores of the points from ``first_new`` on that some model of ``models`` (the registry
    rows of the versions that may apply, every kind, oldest training cutoff first) may score,
    with the version used; and the event merge gap of the newest model used (0 rows if no
    model applies)."""
    rows, first_new = item.rows, item.first_new
    ts = pd.DatetimeIndex(rows["ts"])
    values = rows["value"].to_numpy(dtype=float)
    gap = rows["gap"].to_numpy(dtype=bool)
    versions = [m for m in models if m.kind == "ensemble" and m.train_end]
    train_ends = pd.DatetimeIndex([model.train_end for model in versions], tz="UTC")
    # Index of the newest model whose training window ended strictly before each point.
    model_of = train_ends.searchsorted(ts[first_new:], side="left") - 1
    used = np.unique(model_of[model_of >= 0])
    if len(used) == 0:
        return pd.DataFrame(), 0
    artifacts: dict[str, dict[str, bytes]] = {}
    for model in models:
        if model.artifact is not None:
            artifacts.setdefault(model.version, {})[model.kind] = model.artifact
    detectors = _detectors(
        item.kpi, {versions[i].version: artifacts.get(versions[i].version, {}) for i in used}
    )
    parts = []
    for index in used:
        model = versions[index]
        # model_of never decreases with time, so each model scores one contiguous segment.
        positions = first_new + np.flatnonzero(model_of == index)
        segment = score_segment(
            detectors[model.version], ts, values, gap, positions[0], positions[-1] + 1
        )
        parts.append(segment.assign(model_version=model.version))
    merge_gap = detectors[versions[used[-1]].version].config.event_merge_gap
    return pd.concat(parts, ignore_index=True), merge_gap


def _detectors(
    kpi: str, artifacts: dict[str, dict[str, bytes]]
) -> dict[str, EnsembleDetector]:
    """The fitted detectors of registered ensemble versions, rebuilt from their artifacts
    (per version, by kind)."""
    return {
        version: detector_from_artifacts(kpi, version, by_kind)
        for version, by_kind in artifacts.items()
    }


def load_detector(engine: sa.Engine, kpi: str, version: str) -> EnsembleDetector:
    """The fitted detector of version ``version`` of ``kpi``'s ensemble, rebuilt from its
    registry rows (about a megabyte: an Isolation Forest is most of it)."""
    return detector_from_artifacts(kpi, version, store.model_artifacts(engine, kpi, version))


def detector_from_artifacts(
    kpi: str, version: str, artifacts: dict[str, bytes]
) -> EnsembleDetector:
    """The fitted detector of a registered ensemble version from its artifacts, by kind;
    raises ``NoModel`` if one is missing."""
    missing = [
        kind for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble") if kind not in artifacts
    ]
    if missing:
        raise NoModel(
            f"model {version} of {kpi!r} is incomplete (no {', '.join(missing)} artifact); "
            "retrain it"
        )
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


# -- real-time scoring ----------------------------------------------------------------------


class UnknownKpi(LookupError):
    """No observation, score or model of this KPI exists."""


class NoModel(LookupError):
    """The KPI exists but no (complete) model has been trained for it yet."""


class PointsTooSpread(ValueError):
    """The points lie so far apart that scoring them would mean scoring a huge empty grid."""


@dataclass(frozen=True)
class RealtimeScores:
    kpi: str
    model_version: str
    columns: dict[str, np.ndarray]
    """Per submitted point, in time order: the submitted ``ts`` and ``value``, then the
    detector's ``SCORE_COLUMNS``."""

    @property
    def scores(self) -> pd.DataFrame:
        """``columns`` as a frame."""
        return pd.DataFrame(self.columns)[SCORE_COLUMNS]

    def records(self) -> list[dict]:
        """One dict per point, plain Python values, missing numbers as None (JSON has no NaN)."""
        names = SCORE_COLUMNS
        ts = self.columns["ts"]
        if not isinstance(ts, list):
            ts = pd.DatetimeIndex(ts).to_pydatetime()
        listed = [ts] + [
            np.asarray(self.columns[name]).tolist() for name in names[1:]
        ]
        return [
            {name: (None if value != value else value) for name, value in zip(names, row)}
            for row in zip(*listed)
        ]


def score_points(
    engine: sa.Engine,
    kpi: str,
    points: pd.DataFrame,
    max_points: int,
    cache: ScoringCache | None = None,
) -> RealtimeScores:
    """Score ``points`` (columns ts, value; unique ts, any order) of ``kpi`` as the scoring
    step would score them once stored, with the KPI's newest model; nothing is written.

    The points are cleaned together with the stored observations before the first of them, on
    the KPI's grid (its first timestamp and the model's step), so each gets the numbers
    ``score_new_points`` later stores for it; an off-grid point gets those of the grid point it
    falls on. The newest model is used whatever the points' timestamps, so scoring a point
    older than its training window is in-sample. ``cache`` keeps detectors and the cleaned
    newest observations between calls. Raises ``UnknownKpi``, ``NoModel``, or
    ``PointsTooSpread`` when the points span more than ``2 * (max_points + context)`` steps.

    While ``cache`` hears every write of observations and models (``ScoringCache.go_live``),
    a KPI scored once is scored again without reading the database until one is written.
    """
    points = _in_time_order(points)
    token = None
    if cache is not None:
        trusted = cache.trusted(kpi)
        if trusted is not None:
            return trusted.scorer.score(engine, points, max_points, trusted.tail)[0]
        token = cache.token(kpi)  # before the reads: a write after it withholds the trust
    version = serving.newest_model_version(engine, kpi)
    if version is None:
        if serving.kpi_exists(engine, kpi):
            raise NoModel(f"no trained model for {kpi!r} yet (too little history, or training "
                          "has not run)")
        raise UnknownKpi(f"unknown KPI {kpi!r}")
    if cache is None:
        return _KpiScorer(kpi, version, load_detector(engine, kpi, version)).score(
            engine, points, max_points
        )[0]
    scorer = cache.scorer(engine, kpi, version)
    result, tail = scorer.score(engine, points, max_points)
    cache.trust(kpi, scorer, tail, token)
    return result


def _in_time_order(points: pd.DataFrame) -> pd.DataFrame:
    if points["ts"].is_monotonic_increasing:
        return points.reset_index(drop=True)
    return points.sort_values("ts", ignore_index=True)


class ScoringCache(HeardWrites):
    """What ``score_points`` keeps between calls, per (KPI, model version), least recently used
    out first: the rebuilt detector and its KPI's newest observations, cleaned. Thread-safe.

    A retrain makes a new version, whose entry is built on first use while the old one ages
    out; the observations are re-read when new or changed ones land (see ``_KpiScorer``).

    Each call checks that the KPI's newest model and observations are still those cached (two
    probes of the database), unless the cache is live: a thread listening to the writes of
    observations and models (``api.series_cache.ScoreWriteWatcher`` on
    ``store.notifications.INPUTS_CHANNEL``) calls ``go_live`` once it hears every write, and
    ``written`` with the KPIs of each write as it commits. Then the scorer a call checked, with
    the observations it checked, is trusted for the KPI's next calls (``trusted``) until a
    write of that KPI is heard (which also drops the KPI's scorers: a retrain can rewrite the
    same version, an update need not move the probed watermark), unless one was heard while
    the call read (``token``), and for at most ``TRUST_MAX_AGE_S``, a safety net for writes no
    notification announces. ``go_dark`` (the listener lost) ends all trust.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._scorers: OrderedDict[tuple[str, str], _KpiScorer] = OrderedDict()
        self._trusted: dict[str, _Trusted] = {}

    def __len__(self) -> int:
        return len(self._scorers)

    def scorer(self, engine: sa.Engine, kpi: str, version: str) -> _KpiScorer:
        key = (kpi, version)
        with self._lock:
            if key in self._scorers:
                self._scorers.move_to_end(key)
                return self._scorers[key]
        scorer = _KpiScorer(kpi, version, load_detector(engine, kpi, version))
        with self._lock:
            self._scorers[key] = scorer
            while len(self._scorers) > self.size:
                (old_kpi, _), old = self._scorers.popitem(last=False)
                if old_kpi in self._trusted and self._trusted[old_kpi].scorer is old:
                    del self._trusted[old_kpi]
        return scorer

    def trusted(self, kpi: str) -> _Trusted | None:
        """The scorer and observations trusted to be ``kpi``'s newest, if any (a use, for the
        least-recently-used order)."""
        with self._lock:
            entry = self._trusted.get(kpi)
            if entry is None:
                return None
            if time.monotonic() - entry.since > TRUST_MAX_AGE_S:
                del self._trusted[kpi]
                return None
            key = (kpi, entry.scorer.version)
            if key in self._scorers:
                self._scorers.move_to_end(key)
            return entry

    def score_current(self, kpi: str, ns: np.ndarray, values: np.ndarray, stamps,
                      max_points: int) -> RealtimeScores | None:
        """``score_points`` with no database at all: points after the newest observation of a
        KPI with a trusted scorer (``trusted``); None for anything else. For a caller that
        must not block, such as an event loop: CPU only, well under a millisecond. The points
        as arrays in time order: ``ns`` their timestamps in nanoseconds since the epoch,
        ``stamps`` as the answer reports them."""
        entry = self.trusted(kpi)
        if entry is None:
            return None
        return entry.scorer.score_next(entry.tail, ns, values, stamps, max_points)

    def trust(self, kpi: str, scorer: _KpiScorer, tail: _StoredTail, token: Token | None
              ) -> None:
        """Trust ``scorer`` with ``tail`` (the observations a call checked) for ``kpi``, if no
        write of it was heard since ``token`` and the scorer is still cached."""
        with self._lock:
            if (self._unchanged_since(kpi, token)
                    and self._scorers.get((kpi, scorer.version)) is scorer):
                self._trusted[kpi] = _Trusted(scorer, tail, time.monotonic())

    def _forget(self, kpi: str | None) -> None:
        if kpi is None:
            self._trusted.clear()
            self._scorers.clear()
            return
        self._trusted.pop(kpi, None)
        for key in [key for key in self._scorers if key[0] == kpi]:
            del self._scorers[key]


TRUST_MAX_AGE_S = 60.0
"""How long a live ``ScoringCache`` trusts a KPI's checked model and observations without
checking again, even if no write was heard: a bound for writes that no notification announces
(triggers disabled after the listener checked them) and for a listener whose connection died
silently (noticed within about a minute by TCP keepalives)."""


@dataclass(frozen=True)
class _Trusted:
    scorer: _KpiScorer
    tail: _StoredTail
    """The observations the trusting call checked (the scorer's own may be replaced since)."""
    since: float


@dataclass(frozen=True)
class _StoredTail:
    """A KPI's newest stored observations, read and cleaned once for many scorings.

    The observations from the last one at or before ``since`` (the newest one minus
    ``scoring_reach``) are cleaned on ``grid``: from the slack on, the whole series' rows, as
    ``load_scoring_window`` reads them. Points after the newest observation can only change the
    cleaned rows from a few slots before it on (the short gap before it, interpolated towards
    it, and its own slot, which a point may share), so the rows are split once, at an observed
    slot ``SCORING_SLACK_POINTS`` before the newest: ``settled`` rows stay as cleaned, and the
    observations from that slot on (``redo``) are cleaned again with the points. Valid while the
    observations from ``since`` on still match ``watermark``.
    """

    watermark: serving.ObservationWatermark
    since: pd.Timestamp | None
    grid: Grid | None
    last_slot: int
    """The newest observation's grid slot."""
    settled: pd.DataFrame
    redo: pd.DataFrame
    judged: ScoringState | None = None
    """The detector's state after the whole cleaned tail (settled rows, then the redo rows
    cleaned alone, which is what they stay while points come after the newest observation);
    its last value is the cleaned value in the newest observation's slot."""


class _KpiScorer:
    """Real-time scoring with one model version of one KPI."""

    def __init__(self, kpi: str, version: str, detector: EnsembleDetector) -> None:
        self.kpi, self.version, self.detector = kpi, version, detector
        self._tail: _StoredTail | None = None
        self._step_ns = detector.freq_.value
        self._context = detector.context_points

    def score(self, engine: sa.Engine, points: pd.DataFrame, max_points: int,
              tail: _StoredTail | None = None) -> tuple[RealtimeScores, _StoredTail]:
        """Score ``points`` (in time order) after ``tail`` (known current; default: the cached
        tail, checked); also returns the tail used."""
        ns = pd.DatetimeIndex(points["ts"]).as_unit("ns").asi8
        values = points["value"].to_numpy(dtype=float)
        self._check_spread(int(ns[0]), int(ns[-1]), max_points)
        first = points["ts"].iloc[0]
        tail = tail or self._stored_tail(engine)
        if tail.watermark.last_ts is None or first > tail.watermark.last_ts:
            quick = self._quick(tail, ns, values, points["ts"].to_numpy())
            if quick is not None:
                return quick, tail
            cleaned = self._after_stored(tail, points)
        else:
            cleaned = self._among_stored(engine, tail, points)
        grid = Grid(cleaned["ts"].iloc[0], self.detector.freq_)
        positions = grid.slots(points["ts"])
        start, end = int(positions[0]), int(positions[-1]) + 1
        scored = score_segment(
            self.detector,
            pd.DatetimeIndex(cleaned["ts"]),
            cleaned["value"].to_numpy(dtype=float),
            cleaned["gap"].to_numpy(dtype=bool),
            start,
            end,
        )
        chosen = scored.iloc[positions - start].reset_index(drop=True)
        columns = {name: chosen[name].to_numpy() for name in SCORE_COLUMNS}
        columns.update(ts=points["ts"].to_numpy(), value=values)
        return RealtimeScores(self.kpi, self.version, columns), tail

    def score_next(self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray, stamps,
                   max_points: int) -> RealtimeScores | None:
        """``score`` from ``tail`` alone, if the points (``ns``: their timestamps as
        nanoseconds since the epoch, increasing; ``stamps``: as the answer reports them) come
        after it; no database, no pandas. None: use ``score``."""
        self._check_spread(int(ns[0]), int(ns[-1]), max_points)
        return self._quick(tail, ns, values, stamps)

    def _quick(self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray, stamps
               ) -> RealtimeScores | None:
        columns = self._next_points(tail, ns, values)
        if columns is None:
            return None
        columns.update(ts=stamps, value=values)
        return RealtimeScores(self.kpi, self.version, columns)

    def _check_spread(self, first_ns: int, last_ns: int, max_points: int) -> None:
        steps = int((last_ns - first_ns) / self._step_ns) + 1
        limit = 2 * (max_points + self._context)
        if steps > limit:
            raise PointsTooSpread(
                f"the points span {steps} steps of {self.detector.freq_}, more than {limit}: "
                "send points closer together"
            )

    def _next_points(self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray
                     ) -> dict | None:
        """The common case, scored from the tail's judged state: points after the newest
        observation, on distinct grid slots, within the context of it. Only the slots from the
        newest observation's on are cleaned (its value, the points, short gaps between them
        interpolated) and only the new slots judged (``EnsembleDetector.score_after``), with the
        numbers the general path gives (tested). Returns the score columns but ``ts`` and
        ``value``; None: take the general path."""
        if tail.judged is None:
            return None
        slots = tail.grid.slots_ns(ns.tolist())
        first, last = slots[0], slots[-1]
        listed = values.tolist()
        # A point on a later slot is later than the newest observation (slots never decrease).
        if (
            first <= tail.last_slot
            or last - tail.last_slot > INCREMENTAL_MAX_SLOTS
            or not all(map(math.isfinite, listed))
            or any(later <= earlier for earlier, later in zip(slots, slots[1:]))
        ):
            return None
        stamps = tail.grid.stamps(tail.last_slot, last)  # from the newest observation's slot
        if len(slots) == last - tail.last_slot:  # every slot after it taken: nothing to fill
            scored = self.detector.score_after(tail.judged, stamps[1:], values)
        else:  # gaps between them, cleaned as the general path would (from the newest value)
            value, gap = fill_between(
                [tail.last_slot, *slots], [float(tail.judged.y[-1]), *listed],
                stamps.view(np.int64).tolist(),
            )
            scored = self.detector.score_after(
                tail.judged, stamps[1:], value[1:], gap[1:],
                report=[slot - tail.last_slot - 1 for slot in slots],
            )
        return {name: scored[name] for name in SCORE_COLUMNS[2:]}

    def _stored_tail(self, engine: sa.Engine) -> _StoredTail:
        """The cached tail if no observation from its ``since`` on was added or changed since
        it was read (one probe of the index), else a fresh one."""
        tail = self._tail
        if tail is not None and tail.since is not None:
            now = serving.observation_watermark(engine, self.kpi, tail.since)
            if now == tail.watermark:
                return tail
        tail = self._read_tail(engine)
        self._tail = tail
        return tail

    def _read_tail(self, engine: sa.Engine) -> _StoredTail:
        newest = serving.newest_observation_ts(engine, self.kpi)
        if newest is None:
            nothing = pd.DataFrame(columns=["kpi", "ts", "value"])
            return _StoredTail(
                serving.ObservationWatermark(None, 0, None, None), None, None, -1, nothing, nothing
            )
        since = pd.Timestamp(newest) - scoring_reach(self.detector)
        # The watermark is read before the rows: a write in between makes it stale, not wrong.
        watermark = serving.observation_watermark(engine, self.kpi, since)
        raw = store.load_observations_from(engine, self.kpi, since)
        grid = Grid(pd.Timestamp(watermark.first_ts), self.detector.freq_)
        raw_slots = grid.slots(raw["ts"])
        last_slot = int(raw_slots[-1])
        settled_slots = raw_slots[raw_slots <= last_slot - SCORING_SLACK_POINTS]
        redo_from = settled_slots[-1] if len(settled_slots) else raw_slots[0]
        cleaned = clean_series(raw, grid)
        return _StoredTail(
            watermark, since, grid, last_slot,
            settled=cleaned[grid.slots(cleaned["ts"]) < redo_from],
            redo=raw[raw_slots >= redo_from],
            judged=self.detector.prepare(
                cleaned["ts"], cleaned["value"].to_numpy(dtype=float), ahead=INCREMENTAL_MAX_SLOTS
            ),
        )

    def _after_stored(self, tail: _StoredTail, points: pd.DataFrame) -> pd.DataFrame:
        """The cleaned series up to the points, all later than every stored observation: the
        tail's settled rows, then its last observations cleaned again with the points."""
        if tail.grid is None:  # no history: the points alone, on their own grid
            return clean_series(points, Grid(points["ts"].iloc[0], self.detector.freq_))
        context = self.detector.context_points
        first_slot = int(tail.grid.slots(points["ts"].iloc[:1])[0])
        if first_slot - tail.last_slot > context:
            # Silent for longer than the context: every context slot is part of one long gap.
            start = tail.grid.origin + (first_slot - context) * tail.grid.step
            silence = pd.DataFrame(
                {
                    "ts": pd.date_range(start, periods=context, freq=tail.grid.step),
                    "value": np.nan,
                    "filled": False,
                    "gap": True,
                }
            )
            return pd.concat([silence, clean_series(points, tail.grid)], ignore_index=True)
        fresh = clean_series(pd.concat([tail.redo, points]), tail.grid)
        return pd.concat([tail.settled, fresh], ignore_index=True)

    def _among_stored(
        self, engine: sa.Engine, tail: _StoredTail, points: pd.DataFrame
    ) -> pd.DataFrame:
        """The cleaned series up to the points, read for them: the stored observations before
        the first point (the later ones are left out) and the points, as the scoring window
        would read them."""
        first = points["ts"].iloc[0]
        stored = store.load_observations_from(
            engine, self.kpi, first - scoring_reach(self.detector), before=first
        )
        origin = min(tail.grid.origin, first)  # points before the history start its grid
        return clean_series(pd.concat([stored, points]), Grid(origin, self.detector.freq_))


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
        error=step.error or total.error,
        outages=total.outages + step.outages,
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
    slots = Grid(ts.min(), frequency).slots(ts)
    return int(len(slots) - len(np.unique(slots)))
