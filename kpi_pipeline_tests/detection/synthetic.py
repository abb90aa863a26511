"""Small seeded synthetic series shared by the detection and backtest tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

HOURS_PER_DAY = 24
LEVEL = 100.0
AMPLITUDE = 10.0
NOISE_SIGMA = 1.0


def hourly_index(n_points: int, start: str = "2025-03-03") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n_points, freq="h", tz="UTC")


def daily_sine(n_points: int, seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Hourly points: a level of 100, a daily cycle of amplitude 10, Gaussian noise of sigma 1."""
    rng = np.random.default_rng(seed)
    hours = np.arange(n_points)
    values = LEVEL + AMPLITUDE * np.sin(2 * np.pi * hours / HOURS_PER_DAY)
    return hourly_index(n_points), values + rng.normal(0.0, NOISE_SIGMA, n_points)
