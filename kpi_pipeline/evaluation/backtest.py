"""Streaming backtest: replay a series as production would see it.

Train on the first ``initial`` points, then walk forward (``walkforward.walk_forward``, the loop
the pipeline runs over a new KPI's history): score each block of new points only with models
trained on earlier points, retrain after every block, and exclude points already flagged with high
confidence from later training sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline.detection.events import assign_events
from kpi_pipeline.detection.walkforward import (
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    Review,
    history_cutoffs,
    initial_training_points,
    retrain_every_points,
    training_cutoffs,
    walk_forward,
)


@dataclass
class BacktestResult:
    scores: pd.DataFrame
    """One row per input point, input order: the ensemble's columns plus event_id and alert."""
    retrains: int
    labels: list[tuple[int, str]] = field(default_factory=list)
    """With simulated feedback: each event's first position and the label it was given."""


def stream_scores(
    ts,
    values,
    initial: int | None = None,
    config: DetectorConfig | None = None,
    retrain_every: int | None = None,
    gap: np.ndarray | None = None,
    kpi: str = "series",
    review: Review | None = None,
) -> BacktestResult:
    """Score every point at or after ``initial`` with models fitted on earlier points only
    (``walkforward.walk_forward``), then group the anomalies into events as the pipeline does.

    By default the schedule is the one the pipeline gives a new KPI's history
    (``walkforward.history_cutoffs``); ``initial`` and ``retrain_every`` override it.
    ``review``: simulated analyst feedback (``simulated_analyst``), applied as the product does.
    """
    config = config or DetectorConfig()
    ts = pd.DatetimeIndex(ts)
    if initial is None and retrain_every is None:
        cutoffs = history_cutoffs(ts, config)
    else:
        initial = initial if initial is not None else initial_training_points(len(ts), config.min_train_points)
        retrain_every = retrain_every or retrain_every_points(ts)
        cutoffs = training_cutoffs(len(ts), initial, retrain_every)
    result = walk_forward(ts, values, cutoffs, config, gap=gap, review=review)
    scores = result.scores
    event_ids, alert = assign_events(kpi, ts, scores["is_anomaly"].to_numpy(), config.event_merge_gap)
    scores["event_id"] = event_ids
    scores["alert"] = alert
    return BacktestResult(scores=scores, retrains=len(result.models), labels=result.labels)


def simulated_analyst(windows: list[tuple[int, int]], delay: pd.Timedelta = pd.Timedelta(days=1)) -> Review:
    """An analyst who, ``delay`` after each event starts, confirms it if it starts inside a
    labelled window (inclusive ``(first, last)`` positions) and marks it a false positive
    otherwise."""
    inside = np.zeros(max((last + 1 for _, last in windows), default=0), dtype=bool)
    for first, last in windows:
        inside[first : last + 1] = True

    def label(position: int) -> str:
        return TRUE_POSITIVE if position < len(inside) and inside[position] else FALSE_POSITIVE

    return Review(label, delay)
