"""Walk-forward training and scoring: the one schedule shared by the pipeline and ``evaluate``.

A series is judged as production sees it: the first model is trained once ``initial`` points
exist, a new model every ``retrain_every`` points after that, and each point is scored only by the
newest model trained on points strictly before it. No look-ahead anywhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import EnsembleDetector
from kpi_pipeline.detection.preprocess import infer_frequency

RETRAIN_PERIOD = pd.Timedelta(days=1)
MIN_RETRAIN_POINTS = 288
MAX_INITIAL_POINTS = 750


def retrain_every_points(ts) -> int:
    """Points between retrains: a day of data, but at least ``MIN_RETRAIN_POINTS``.

    Daily on 5-minute data; on hourly data every 12 days, since a day of hourly points barely
    moves a model that has seen months.
    """
    freq = infer_frequency(pd.DatetimeIndex(ts))
    per_day = int(round(RETRAIN_PERIOD / freq)) if freq is not None else MIN_RETRAIN_POINTS
    return max(per_day, MIN_RETRAIN_POINTS)


def initial_training_points(n_points: int, min_points: int) -> int:
    """Points the first model learns from: 15% of the history, at most 750 (NAB's probation)."""
    return max(min_points, min(15 * n_points // 100, MAX_INITIAL_POINTS))


def training_cutoffs(n_points: int, initial: int, retrain_every: int) -> list[int]:
    """Positions p at which a model is trained on points ``[0, p)``."""
    return list(range(initial, n_points, retrain_every)) if n_points > initial else []


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
