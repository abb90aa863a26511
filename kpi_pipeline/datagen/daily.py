"""Seeded daily fold: four years of daily shop KPIs whose history is contaminated by incidents.

This is the data of detection issue 13: a user with a few years of daily history always has old
incidents in it, often on several KPIs at once, and a detector must not learn them as normal.
Normal behaviour is deliberately plain: a mild trend, a mild weekly pattern on the traffic-driven
KPIs and none on the ratios (``conversion_rate``, ``average_order_value``), multiplicative noise,
no yearly season and no holidays. The KPIs are linked as in the hourly sample: sessions drive
orders through the conversion rate, orders times the order value make sales, sales drive
revenue.

About ``anomalous_day_share`` of all days are anomalous. Each incident is one day, or a few days
for a level shift, and hits several KPIs at once; every KPI it hits gets its own label. As in the
hourly sample an anomaly is injected into its KPI only and is not propagated to derived KPIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from kpi_pipeline.datagen.common import (
    DEFAULT_SEED,
    Anomaly,
    Magnitudes,
    inject,
    labels_frame,
    spread,
)

KPIS = ("sales", "revenue", "orders", "sessions", "conversion_rate", "average_order_value")
"""Columns of the wide data frame after ``date``, in output order."""

ANOMALY_KINDS = ("spike", "dip", "level_shift")
"""Values of the labels' ``kind`` column."""

DECIMALS = {
    "sales": 2,
    "revenue": 2,
    "orders": 0,
    "sessions": 0,
    "conversion_rate": 3,
    "average_order_value": 2,
}
"""Rounding per KPI: counts are whole numbers, money is in cents, the rate is in percent."""

FOUR_YEARS = 1461
"""Days from 2022-01-01 to 2025-12-31."""


@dataclass(frozen=True)
class DailyBehaviour:
    """The anomaly-free structure of the daily KPIs."""

    sessions_per_day: float = 52_000.0
    annual_growth: float = 0.06
    """Linear growth of traffic per year (6%)."""

    weekday_factors: tuple[float, ...] = (1.03, 1.04, 1.04, 1.02, 0.99, 0.95, 0.93)
    """Traffic multiplier Monday..Sunday: a mild weekend dip, all ones for no weekly pattern."""

    conversion_rate: float = 2.35
    """Percent of sessions that order."""

    average_order_value: float = 68.0
    revenue_margin: float = 0.9
    """Revenue per unit of sales."""

    sessions_noise: float = 0.06
    conversion_noise: float = 0.12
    """Large on purpose: the rate's normal days spread over about 1.5-3.5%."""

    order_value_noise: float = 0.05
    revenue_noise: float = 0.01


@dataclass(frozen=True)
class DailyAnomalies:
    """How many incidents there are, how long, on how many KPIs and how strong."""

    anomalous_day_share: float = 0.05
    """Share of all days inside an incident; the issue asks for folds between 2% and 10%."""

    level_shift_day_share: float = 0.2
    """Share of the anomalous days that belong to level shifts; the rest are one-day incidents."""

    level_shift_days: tuple[int, int] = (2, 5)
    """Length range of a level shift, inclusive."""

    min_kpis: int = 2
    """Least number of KPIs an incident hits; the most is every KPI."""

    clean_history_days: int = 28
    """Leading days without incidents: just enough history for a first model."""

    min_gap_days: int = 2
    """Least number of normal days between two incidents, so their labels stay distinct."""

    magnitudes: Magnitudes = Magnitudes(spike_lift=(0.6, 1.5), dip_drop=(0.4, 0.7), level_shift_size=(0.35, 0.6))
    """Spikes multiply by 1.6-2.5, dips by 0.3-0.6."""

    extreme_kpis: tuple[str, ...] = ("conversion_rate",)
    """KPIs whose spikes and dips always take the strongest factor (x2.5, x0.3) and which level
    shifts spare. Their noise is so wide that a milder change would land inside the normal range:
    the rate's anomalous days lie at about 0.45-1.05% and 3.75-8.7%, outside its normal 1.5-3.5%."""


@dataclass(frozen=True)
class DailyConfig:
    normal: DailyBehaviour = field(default_factory=DailyBehaviour)
    anomalies: DailyAnomalies = field(default_factory=DailyAnomalies)


