"""The numpy point forecast against ``Prophet.predict`` on small fitted models."""

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.prophet_model import Prophet, PointForecast, ProphetDetector

RTOL = 1e-8


def _seasonal(ts: pd.DatetimeIndex, seed: int) -> np.ndarray:
    """A rising level with daily and weekly cycles and a little noise."""
    hours = np.asarray((ts - ts[0]) / pd.Timedelta(hours=1))
    rng = np.random.default_rng(seed)
    daily = 10 * np.sin(2 * np.pi * hours / 24)
    weekly = 5 * np.cos(2 * np.pi * hours / (7 * 24))
    return 100 + 0.01 * hours + daily + weekly + rng.normal(0, 1, len(ts))


def _fit(ts: pd.DatetimeIndex, y: np.ndarray, **params) -> ProphetDetector:
    return ProphetDetector(**params).fit(ts, y)


def _query(start: str, end: str, freq: str) -> pd.DatetimeIndex:
    return pd.date_range(start, end, freq=freq, tz="UTC")


def _assert_matches_prophet(detector: ProphetDetector, ts: pd.DatetimeIndex) -> None:
    expected = detector.forecast(ts)["yhat"].to_numpy()
    point_forecast = PointForecast.from_model(detector.model_)
    assert point_forecast is not None, "the model fell back to Prophet.predict"
    np.testing.assert_allclose(point_forecast(ts.tz_localize(None)), expected, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(detector.predict(ts), point_forecast(ts.tz_localize(None)))


@pytest.fixture(scope="module")
def hourly_with_yearly() -> ProphetDetector:
    # Around New Year, so training holds holidays; yearly forced on (auto needs two years).
    ts = pd.date_range("2024-12-01", periods=45 * 24, freq="h", tz="UTC")
    y = _seasonal(ts, seed=0)
    y[ts.normalize() == pd.Timestamp("2024-12-25", tz="UTC")] += 30  # a holiday effect
    return _fit(ts, y, yearly_seasonality=True)


@pytest.fixture(scope="module")
def five_minute() -> ProphetDetector:
    ts = pd.date_range("2025-03-03", periods=4 * 288, freq="5min", tz="UTC")
    return _fit(ts, _seasonal(ts, seed=1))


def test_hourly_model_with_yearly_seasonality_and_holidays_matches_prophet(hourly_with_yearly):
    model = hourly_with_yearly.model_
    assert {"daily", "weekly", "yearly"} <= set(model.seasonalities)
    assert "holidays" in model.train_component_cols.columns
    # The training window, then the holidays right after it.
    _assert_matches_prophet(hourly_with_yearly, _query("2024-12-01", "2025-01-25", "h"))


def test_points_far_beyond_and_before_training_match_prophet(hourly_with_yearly):
    # Extrapolated trend a year and more ahead, and timestamps before the first training point.
    _assert_matches_prophet(hourly_with_yearly, _query("2026-02-01", "2026-03-01", "7h"))
    _assert_matches_prophet(hourly_with_yearly, _query("2023-06-01", "2024-11-30", "13h"))


def test_holiday_days_get_the_holiday_effect(hourly_with_yearly):
    ts = _query("2025-12-24", "2025-12-26 23:00", "h")
    days = ts.normalize().day
    components = hourly_with_yearly.components(ts)
    assert (components["holidays"][days == 25] != 0).all()
    assert (components["holidays"][days != 25] == 0).all()
    _assert_matches_prophet(hourly_with_yearly, ts)


def test_five_minute_model_matches_prophet(five_minute):
    assert set(five_minute.model_.seasonalities) == {"daily"}
    _assert_matches_prophet(five_minute, _query("2025-03-01", "2025-03-10", "5min"))


def test_multiplicative_seasonality_matches_prophet():
    ts = pd.date_range("2025-06-02", periods=21 * 24, freq="h", tz="UTC")
    detector = _fit(ts, _seasonal(ts, seed=2), seasonality_mode="multiplicative")
    assert detector.model_.seasonalities["daily"]["mode"] == "multiplicative"
    _assert_matches_prophet(detector, _query("2025-05-20", "2025-07-20", "3h"))


def test_holiday_windows_match_prophet():
    # Our detector uses single-day holidays; Prophet's windows must still come out right.
    ts = pd.date_range("2025-06-23", periods=21 * 24, freq="h", tz="UTC")
    y = _seasonal(ts, seed=3)
    y[(ts >= "2025-07-03") & (ts < "2025-07-07")] += 20
    holidays = pd.DataFrame(
        {
            "holiday": ["independence", "other"],
            "ds": pd.to_datetime(["2025-07-04", "2025-06-30"]),
            "lower_window": [-1, 0],
            "upper_window": [2, 1],
        }
    )
    model = Prophet(holidays=holidays, uncertainty_samples=0)
    model.fit(pd.DataFrame({"ds": ts.tz_localize(None), "y": y}))
    query = pd.DataFrame({"ds": pd.date_range("2025-06-20", "2025-07-20", freq="h")})
    forecast = PointForecast.from_model(model)

    assert len(forecast.holiday_days) == 4 + 2
    np.testing.assert_allclose(forecast(pd.DatetimeIndex(query["ds"])), model.predict(query)["yhat"], rtol=RTOL, atol=0)


def test_a_detector_read_back_from_its_state_forecasts_alike(five_minute):
    ts = _query("2025-03-06", "2025-03-08", "5min")
    before = five_minute.predict(ts)
    restored = ProphetDetector.from_state(five_minute.to_state())
    np.testing.assert_array_equal(restored.predict(ts), before)
    assert restored.__dict__["_model"] is None  # the point forecast needs no Prophet model
    # Prophet's own model is decoded on first use, for its components.
    pd.testing.assert_frame_equal(restored.components(ts), five_minute.components(ts))
    assert restored.get_params() == five_minute.get_params()


def test_models_it_cannot_mirror_fall_back_to_prophet():
    ts = pd.date_range("2025-03-03", periods=10 * 24, freq="h", tz="UTC")
    frame = pd.DataFrame({"ds": ts.tz_localize(None), "y": _seasonal(ts, seed=4)})
    model = Prophet(growth="flat", uncertainty_samples=0)
    model.add_regressor("promotion")
    model.fit(frame.assign(promotion=np.arange(len(frame)) % 2))

    assert PointForecast.from_model(model) is None
