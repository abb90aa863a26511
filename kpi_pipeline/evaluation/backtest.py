"""Streaming backtest: replay a series as production would see it.

Train on the first ``initial`` points, then walk forward: score each block of new points only with
models trained on earlier points, retrain after every block (the nightly training of production),
and exclude points already flagged with high confidence from later training sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector, InsufficientHistory
from kpi_pipeline.detection.events import assign_events
from kpi_pipeline.detection.walkforward import retrain_every_points, score_segment, training_cutoffs

@dataclass
class BacktestResult:
    scores: pd.DataFrame
    """One row per input point, input order: the ensemble's columns plus event_id and alert."""
    retrains: int


def stream_scores(
    ts,
    values,
    initial: int,
    config: DetectorConfig | None = None,
    retrain_every: int | None = None,
    gap: np.ndarray | None = None,
    kpi: str = "series",
) -> BacktestResult:
    """Score every point at or after ``initial`` with models fitted on earlier points only."""
    config = config or DetectorConfig()
    ts = pd.DatetimeIndex(ts)
    y = np.asarray(values, dtype=float)
    gap = np.zeros(len(y), dtype=bool) if gap is None else np.asarray(gap, dtype=bool)
    retrain_every = retrain_every or retrain_every_points(ts)
    high_confidence = config.severity_scores[2]

    cutoffs = training_cutoffs(len(y), initial, retrain_every)
    blocks = [_unscored(ts[: min(initial, len(y))], y[: min(initial, len(y))])]
    score_so_far = np.zeros(len(y))
    retrains = 0
    for start, end in zip(cutoffs, [*cutoffs[1:], len(y)]):
        detector = EnsembleDetector(config)
        try:
            detector.fit(ts[:start], y[:start], exclude=score_so_far[:start] >= high_confidence)
            retrains += 1
        except InsufficientHistory:
            blocks.append(_unscored(ts[start:end], y[start:end]))
            continue
        block = score_segment(detector, ts, y, gap, start, end)
        score_so_far[start:end] = block["score"].to_numpy()
        blocks.append(block)

    scores = pd.concat(blocks, ignore_index=True)
    event_ids, alert = assign_events(kpi, ts, scores["is_anomaly"].to_numpy(), config.event_merge_gap)
    scores["event_id"] = event_ids
    scores["alert"] = alert
    return BacktestResult(scores=scores, retrains=retrains)


def _unscored(ts: pd.DatetimeIndex, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": ts,
            "value": y,
            "expected": np.nan,
            "lower": np.nan,
            "upper": np.nan,
            "prophet_score": 0.0,
            "iforest_score": 0.0,
            "score": 0.0,
            "is_anomaly": False,
            "severity": None,
            "flagged_by": None,
        }
    )
