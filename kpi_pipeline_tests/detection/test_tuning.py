"""Per-KPI tuning (kpi_pipeline/detection/tuning.py) on small seeded series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.config import DetectorConfig
from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.tuning import (
    EVENT_F1,
    FORECAST_MAE,
    FOREST_KEYS,
    PROPHET_KEYS,
    NotEnoughHistory,
    TuningSettings,
    fold_blocks,
    fold_errors,
    tune,
)

N = 24 * 30
# Pinned by hand: with the log transform on, a multiplicative KPI is additive in log space.
ADDITIVE_WORLD = apply_parameters(DetectorConfig(), {"log_transform": False})


def growing_cycle(seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Hourly points whose daily cycle grows with the level (20 to 200): multiplicative
    seasonality, which the default additive Prophet gets clearly wrong."""
    hours = np.arange(N)
    level = 20 + 180 * hours / N
    values = level * (1 + 0.4 * np.sin(2 * np.pi * hours / 24))
    values += np.random.default_rng(seed).normal(0, 1, N)
    return pd.date_range("2025-01-01", periods=N, freq="h", tz="UTC"), values


def test_tuning_beats_defaults_that_are_clearly_wrong():
    ts, values = growing_cycle()
    messages: list[str] = []

    result = tune(
        ts, values, ADDITIVE_WORLD, settings=TuningSettings(max_trials=8, budget_seconds=600), progress=messages.append
    )

    assert result.objective == FORECAST_MAE
    assert set(result.params) == set(PROPHET_KEYS)  # forecast error cannot judge the forest
    assert result.params["prophet.seasonality_mode"] == "multiplicative"
    # Without labels the trend may only get stiffer: a flexible one would follow incidents.
    assert result.params["prophet.changepoint_prior_scale"] <= DetectorConfig().prophet.changepoint_prior_scale
    assert result.value < 0.5 * result.default_value
    assert result.improved
    assert result.trials == 8 and len(messages) == 8
    assert messages[0].startswith("trial 1: forecast_mae")


def test_tuning_is_repeatable_with_its_seed():
    ts, values = growing_cycle()
    settings = TuningSettings(max_trials=4, budget_seconds=600, seed=3)
    first = tune(ts, values, ADDITIVE_WORLD, settings=settings)
    again = tune(ts, values, ADDITIVE_WORLD, settings=settings)
    assert (first.params, first.value) == (again.params, again.value)


def test_a_fold_is_judged_without_any_later_point():
    ts, values = growing_cycle()
    blocks = fold_blocks(N, DetectorConfig(), 3)
    before = fold_errors(ts, values, ADDITIVE_WORLD, blocks)
    changed = values.copy()
    changed[blocks[1][0] :] = 1e6  # everything from the second fold on

    after = fold_errors(ts, changed, ADDITIVE_WORLD, blocks)

    assert after[0] == before[0]
    assert after[1] != before[1]


def test_folds_are_the_second_half_in_equal_blocks_after_enough_history():
    assert fold_blocks(100, DetectorConfig(min_train_points=48), 2) == [(50, 75), (75, 100)]
    assert fold_blocks(100, DetectorConfig(min_train_points=70), 3) == [(70, 80), (80, 90), (90, 100)]
    with pytest.raises(NotEnoughHistory):
        fold_blocks(50, DetectorConfig(min_train_points=48), 3)


def test_pinned_keys_are_not_searched():
    ts, values = growing_cycle()
    pinned = apply_parameters(ADDITIVE_WORLD, {"prophet.seasonality_mode": "additive"})
    result = tune(
        ts,
        values,
        pinned,
        fixed=["prophet.seasonality_mode"],
        settings=TuningSettings(max_trials=2, budget_seconds=600),
    )
    assert "prophet.seasonality_mode" not in result.params


def test_labels_switch_to_event_f1_over_the_whole_ensemble():
    ts, values = growing_cycle()
    values = values.copy()
    incidents = np.zeros(N, dtype=bool)
    for start in (420, 560, 680):
        incidents[start : start + 3] = True
        values[start : start + 3] += 150

    result = tune(
        ts,
        values,
        apply_parameters(ADDITIVE_WORLD, {"prophet.seasonality_mode": "multiplicative"}),
        incidents=incidents,
        settings=TuningSettings(max_trials=2, budget_seconds=600),
    )

    assert result.objective == EVENT_F1
    assert set(result.params) == {*PROPHET_KEYS, *FOREST_KEYS}
    assert result.default_value == 1.0  # the three incidents caught, no false alarm
    assert result.value >= result.default_value
