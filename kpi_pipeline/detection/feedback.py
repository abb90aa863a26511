"""Feedback-adaptive thresholds: analysts' false positives raise a KPI's anomaly threshold.

The rule (docs/adaptive-thresholds.md). Each false-positive event an analyst marked on a KPI
adds ``feedback_threshold_step`` surprise units to that KPI's threshold, weighted by
``0.5 ** (age / feedback_half_life_days)`` where ``age`` is the time from the false positive
to the point being judged, and the total is capped at ``feedback_threshold_cap``:

    raise(t) = min(cap, step * sum over false positives f before t of 0.5 ** ((t - f) / half_life))

The threshold is a surprise (-log10 tail probability), so a raise of ``d`` makes alarms of the
kind the analyst rejected ``10 ** d`` times rarer; the cap keeps a gross deviation (whose
surprise is far beyond the threshold) alerting however many false positives were marked.
Confirmed incidents (true positives) raise nothing: they say the threshold caught what it
should. The raise applies at scoring time, to new points, without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kpi_pipeline.detection.config import DetectorConfig

NANOS_PER_DAY = 86_400 * 10**9


def threshold_raise(
    false_positives: Sequence[pd.Timestamp] | pd.DatetimeIndex,
    at: pd.DatetimeIndex,
    config: DetectorConfig,
    known_from: Sequence[pd.Timestamp] | pd.DatetimeIndex | None = None,
) -> np.ndarray:
    """The surprise added to the threshold at each timestamp of ``at`` by the false positives
    (the times of the points marked, one per event), in [0, ``feedback_threshold_cap``].

    A false positive counts for the points after it; with ``known_from`` (when each label was
    given), only for the points from then on, so a replay never uses a label before it exists.
    """
    at = pd.DatetimeIndex(at)
    fp = _index(false_positives)
    raised = np.zeros(len(at))
    if len(fp) == 0 or len(at) == 0 or config.feedback_threshold_step <= 0:
        return raised
    start = fp if known_from is None else _index(known_from)
    at_ns = _nanos(at)[:, None]
    age_days = (at_ns - _nanos(fp)[None, :]) / NANOS_PER_DAY
    counts = (age_days > 0) & (at_ns >= _nanos(start)[None, :])
    weights = np.where(counts, 0.5 ** (np.maximum(age_days, 0.0) / config.feedback_half_life_days), 0.0)
    raised = config.feedback_threshold_step * weights.sum(axis=1)
    return np.minimum(raised, config.feedback_threshold_cap)


def _index(stamps: Sequence[pd.Timestamp] | pd.DatetimeIndex) -> pd.DatetimeIndex:
    return stamps if isinstance(stamps, pd.DatetimeIndex) else pd.DatetimeIndex(list(stamps))


def _nanos(ts: pd.DatetimeIndex) -> np.ndarray:
    """Nanoseconds since the epoch (UTC; naive timestamps read as UTC)."""
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.asarray(ts, dtype="datetime64[ns]").view(np.int64).astype(float)
