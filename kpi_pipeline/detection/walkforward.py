"""Walk-forward training and scoring: the one schedule shared by the pipeline and ``evaluate``.

A series is judged as production sees it: the first model is trained once ``initial`` points
exist, a new model every ``retrain_every`` points after that, and each point is scored only by the
newest model trained on points strictly before it. Each block is scored before the next model is
trained, so the confident anomalies of a block are left out of every later training set. No
look-ahead anywhere.

``walk_forward`` is that loop. The pipeline runs it over a new KPI's history (and registers the
models it fitted); ``evaluate`` runs it over every labelled series; nothing else re-implements it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import (
    SCORE_COLUMNS,
    DetectorConfig,
    EnsembleDetector,
    InsufficientHistory,
    confident_anomalies,
)
from kpi_pipeline.detection.preprocess import infer_frequency

RETRAIN_PERIOD = pd.Timedelta(days=1)
MIN_RETRAIN_POINTS = 288
MAX_RETRAIN_PERIOD = pd.Timedelta(days=28)
MAX_INITIAL_POINTS = 750


def retrain_every_points(ts) -> int:
    """Points between retrains: a day of data, at least ``MIN_RETRAIN_POINTS``, at most
    ``MAX_RETRAIN_PERIOD`` of data.

    Daily on 5-minute data; on hourly data every 12 days, since a day of hourly points barely
    moves a model that has seen months; on daily data every four weeks, not every 288 days.
    """
    freq = infer_frequency(pd.DatetimeIndex(ts))
    if freq is None:
        return MIN_RETRAIN_POINTS
    per_day = int(round(RETRAIN_PERIOD / freq))
    at_most = max(int(MAX_RETRAIN_PERIOD // freq), 1)
    return max(per_day, min(MIN_RETRAIN_POINTS, at_most))


def initial_training_points(n_points: int, min_points: int) -> int:
    """Points the first model learns from: 15% of the history, at most 750 (NAB's probation)."""
    return max(min_points, min(15 * n_points // 100, MAX_INITIAL_POINTS))


def training_cutoffs(n_points: int, initial: int, retrain_every: int) -> list[int]:
    """Positions p at which a model is trained on points ``[0, p)``."""
    return list(range(initial, n_points, retrain_every)) if n_points > initial else []


def history_cutoffs(ts: pd.DatetimeIndex, config: DetectorConfig) -> list[int]:
    """The training cutoffs of a whole history judged for the first time (a new KPI)."""
    initial = initial_training_points(len(ts), config.min_train_points)
    return training_cutoffs(len(ts), initial, retrain_every_points(ts))


def score_segment(
    detector: EnsembleDetector,
    ts: pd.DatetimeIndex,
    values: np.ndarray,
    gap: np.ndarray,
    start: int,
    end: int,
) -> pd.DataFrame:
    """Score points ``[start, end)`` with the earlier points the detector needs as context."""
    context = min(start, detector.context_points)
    window = slice(start - context, end)
    return detector.score(ts[window], values[window], n_context=context, gap=gap[window])


@dataclass
class WalkForward:
    scores: pd.DataFrame
    """One row per input point, input order, ``SCORE_COLUMNS``; points no model scored have
    score 0 and no expectation."""
    models: list[tuple[int, EnsembleDetector]]
    """Each fitted model with its cutoff p (trained on points ``[0, p)``), oldest first."""
    skipped: list[tuple[int, str]]
    """Cutoffs at which no model could be trained, with the reason."""


def walk_forward(
    ts,
    values,
    cutoffs: list[int],
    config: DetectorConfig | None = None,
    gap: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> WalkForward:
    """Train at each cutoff, score the block up to the next one, leave that block's confident
    anomalies out of later training sets. ``exclude`` marks points known to be anomalous
    beforehand (confirmed incidents)."""
    config = config or DetectorConfig()
    ts = pd.DatetimeIndex(ts)
    y = np.asarray(values, dtype=float)
    n = len(y)
    gap = np.zeros(n, dtype=bool) if gap is None else np.asarray(gap, dtype=bool)
    excluded = np.zeros(n, dtype=bool) if exclude is None else np.asarray(exclude, bool).copy()
    first = cutoffs[0] if cutoffs else n
    blocks = [_unscored(ts[:first], y[:first])]
    models, skipped = [], []
    for start, end in zip(cutoffs, [*cutoffs[1:], n]):
        detector = EnsembleDetector(config)
        try:
            detector.fit(ts[:start], y[:start], exclude=excluded[:start])
        except InsufficientHistory as error:
            skipped.append((start, str(error)))
            blocks.append(_unscored(ts[start:end], y[start:end]))
            continue
        models.append((start, detector))
        block = score_segment(detector, ts, y, gap, start, end)
        excluded[start:end] |= confident_anomalies(block, config)
        blocks.append(block)
    scores = pd.concat(blocks, ignore_index=True)
    return WalkForward(scores=scores, models=models, skipped=skipped)


def _unscored(ts: pd.DatetimeIndex, y: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": ts, "value": y})
    for column in ("expected", "lower", "upper"):
        frame[column] = np.nan
    for column in ("prophet_score", "iforest_score", "score"):
        frame[column] = 0.0
    frame["is_anomaly"] = False
    frame["severity"] = None
    frame["flagged_by"] = None
    return frame[SCORE_COLUMNS]
