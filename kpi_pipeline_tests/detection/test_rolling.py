"""``rolling_median`` gives pandas' rolling medians bit for bit, on either of its paths (but
for the sign of a zero median: sorting and pandas' skiplist order tied -0.0 and 0.0 apart)."""

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection import rolling
from kpi_pipeline.detection.ensemble import _stuck_run_lengths
from kpi_pipeline.detection.rolling import rolling_median, shifted


def _series(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n).round(1)  # ties, too
    values[rng.choice(n, n // 8, replace=False)] = np.nan
    values[n // 3 : n // 3 + 30] = np.nan  # a window with no value at all
    return values


def _assert_same_bits(got: np.ndarray, expected: np.ndarray, message: str = "") -> None:
    """NaN where pandas has NaN, and the same bits elsewhere (a zero's sign apart)."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=message)
    numbers = ~np.isnan(expected) & (expected != 0)
    np.testing.assert_array_equal(got[numbers].view(np.int64), expected[numbers].view(np.int64), err_msg=message)
    assert (got[expected == 0] == 0).all(), message


@pytest.mark.parametrize("window, min_periods", [(1, 1), (2, 1), (8, 1), (12, 7), (48, 1), (1000, 24), (400, 0)])
@pytest.mark.parametrize("path", ["sorted", "pandas"])
def test_rolling_medians_are_pandas_bit_for_bit(window, min_periods, path, monkeypatch):
    monkeypatch.setattr(rolling, "SORTED_VALUES_AT_MOST", 10**12 if path == "sorted" else 0)
    values = _series(window, 1300)
    expected = pd.Series(values).rolling(window, min_periods=min_periods).median().to_numpy()
    for first in (0, 1, 5, 700, 1299, 1300):
        got = rolling_median(values, window, min_periods, first)
        assert np.isnan(got[:first]).all()
        _assert_same_bits(got[first:], expected[first:], str(first))


def test_windows_longer_than_the_series_and_empty_series():
    values = _series(3, 20)
    expected = pd.Series(values).rolling(50, min_periods=2).median().to_numpy()
    _assert_same_bits(rolling_median(values, 50, 2), expected)
    assert len(rolling_median(np.array([]), 8, 1)) == 0


def test_infinities_are_skipped_as_pandas_skips_them():
    values = np.array([1.0, np.inf, 3.0, -np.inf, 5.0, 2.0, np.nan, 4.0])
    expected = pd.Series(values).rolling(3, min_periods=1).median().to_numpy()
    _assert_same_bits(rolling_median(values, 3, 1), expected)


def test_shifted_is_pandas_shift():
    values = _series(4, 30)
    for lag in (0, 1, 12, 30, 40):
        np.testing.assert_array_equal(shifted(values, lag), pd.Series(values).shift(lag).to_numpy())


def test_stuck_run_lengths_count_repeats_of_the_previous_value():
    values = np.array([1.0, 1.0, 1.0, 2.0, np.nan, np.nan, 2.0, 2.0, 3.0, 3.0])
    # NaN never repeats (NaN != NaN): a gap ends a run.
    np.testing.assert_array_equal(_stuck_run_lengths(values), [0, 1, 2, 0, 0, 0, 0, 1, 0, 1])
    assert len(_stuck_run_lengths(np.array([]))) == 0
