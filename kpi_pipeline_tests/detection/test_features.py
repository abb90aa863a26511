import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.features import (
    FEATURE_COLUMNS,
    ROLLING_WINDOW,
    build_features,
    calendar_features,
    feature_context,
    is_holiday,
    season_lag,
)

HOUR = pd.Timedelta(hours=1)
SEED_COLUMNS = [
    "rolling_mean_7",
    "rolling_std_7",
    "diff_1",
    "lag_1",
    "lag_season",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "month_sin",
    "month_cos",
    "is_weekend",
    "is_holiday",
]


def hourly(n: int, start: str = "2025-06-30") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h", tz="UTC")


def test_the_seed_feature_columns_exist_one_row_per_point():
    ts = hourly(50)
    features = build_features(ts, np.arange(50.0), HOUR)
    assert list(features.columns) == FEATURE_COLUMNS
    assert set(SEED_COLUMNS) <= set(features.columns)
    assert len(features) == 50


def test_value_features_describe_the_points_before_t():
    values = np.array([1.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0, 64.0, 81.0, 100.0])
    features = build_features(hourly(10), values, HOUR)
    t = 9
    before = values[t - ROLLING_WINDOW : t]
    assert features["rolling_mean_7"][t] == pytest.approx(before.mean())
    assert features["rolling_std_7"][t] == pytest.approx(before.std(ddof=1))
    assert features["lag_1"][t] == values[t - 1]
    assert features["diff_1"][t] == values[t] - values[t - 1]
    assert np.isnan(features["lag_1"][0]) and np.isnan(features["rolling_mean_7"][0])


def test_lag_season_is_one_day_back_on_hourly_data():
    values = np.arange(30.0)
    features = build_features(hourly(30), values, HOUR)
    assert features["lag_season"][24:].tolist() == values[:6].tolist()
    assert features["lag_season"][:24].isna().all()


@pytest.mark.parametrize(
    "freq, points",
    [
        (pd.Timedelta(minutes=5), 288),
        (HOUR, 24),
        (pd.Timedelta(days=1), 7),
        (pd.Timedelta(weeks=1), 1),
        (None, 1),
    ],
)
def test_season_lag_is_one_cycle(freq, points):
    assert season_lag(freq) == points


def _extended(prefix_values: np.ndarray, extra: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wild = rng.normal(0.0, 1e6, extra)
    wild[::5] = np.nan
    return np.concatenate([prefix_values, wild])


@pytest.mark.parametrize(
    "start, k, extra",
    [
        ("2025-06-30", 60, 100),
        # Ends on Dec 31 2027 and extends into 2028 (and years beyond): the holiday calendar
        # then spans more years, which must not change the flags already given.
        ("2027-12-29", 72, 24 * 400),
    ],
)
def test_no_look_ahead_appending_points_never_changes_earlier_features(start, k, extra):
    rng = np.random.default_rng(0)
    prefix_values = 100 + rng.normal(0.0, 1.0, k)
    ts = hourly(k + extra, start)
    short = build_features(ts[:k], prefix_values, HOUR)
    long = build_features(ts, _extended(prefix_values, extra), HOUR)
    pd.testing.assert_frame_equal(long.iloc[:k], short)


def test_calendar_features_do_not_look_ahead_across_years():
    ts = hourly(24 * 3, "2027-12-30")
    alone = calendar_features(ts[:48])
    with_future = calendar_features(ts.append(hourly(24, "2031-07-04")))
    pd.testing.assert_frame_equal(with_future.iloc[:48], alone, check_freq=False)
    assert alone["is_holiday"].loc["2027-12-31"].eq(1).all()  # New Year's Day 2028, observed


def test_is_holiday_on_independence_day_in_the_us_only():
    ts = hourly(72, "2025-07-03")  # Jul 3, 4, 5
    us = build_features(ts, np.zeros(72), HOUR)["is_holiday"]
    assert us.tolist() == [0] * 24 + [1] * 24 + [0] * 24
    german = build_features(ts, np.zeros(72), HOUR, country="DE")["is_holiday"]
    assert german.sum() == 0


def test_holiday_country_is_configurable():
    unity_day = pd.DatetimeIndex([pd.Timestamp("2025-10-03 12:00", tz="UTC")])
    assert is_holiday(unity_day, "DE").tolist() == [True]
    assert is_holiday(unity_day, "US").tolist() == [False]


def test_calendar_encodings():
    ts = pd.DatetimeIndex(pd.to_datetime(["2025-07-05 06:00", "2025-07-07 18:00"], utc=True))
    features = calendar_features(ts)
    assert features["is_weekend"].tolist() == [1, 0]  # Saturday, Monday
    assert features["hour_sin"].tolist() == pytest.approx([1.0, -1.0])
    assert features["hour_cos"].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert features["dow_sin"].iloc[1] == pytest.approx(0.0)  # Monday is day 0
    assert features["dow_cos"].iloc[1] == pytest.approx(1.0)


@pytest.mark.parametrize("freq", [HOUR, pd.Timedelta(days=1), pd.Timedelta(minutes=15)])
def test_features_from_feature_context_points_before_equal_the_whole_series(freq):
    rng = np.random.default_rng(1)
    ts = pd.date_range("2025-06-30", periods=600, freq=freq, tz="UTC")
    values = 100 + rng.normal(0.0, 1.0, len(ts))
    values[[40, 41, 300]] = np.nan  # gaps
    whole = build_features(ts, values, freq)
    context = feature_context(freq)
    for first in (context, context + 1, 450):
        part = build_features(ts[first - context :], values[first - context :], freq)
        pd.testing.assert_frame_equal(
            part.iloc[context:].reset_index(drop=True),
            whole.iloc[first:].reset_index(drop=True),
            check_exact=False,
            rtol=1e-12,
            atol=1e-12,
        )
        # One point fewer and the first row's features differ: the context is not too long.
        short = build_features(ts[first - context + 1 :], values[first - context + 1 :], freq)
        assert not np.allclose(short.iloc[context - 1], whole.iloc[first], equal_nan=True)
