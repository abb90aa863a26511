"""Real-time scoring: submitted points judged by a KPI's newest stored model.

The same path as the pipeline's scoring, only the points come from the request: the newest
registered version of the KPI's ensemble, rebuilt with ``EnsembleDetector.from_artifacts``;
the KPI's stored observations before the first submitted point as context; the combined series
cleaned by ``clean_observations`` and scored by ``score_segment``. Nothing is fitted and nothing
is written here.

Rebuilding a detector reads about a megabyte of artifacts, so each process keeps the detectors
it has built, keyed by (KPI, version): a retrain makes a new version, which is loaded on its
first use, and the old one ages out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.detection.ensemble import SCORE_COLUMNS, EnsembleDetector
from kpi_pipeline.detection.preprocess import clean_observations, infer_frequency
from kpi_pipeline.detection.walkforward import score_segment
from kpi_pipeline.store import serving


class UnknownKpi(LookupError):
    """No observation, score or model of this KPI exists."""


class NoModel(LookupError):
    """The KPI exists but no model has been trained for it yet."""


class PointsTooSpread(ValueError):
    """The points lie so far apart that scoring them would mean scoring a huge empty grid."""


class DetectorCache:
    """Fitted detectors by (KPI, version), least recently used first out; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._detectors: OrderedDict[tuple[str, str], EnsembleDetector] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._detectors)

    def get(self, engine: sa.Engine, kpi: str, version: str) -> EnsembleDetector:
        """The detector of version ``version`` of ``kpi``'s ensemble, built on first use."""
        key = (kpi, version)
        with self._lock:
            if key in self._detectors:
                self._detectors.move_to_end(key)
                return self._detectors[key]
        detector = _rebuild(engine, kpi, version)
        with self._lock:
            self._detectors[key] = detector
            while len(self._detectors) > self.size:
                self._detectors.popitem(last=False)
        return detector


def _rebuild(engine: sa.Engine, kpi: str, version: str) -> EnsembleDetector:
    artifacts = store.model_artifacts(engine, kpi, version)
    missing = [
        kind for kind in (*EnsembleDetector.COMPONENT_KINDS, "ensemble") if kind not in artifacts
    ]
    if missing:
        raise NoModel(
            f"model {version} of {kpi!r} is incomplete (no {', '.join(missing)} "
            "artifact); retrain it"
        )
    return EnsembleDetector.from_artifacts(artifacts)


@dataclass(frozen=True)
class RealtimeScores:
    kpi: str
    model_version: str
    scores: pd.DataFrame
    """One row per submitted point, in time order: the submitted ``ts`` and ``value``, then the
    detector's ``SCORE_COLUMNS``."""


def score_points(
    engine: sa.Engine,
    detectors: DetectorCache,
    kpi: str,
    points: pd.DataFrame,
    max_points: int,
) -> RealtimeScores:
    """Score ``points`` (columns ts, value; unique ts, any order) of ``kpi``.

    Each point is scored on the KPI's regular grid, after the stored points before the first
    submitted one; an off-grid point gets the score of the grid point it falls on. Raises
    ``UnknownKpi``, ``NoModel``, or ``PointsTooSpread`` when the context and points would span
    more than ``2 * (max_points + context)`` grid steps.
    """
    version = serving.newest_model_version(engine, kpi)
    if version is None:
        if serving.kpi_exists(engine, kpi):
            raise NoModel(f"no trained model for {kpi!r} yet (too little history, or training "
                          "has not run)")
        raise UnknownKpi(f"unknown KPI {kpi!r}")
    detector = detectors.get(engine, kpi, version)

    points = points.sort_values("ts", ignore_index=True)
    first = points["ts"].iloc[0]
    reach = detector.context_points
    since = first - reach * detector.freq_ if detector.freq_ is not None else None
    context = serving.recent_observations(engine, kpi, before=first, limit=reach, since=since)
    observed = pd.concat([context, points.assign(kpi=kpi)], ignore_index=True)
    _check_spread(observed["ts"], 2 * (max_points + reach))

    cleaned, _frequencies = clean_observations(observed)
    grid = pd.DatetimeIndex(cleaned["ts"])
    positions = grid.get_indexer(pd.DatetimeIndex(points["ts"]), method="nearest")
    start, end = int(positions.min()), int(positions.max()) + 1
    scored = score_segment(
        detector,
        grid,
        cleaned["value"].to_numpy(dtype=float),
        cleaned["gap"].to_numpy(dtype=bool),
        start,
        end,
    )
    chosen = scored.iloc[positions - start].reset_index(drop=True)
    scores = chosen[SCORE_COLUMNS].assign(ts=points["ts"], value=points["value"])
    return RealtimeScores(kpi, version, scores)


def _check_spread(ts: pd.Series, limit: int) -> None:
    step = infer_frequency(ts)
    if step is None:
        return
    steps = int((ts.max() - ts.min()) / step) + 1
    if steps > limit:
        raise PointsTooSpread(
            f"the points and their context span {steps} steps of {step}, more than {limit}: "
            "send points closer together"
        )


def as_records(scores: pd.DataFrame) -> list[dict]:
    """Score rows as plain Python values with missing values as None (JSON has no NaN)."""
    return scores.astype(object).where(scores.notna(), None).to_dict("records")
