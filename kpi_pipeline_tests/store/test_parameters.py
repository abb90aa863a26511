"""KPI parameters (kpi_pipeline/store/parameters.py): tuned and pinned overrides, pins win."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.detection.parameters import InvalidParameter

TUNING = dict(objective="forecast_mae", objective_value=1.5, default_value=2.0, trials=12, pruned_trials=3)


def test_pinned_keys_win_over_tuned_ones_and_tuning_leaves_pins_alone(migrated_engine):
    store.pin_parameters(migrated_engine, "sales", {"prophet.changepoint_prior_scale": 0.2})
    store.save_tuned_parameters(
        migrated_engine,
        "sales",
        {"prophet.changepoint_prior_scale": 0.01, "iforest.n_estimators": 200},
        **TUNING,
    )

    assert store.load_parameters(migrated_engine) == {
        "sales": {"prophet.changepoint_prior_scale": 0.2, "iforest.n_estimators": 200}
    }
    rows = store.load_parameter_rows(migrated_engine).set_index("source")
    assert rows.loc["pinned", "params"] == {"prophet.changepoint_prior_scale": 0.2}
    assert rows.loc["tuned", "trials"] == 12 and rows.loc["tuned", "pruned_trials"] == 3
    assert pd.isna(rows.loc["pinned", "objective"]) and pd.isna(rows.loc["pinned", "trials"])


def test_unpin_brings_the_tuned_value_back_and_removes_the_row_when_empty(migrated_engine):
    store.save_tuned_parameters(migrated_engine, "sales", {"threshold": 4.0}, **TUNING)
    store.pin_parameters(migrated_engine, "sales", {"threshold": 5, "prophet.seasonality_mode": "multiplicative"})

    assert store.unpin_parameters(migrated_engine, "sales", ["threshold"]) == ["threshold"]
    assert store.load_parameters(migrated_engine)["sales"] == {
        "threshold": 4.0,
        "prophet.seasonality_mode": "multiplicative",
    }
    assert store.unpin_parameters(migrated_engine, "sales") == ["prophet.seasonality_mode"]
    assert list(store.load_parameter_rows(migrated_engine)["source"]) == ["tuned"]


def test_writes_are_idempotent(migrated_engine):
    for _ in range(2):
        store.pin_parameters(migrated_engine, "sales", {"threshold": 4.5}, at="2026-01-01")
        store.save_tuned_parameters(migrated_engine, "sales", {"iforest.max_samples": 128}, at="2026-01-01", **TUNING)
    rows = store.load_parameter_rows(migrated_engine)
    assert len(rows) == 2
    assert store.load_parameters(migrated_engine, ["sales", "orders"]) == {
        "sales": {"threshold": 4.5, "iforest.max_samples": 128}
    }


def test_bad_keys_and_values_are_refused_and_nothing_is_written(migrated_engine):
    store.pin_parameters(migrated_engine, "sales", {"threshold": 4.0})
    with pytest.raises(InvalidParameter, match="unknown parameter 'prophet.changepoint'"):
        store.pin_parameters(migrated_engine, "sales", {"threshold": 5.0, "prophet.changepoint": 0.1})
    with pytest.raises(InvalidParameter, match="iforest.n_estimators must be int"):
        store.save_tuned_parameters(migrated_engine, "sales", {"iforest.n_estimators": "many"}, **TUNING)
    with pytest.raises(KeyError, match="no pinned log_transform"):
        store.unpin_parameters(migrated_engine, "sales", ["log_transform"])
    assert store.load_parameters(migrated_engine) == {"sales": {"threshold": 4.0}}
