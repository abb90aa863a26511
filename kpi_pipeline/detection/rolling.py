"""Rolling medians equal to pandas' (``Series.rolling(window, min_periods).median()``), for the
few points scoring reads.

pandas computes a rolling median for every point, at about 0.4 ms a call whatever the window,
most of it fixed cost: scoring one new point called it five times per KPI, over a context of
a thousand points of which it needed the last few. ``rolling_median`` sorts the windows of the
points asked for (``first`` on) and takes their middle values, with pandas' arithmetic (the
middle value, or the two middle values' sum halved), skipping NaN as pandas does; it calls
pandas itself when that would be cheaper (many points with long windows). A median holds no
accumulated rounding, so both ways give the same bits (tested), but for the sign of a zero
median where -0.0 and 0.0 tie in a window (sorting and pandas' skiplist order them apart;
they compare and subtract alike).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

SORTED_VALUES_AT_MOST = 80_000
"""Above this many window values to sort (points x window), pandas' rolling median is the
cheaper way (it moves one sorted window along instead of sorting each)."""


def rolling_median(values: np.ndarray, window: int, min_periods: int, first: int = 0) -> np.ndarray:
    """``pd.Series(values).rolling(window, min_periods=min_periods).median()`` at the points
    from ``first`` on (NaN before it): the median of the non-NaN values among each point's
    ``window`` values ending at it, NaN where fewer than ``min_periods`` (and at least one)."""
    values = np.asarray(values, dtype=float)
    if np.isinf(values).any():  # pandas' rolling windows skip infinities as they skip NaN
        values = np.where(np.isinf(values), np.nan, values)
    n = len(values)
    first = max(0, min(first, n))
    out = np.full(n, np.nan)
    rows = n - first
    if rows == 0:
        return out
    # The values the windows of the points from ``first`` on reach.
    start = max(0, first - window + 1)
    if rows * window > SORTED_VALUES_AT_MOST:
        medians = pd.Series(values[start:]).rolling(window, min_periods=min_periods).median().to_numpy()
        out[first:] = medians[first - start :]
        return out
    padded = np.concatenate([np.full(window - 1 - (first - start), np.nan), values[start:]])
    windows = sliding_window_view(padded, window)
    ordered = np.sort(windows, axis=1)  # NaN sorts last
    count = window - np.count_nonzero(np.isnan(windows), axis=1)
    middle = np.maximum(count, 1)
    rows_at = np.arange(rows)
    upper = ordered[rows_at, middle // 2]
    lower = ordered[rows_at, (middle - 1) // 2]
    medians = np.where(middle % 2 == 1, upper, (upper + lower) / 2)
    out[first:] = np.where((count >= max(min_periods, 1)), medians, np.nan)
    return out


def shifted(values: np.ndarray, lag: int) -> np.ndarray:
    """``pd.Series(values).shift(lag)`` as an array (``lag`` >= 0)."""
    values = np.asarray(values, dtype=float)
    if lag == 0:
        return values
    return np.concatenate([np.full(min(lag, len(values)), np.nan), values[: max(0, len(values) - lag)]])
