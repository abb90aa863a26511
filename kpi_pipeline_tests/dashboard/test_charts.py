"""The dashboard's Plotly figures (kpi_pipeline/dashboard/charts.py)."""

import numpy as np
import pandas as pd

from kpi_pipeline.dashboard import charts


def _series(points: int, anomalies: dict[int, str]) -> pd.DataFrame:
    ts = pd.date_range("2025-01-01", periods=points, freq="min", tz="UTC")
    frame = pd.DataFrame(
        {
            "ts": ts,
            "value": 10.0,
            "expected": 10.0,
            "lower": 9.0,
            "upper": 11.0,
            "score": 0.1,
            "is_anomaly": False,
            "severity": None,
            "flagged_by": None,
            "feedback": None,
        }
    )
    for at, severity in anomalies.items():
        frame.loc[at, ["is_anomaly", "severity", "score"]] = [True, severity, 0.9]
    return frame


def test_long_ranges_are_thinned_but_every_anomaly_is_drawn():
    series = _series(3 * charts.MAX_LINE_POINTS, {5: "low", 7: "critical", 29_999: "critical"})
    series.loc[7, "value"] = np.nan  # a missing-data gap flagged as an anomaly

    traces = {trace.name: trace for trace in charts.kpi_figure(series, "sales").data}

    assert len(traces["actual"].x) == charts.MAX_LINE_POINTS
    assert len(traces["low"].x) == 1
    assert list(traces["critical"].y) == [10.0, 10.0]  # the gap sits on the expected line
    assert "false positive" not in traces


def test_false_positives_are_drawn_apart():
    series = _series(10, {2: "high", 4: "high"})
    series.loc[4, "feedback"] = "false_positive"

    traces = {trace.name: trace for trace in charts.kpi_figure(series, "sales").data}

    assert len(traces["high"].x) == 1 and len(traces["false positive"].x) == 1


def test_components_in_log_space_read_as_level_and_percent():
    frame = pd.DataFrame(
        {
            "ds": pd.date_range("2025-01-01", periods=2, freq="h"),
            "trend": np.log([100.0, 200.0]),
            "daily": np.log([1.1, 0.9]),
            "yhat": 0.0,
        }
    )
    trend, daily = charts.components_figure(frame, log_space=True).data
    assert np.allclose(trend.y, [100.0, 200.0]) and np.allclose(daily.y, [10.0, -10.0])
    trend, daily = charts.components_figure(frame, log_space=False).data
    assert np.allclose(daily.y, np.log([1.1, 0.9]))
