"""Per-point features computed from past values only.

A feature at time t depends on values at t and before, never after: appending points to a series
never changes the features of the points already there (tested).
"""

from __future__ import annotations

from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

ROLLING_WINDOW = 7

FEATURE_COLUMNS = [
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


@lru_cache(maxsize=32)
def _holiday_calendar(country: str, first_year: int, last_year: int) -> frozenset:
    return frozenset(holidays.country_holidays(country, years=range(first_year, last_year + 1)))


def holiday_dates(country: str, ts: pd.DatetimeIndex) -> frozenset:
    """The holiday dates of ``country`` over the years ``ts`` spans."""
    if len(ts) == 0:
        return frozenset()
    return _holiday_calendar(country, int(ts.year.min()), int(ts.year.max()))


def is_holiday(ts: pd.DatetimeIndex, country: str) -> np.ndarray:
    calendar = holiday_dates(country, ts)
    return np.fromiter((d in calendar for d in ts.date), dtype=bool, count=len(ts))


def season_lag(freq: pd.Timedelta | None) -> int:
    """Points in one seasonal cycle: a day for sub-daily data, a week for daily, else 1."""
    if freq is None or freq <= pd.Timedelta(0):
        return 1
    if freq < pd.Timedelta(days=1):
        return max(1, int(round(pd.Timedelta(days=1) / freq)))
    if freq == pd.Timedelta(days=1):
        return 7
    return 1


def feature_context(freq: pd.Timedelta | None) -> int:
    """Points before a point that its features read: the rolling window or the seasonal lag."""
    return max(ROLLING_WINDOW, season_lag(freq))


def calendar_features(ts: pd.DatetimeIndex, country: str = "US") -> pd.DataFrame:
    """Cyclic encodings of hour, day of week and month, plus weekend and holiday flags."""
    hour = ts.hour + ts.minute / 60.0
    dow = ts.dayofweek
    month = ts.month - 1
    return pd.DataFrame(
        {
            "hour_sin": np.sin(2 * np.pi * hour / 24.0),
            "hour_cos": np.cos(2 * np.pi * hour / 24.0),
            "dow_sin": np.sin(2 * np.pi * dow / 7.0),
            "dow_cos": np.cos(2 * np.pi * dow / 7.0),
            "month_sin": np.sin(2 * np.pi * month / 12.0),
            "month_cos": np.cos(2 * np.pi * month / 12.0),
            "is_weekend": (dow >= 5).astype(int),
            "is_holiday": is_holiday(ts, country).astype(int),
        },
        index=ts,
    )


def build_features(
    ts: pd.Series | pd.DatetimeIndex,
    values: pd.Series | np.ndarray,
    freq: pd.Timedelta | None = None,
    country: str = "US",
) -> pd.DataFrame:
    """The seed's feature set for one series, indexed by position like the input.

    Rolling statistics cover the ``ROLLING_WINDOW`` points before t (not t itself), so they
    describe what was normal just before the point being judged.
    """
    index = pd.DatetimeIndex(ts)
    value = pd.Series(np.asarray(values, dtype=float))
    previous = value.shift(1)
    lag = season_lag(freq)
    numeric = pd.DataFrame(
        {
            "rolling_mean_7": previous.rolling(ROLLING_WINDOW, min_periods=2).mean(),
            "rolling_std_7": previous.rolling(ROLLING_WINDOW, min_periods=2).std(),
            "diff_1": value - previous,
            "lag_1": previous,
            "lag_season": value.shift(lag),
        }
    )
    calendar = calendar_features(index, country).reset_index(drop=True)
    return pd.concat([numeric, calendar], axis=1)[FEATURE_COLUMNS]
