import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.config import DetectorConfig
from kpi_pipeline.detection.ensemble import EnsembleDetector
from kpi_pipeline.detection.walkforward import (
    history_cutoffs,
    initial_training_points,
    retrain_every_points,
    score_segment,
    training_cutoffs,
    walk_forward,
)
from kpi_pipeline_tests.detection.synthetic import daily_sine


@pytest.mark.parametrize(
    "freq, expected",
    [
        ("5min", 288),  # a day of 5-minute points
        ("h", 288),  # hourly: 12 days, not a single day of 24 points
        ("D", 28),  # daily: every four weeks, not every 288 days
    ],
)
def test_retrain_every_points(freq, expected):
    ts = pd.date_range("2025-01-01", periods=1000, freq=freq, tz="UTC")
    assert retrain_every_points(ts) == expected


def test_retrain_every_points_with_one_minute_data_is_a_day():
    ts = pd.date_range("2025-01-01", periods=100, freq="min", tz="UTC")
    assert retrain_every_points(ts) == 1440


@pytest.mark.parametrize(
    "n_points, min_points, expected",
    [
        (10_000, 48, 750),  # 15% would be 1500: capped
        (1_000, 48, 150),
        (100, 48, 48),  # 15% would be 15: never below the detector's minimum
    ],
)
def test_initial_training_points(n_points, min_points, expected):
    assert initial_training_points(n_points, min_points) == expected


def test_training_cutoffs_every_retrain_interval_after_initial():
    assert training_cutoffs(1000, 150, 288) == [150, 438, 726]
    assert training_cutoffs(151, 150, 288) == [150]


@pytest.mark.parametrize("n_points", [100, 150])
def test_no_cutoffs_without_points_after_initial(n_points):
    assert training_cutoffs(n_points, 150, 288) == []


@pytest.fixture(scope="module")
def fitted() -> tuple[EnsembleDetector, pd.DatetimeIndex, np.ndarray]:
    ts, y = daily_sine(200, seed=3)
    return EnsembleDetector().fit(ts[:100], y[:100]), ts, y


@pytest.mark.parametrize("start, end", [(100, 150), (150, 200), (120, 121), (3, 10)])
def test_score_segment_returns_exactly_the_segment(fitted, start, end):
    detector, ts, y = fitted
    gap = np.zeros(len(y), dtype=bool)
    scored = score_segment(detector, ts, y, gap, start, end)
    assert len(scored) == end - start
    assert list(scored["ts"]) == list(ts[start:end])
    np.testing.assert_array_equal(scored["value"], y[start:end])


def test_score_segment_passes_the_gap_flags_of_its_rows(fitted):
    detector, ts, y = fitted
    gap = np.zeros(len(y), dtype=bool)
    gap[140:145] = True
    scored = score_segment(detector, ts, np.where(gap, np.nan, y), gap, 130, 160)
    opens = np.zeros(30, dtype=bool)
    opens[10] = True  # the outage's first slot: one anomaly per outage
    assert (scored["flagged_by"] == "gap").tolist() == opens.tolist()


def contaminated_daily_kpi(n_days: int, share: float, seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """A daily KPI (a weekly pattern, 5% multiplicative noise) with ``share`` of its days
    incidents at random: the value times 0.4 or 2.2."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2022-01-03", periods=n_days, freq="D", tz="UTC")
    weekday = np.array([1.03, 1.04, 1.04, 1.02, 0.99, 0.95, 0.93])[ts.dayofweek.to_numpy()]
    values = 1000.0 * weekday * np.exp(rng.normal(0.0, 0.05, n_days))
    incident = rng.random(n_days) < share
    values[incident] *= rng.choice([0.4, 2.2], incident.sum())
    return ts, values, incident


def test_a_daily_kpi_with_eight_percent_of_its_days_anomalous_still_flags_them():
    # Its first model learns from a history already holding incidents, and every later one too:
    # they must not become what normal looks like.
    ts, values, incident = contaminated_daily_kpi(700, share=0.08)
    cutoffs = history_cutoffs(ts, DetectorConfig())
    flagged = walk_forward(ts, values, cutoffs).scores["is_anomaly"].to_numpy(dtype=bool)
    judged = np.arange(len(ts)) >= cutoffs[0]
    assert flagged[judged & incident].mean() >= 0.9
    assert flagged[judged & ~incident].mean() <= 0.01