def generate(
    seed: int = DEFAULT_SEED,
    start: str | pd.Timestamp = "2022-01-01",
    periods: int = FOUR_YEARS,
    *,
    config: DailyConfig = DailyConfig(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily KPIs from ``start`` (UTC midnights) and the labels of the incidents injected.

    Returns ``(data, labels)`` as the hourly ``generate`` does: ``data`` is wide with a tz-aware
    UTC ``date`` column and one float column per KPI; ``labels`` has one row per KPI an incident
    hit, ``kpi, start, end, kind``, with the first and last anomalous day (inclusive).
    """
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=periods, freq="D", tz="UTC", name="date")
    observed, expected = _normal_kpis(index, rng, config.normal)

    anomalies = _place_incidents(periods, rng, config.anomalies)
    magnitudes = config.anomalies.magnitudes
    extreme = replace(
        magnitudes,
        spike_lift=(magnitudes.spike_lift[1],) * 2,
        dip_drop=(magnitudes.dip_drop[1],) * 2,
    )
    for anomaly in anomalies:
        kpi_magnitudes = extreme if anomaly.kpi in config.anomalies.extreme_kpis else magnitudes
        inject(anomaly, observed[anomaly.kpi], expected[anomaly.kpi], rng, kpi_magnitudes)

    data = pd.DataFrame({"date": index})
    for kpi in KPIS:
        data[kpi] = np.round(observed[kpi], DECIMALS[kpi])
    return data, labels_frame(anomalies, index)


def _normal_kpis(
    index: pd.DatetimeIndex, rng: np.random.Generator, cfg: DailyBehaviour
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Observed (noisy) and expected (noise-free) values per KPI, before any anomaly."""
    years_elapsed = ((index - index[0]) / pd.Timedelta(days=365.25)).to_numpy()
    weekly = np.asarray(cfg.weekday_factors)[index.day_of_week.to_numpy()]
    expected_sessions = cfg.sessions_per_day * (1 + cfg.annual_growth * years_elapsed) * weekly
    expected_orders = expected_sessions * cfg.conversion_rate / 100
    expected_sales = expected_orders * cfg.average_order_value
    ones = np.ones(len(index))
    expected = {
        "sessions": expected_sessions,
        "orders": expected_orders,
        "conversion_rate": cfg.conversion_rate * ones,
        "average_order_value": cfg.average_order_value * ones,
        "sales": expected_sales,
        "revenue": expected_sales * cfg.revenue_margin,
    }

    def noise(sigma: float) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, len(index)))

    sessions = np.round(expected_sessions * noise(cfg.sessions_noise))
    orders = np.round(sessions * cfg.conversion_rate / 100 * noise(cfg.conversion_noise))
    sales = orders * cfg.average_order_value * noise(cfg.order_value_noise)
    observed = {
        "sessions": sessions,
        "orders": orders,
        "conversion_rate": 100 * orders / sessions,
        "average_order_value": sales / orders,
        "sales": sales,
        "revenue": sales * cfg.revenue_margin * noise(cfg.revenue_noise),
    }
    return observed, expected


def _place_incidents(periods: int, rng: np.random.Generator, cfg: DailyAnomalies) -> list[Anomaly]:
    """Incidents covering ``anomalous_day_share`` of the days, each on several KPIs."""
    anomalous_days = round(cfg.anomalous_day_share * periods)
    shortest, longest = cfg.level_shift_days
    shift_count = round(cfg.level_shift_day_share * anomalous_days / np.mean(cfg.level_shift_days))
    shift_lengths = rng.integers(shortest, longest + 1, shift_count)
    single_days = max(anomalous_days - int(shift_lengths.sum()), 0)
    lengths = np.concatenate([shift_lengths, np.ones(single_days, dtype=int)])
    order = rng.permutation(lengths.size)
    is_shift = order < shift_count
    starts = spread(rng, cfg.clean_history_days, periods, lengths[order], cfg.min_gap_days)

    # A level shift's symmetric size cannot reach the extreme factors, so it spares those KPIs.
    shiftable = [kpi for kpi in KPIS if kpi not in cfg.extreme_kpis]
    anomalies = []
    for start, length, shift in zip(starts, lengths[order], is_shift):
        candidates = shiftable if shift else KPIS
        count = rng.integers(cfg.min_kpis, len(candidates) + 1)
        hit = rng.choice(candidates, size=count, replace=False)
        for kpi in hit:
            kind = "level_shift" if shift else str(rng.choice(("spike", "dip")))
            anomalies.append(Anomaly(str(kpi), kind, int(start), int(start + length)))
    return anomalies
