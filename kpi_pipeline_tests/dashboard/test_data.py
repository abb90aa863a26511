"""Backtest discovery of the dashboard (kpi_pipeline/dashboard/data.py)."""

import json
import os

import pandas as pd
import pytest
import streamlit as st

from kpi_pipeline.dashboard import data


@pytest.fixture(autouse=True)
def _fresh_cache():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _run(directory, kpis, written_at, per_kpi=None):
    directory.mkdir(parents=True)
    summary = {"corpus": str(directory), "events": {"precision": 1.0}, "per_kpi": per_kpi or {}}
    (directory / "summary.json").write_text(json.dumps(summary))
    for kpi in kpis:
        path = directory / f"{kpi}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "timestamp": ["2025-01-01 00:00:00"],
                "value": [1.0],
                "anomaly_score": [0.1],
                "is_anomaly": [0],
                "alert": [0],
            }
        ).to_csv(path, index=False)
    os.utime(directory / "summary.json", (written_at, written_at))


def test_backtests_are_the_runs_holding_the_kpi_newest_first(tmp_path):
    _run(tmp_path / "old", ["sales"], 1_000)
    _run(tmp_path / "nested" / "new", ["sales"], 2_000, {"sales": {"recall": 0.5}})
    _run(tmp_path / "other", ["orders"], 3_000)

    found = data.backtests(tmp_path, "sales")

    assert [run.run for run in found] == ["nested/new", "old"]
    assert found[0].kpi_metrics == {"recall": 0.5} and found[1].kpi_metrics is None
    assert found[0].scores["value"].tolist() == [1.0]
    assert data.backtests(tmp_path / "missing", "sales") == []


def test_nab_style_series_names_and_hostile_names(tmp_path):
    _run(tmp_path / "nab", ["realTweets/Twitter_volume_AAPL"], 1_000)
    (tmp_path / "secret.csv").write_text("timestamp,value\n")

    assert len(data.backtests(tmp_path, "realTweets/Twitter_volume_AAPL")) == 1
    assert data.backtests(tmp_path, "../secret") == []


def test_unreadable_runs_are_skipped(tmp_path):
    _run(tmp_path / "good", ["sales"], 1_000)
    _run(tmp_path / "broken", ["sales"], 2_000)
    (tmp_path / "broken" / "summary.json").write_text("{not json")

    assert [run.run for run in data.backtests(tmp_path, "sales")] == ["good"]
