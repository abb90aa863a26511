"""Seeded sample dataset: a year of hourly e-commerce KPIs with labelled, injected anomalies.

It gives a new user something realistic to run the pipeline on and gives ``evaluate`` ground
truth to score against. Normal behaviour has a mild trend, daily, weekly and yearly seasonality,
one shared US-holiday dip and multiplicative noise, and the KPIs are linked the way a shop's are:
sessions drive orders (via a conversion probability), orders drive sales (via the basket), sales
drive revenue, and ``conversion_rate`` is ``orders / sessions``.

Each anomaly is injected into one KPI only and not propagated to the KPIs derived from it, so a
label names exactly the series that misbehaves; inside a labelled window the cross-KPI identities
(for example ``conversion_rate == orders / sessions``) may therefore not hold.

Timestamps are UTC and the shop's day is taken to be the UTC day, so hour-of-day, weekday and
holiday features computed on UTC timestamps line up with the generated seasonality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import holidays
import numpy as np
import pandas as pd

from kpi_pipeline.datagen.common import (
    DEFAULT_SEED,
    Anomaly,
    Magnitudes,
    inject,
    labels_frame,
    write_csvs,
)

KPIS = ("sales", "revenue", "sessions", "orders", "conversion_rate")
"""Columns of the wide data frame after ``date``, in output order."""

ANOMALY_KINDS = (
    "spike",
    "dip",
    "level_shift",
    "variance_burst",
    "flatline",
    "missing_gap",
    "seasonal",
)
"""Values of the labels' ``kind`` column."""

DECIMALS = {"sales": 2, "revenue": 2, "sessions": 0, "orders": 0, "conversion_rate": 5}
"""Rounding per KPI: counts are whole numbers, money is in cents."""


@dataclass(frozen=True)
class NormalBehaviour:
    """The anomaly-free structure of the KPIs."""

    sessions_per_hour: float = 2400.0
    """Mean hourly sessions at the start of the series before weekly, yearly and holiday effects."""

    annual_growth: float = 0.08
    """Linear growth of traffic per year (8%)."""

    hourly_profile: tuple[float, ...] = (
        0.45, 0.33, 0.26, 0.22, 0.21, 0.24, 0.34, 0.50, 0.72, 0.90, 1.02, 1.10,
        1.18, 1.20, 1.22, 1.26, 1.32, 1.42, 1.55, 1.62, 1.60, 1.45, 1.10, 0.72,
    )  # fmt: skip
    """Relative traffic for hours 00..23 (rescaled to mean 1): trough at 04:00, peak 19:00-20:00."""

    weekday_factors: tuple[float, ...] = (1.00, 1.03, 1.04, 1.02, 0.96, 0.70, 0.66)
    """Traffic multiplier Monday..Sunday: weekends about 30% below weekdays."""

    q4_lift: float = 0.25
    """Extra traffic at the height of the Q4 shopping season (+25%)."""

    q4_peak_day: float = 335.0
    """Day of year the Q4 season peaks (1 December)."""

    summer_dip: float = 0.12
    """Traffic lost at the bottom of the summer lull (-12%)."""

    summer_trough_day: float = 200.0
    """Day of year the summer lull is deepest (19 July)."""

    yearly_concentration: float = 4.0
    """How tightly the Q4 and summer effects gather around their days: 4 spans about +-6 weeks."""

    holiday_factor: float = 0.65
    """Traffic multiplier on every US federal holiday; one shared factor keeps it learnable."""

    conversion_rate: float = 0.032
    """Share of sessions that order at an average-traffic hour."""

    conversion_hourly_elasticity: float = 0.4
    """Conversion grows as hourly_profile ** this: evening visitors buy, night ones browse."""

    average_basket: float = 65.0
    """Mean sales value of one order."""

    revenue_margin: float = 0.9
    """Revenue per unit of sales: what is left after discounts, refunds and fees."""

    sessions_noise: float = 0.05
    """Multiplicative (log-normal) noise of sessions."""

    conversion_noise: float = 0.03
    """Multiplicative noise of the conversion probability: order noise beyond that of sessions."""

    basket_noise: float = 0.04
    """Multiplicative noise of the hourly average basket: sales noise beyond that of orders."""

    revenue_noise: float = 0.01
    """Multiplicative noise of the margin: small, so revenue follows sales closely."""

    random_missing_fraction: float = 0.003
    """Share of cells left empty at random, unlabelled: the short gaps preprocessing fills."""


@dataclass(frozen=True)
class AnomalyInjection:
    """Where, how long and how strong the injected anomalies are.

    Each kind's duration range in hours, inclusive, is the field ``<kind>_hours``.
    """

    per_kpi: int = 6
    """Anomalies per KPI on a full year; shorter series get fewer (see ``_place_anomalies``)."""

    clean_history_days: int = 59
    """Leading days without anomalies so detectors have clean training history (Jan-Feb 2025)."""

    min_gap_hours: int = 72
    """Least distance between two anomalies on the same KPI, so their windows stay distinct."""

    magnitudes: Magnitudes = Magnitudes()
    """How strong spikes, dips, level shifts and variance bursts are."""

    spike_hours: tuple[int, int] = (1, 3)
    dip_hours: tuple[int, int] = (1, 4)
    level_shift_hours: tuple[int, int] = (24, 72)
    variance_burst_hours: tuple[int, int] = (6, 24)
    flatline_hours: tuple[int, int] = (6, 12)
    missing_gap_hours: tuple[int, int] = (8, 24)

    seasonal_hours: tuple[int, int] = (4, 6)
    seasonal_night_end_hour: int = 6
    """A seasonal anomaly lies within 00:00 and this hour of one night."""

    seasonal_source_hour: int = 16
    """A seasonal anomaly replays the same day's values from this afternoon hour on: peak level."""

    def hours(self, kind: str) -> tuple[int, int]:
        return getattr(self, f"{kind}_hours")


@dataclass(frozen=True)
class DatagenConfig:
    normal: NormalBehaviour = field(default_factory=NormalBehaviour)
    anomalies: AnomalyInjection = field(default_factory=AnomalyInjection)


def generate(
    seed: int = DEFAULT_SEED,
    start: str | pd.Timestamp = "2025-01-01",
    periods: int = 8760,
    *,
    config: DatagenConfig = DatagenConfig(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hourly KPIs from ``start`` (UTC) and the labels of the anomalies injected into them.

    Returns ``(data, labels)``. ``data`` is wide: a tz-aware UTC ``date`` column and one float
    column per KPI, NaN where a value is missing. ``labels`` has one row per anomaly with
    ``kpi, start, end, kind``; ``start`` and ``end`` are the first and last anomalous hour
    (inclusive). The same seed and arguments always give identical frames.
    """
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=periods, freq="h", tz="UTC", name="date")
    is_holiday = _is_us_holiday(index)
    observed, expected = _normal_kpis(index, is_holiday, rng, config.normal)

    anomalies = _place_anomalies(index, is_holiday, rng, config.anomalies)
    hour_of_day = index.hour.to_numpy()
    labelled = {kpi: np.zeros(periods, dtype=bool) for kpi in KPIS}
    for anomaly in anomalies:
        kpi = anomaly.kpi
        _inject(anomaly, observed[kpi], expected[kpi], hour_of_day, rng, config.anomalies)
        labelled[kpi][anomaly.start : anomaly.stop] = True

    data = pd.DataFrame({"date": index})
    for kpi in KPIS:
        values = np.round(observed[kpi], DECIMALS[kpi])
        # Random gaps stay out of labelled windows so every labelled anomaly is fully visible.
        dropped = (rng.random(periods) < config.normal.random_missing_fraction) & ~labelled[kpi]
        values[dropped] = np.nan
        data[kpi] = values

    return data, labels_frame(anomalies, index)


def write_dataset(out_dir: Path, seed: int = DEFAULT_SEED) -> tuple[Path, Path]:
    """Write ``generate(seed)`` as ``kpi_data.csv`` and ``kpi_labels.csv``; return their paths."""
    return write_csvs(out_dir, *generate(seed), DECIMALS)


def _normal_kpis(
    index: pd.DatetimeIndex, is_holiday: np.ndarray, rng: np.random.Generator, cfg: NormalBehaviour
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Observed (noisy) and expected (noise-free) values per KPI, before any anomaly."""
    hour_of_day = index.hour.to_numpy()
    profile = np.asarray(cfg.hourly_profile) / np.mean(cfg.hourly_profile)
    daily = profile[hour_of_day]
    weekly = np.asarray(cfg.weekday_factors)[index.day_of_week.to_numpy()]
    day_of_year = index.day_of_year.to_numpy() + hour_of_day / 24
    concentration = cfg.yearly_concentration
    yearly = (
        1
        + cfg.q4_lift * _yearly_bump(day_of_year, cfg.q4_peak_day, concentration)
        - cfg.summer_dip * _yearly_bump(day_of_year, cfg.summer_trough_day, concentration)
    )
    years_elapsed = ((index - index[0]) / pd.Timedelta(days=365.25)).to_numpy()
    trend = 1 + cfg.annual_growth * years_elapsed
    holiday = np.where(is_holiday, cfg.holiday_factor, 1.0)

    expected_sessions = cfg.sessions_per_hour * trend * daily * weekly * yearly * holiday
    conversion = cfg.conversion_rate * daily**cfg.conversion_hourly_elasticity
    expected = {
        "sessions": expected_sessions,
        "orders": expected_sessions * conversion,
        "conversion_rate": conversion,
        "sales": expected_sessions * conversion * cfg.average_basket,
        "revenue": expected_sessions * conversion * cfg.average_basket * cfg.revenue_margin,
    }

    def noise(sigma: float) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, len(index)))

    sessions = np.round(expected_sessions * noise(cfg.sessions_noise))
    orders = np.round(sessions * conversion * noise(cfg.conversion_noise))
    sales = orders * cfg.average_basket * noise(cfg.basket_noise)
    observed = {
        "sessions": sessions,
        "orders": orders,
        "conversion_rate": orders / sessions,
        "sales": sales,
        "revenue": sales * cfg.revenue_margin * noise(cfg.revenue_noise),
    }
    return observed, expected


def _yearly_bump(day_of_year: np.ndarray, peak_day: float, concentration: float) -> np.ndarray:
    """1 on ``peak_day``, falling smoothly towards 0 half a year away.

    Periodic in the year (a von Mises shape), so consecutive years join without a step.
    """
    angle = 2 * np.pi * (day_of_year - peak_day) / 365.25
    return np.exp(concentration * (np.cos(angle) - 1))


def _is_us_holiday(index: pd.DatetimeIndex) -> np.ndarray:
    us_holidays = holidays.US(years=sorted(set(index.year)))
    return np.isin(index.date, list(us_holidays))


def _place_anomalies(
    index: pd.DatetimeIndex, is_holiday: np.ndarray, rng: np.random.Generator, cfg: AnomalyInjection
) -> list[Anomaly]:
    """Choose kind and window of every anomaly, at least ``min_gap_hours`` apart per KPI.

    The span after the clean history is cut into one slot per anomaly and each window is drawn
    inside its slot, ending ``min_gap_hours`` before the slot does. A slot must also leave room to
    step around a holiday, which windows avoid: the holiday dip stays one clean, learnable effect
    and is never confused with a labelled anomaly. Series too short for ``per_kpi`` slots get
    fewer anomalies, and none at all within the clean history.
    """
    longest = max(cfg.hours(kind)[1] for kind in ANOMALY_KINDS)
    # Room for the longest window on either side of a one-day holiday, plus the gap after it.
    slot_hours = 2 * longest + 24 + cfg.min_gap_hours
    first = cfg.clean_history_days * 24
    placed_per_kpi = min(cfg.per_kpi, max(len(index) - first, 0) // slot_hours)
    edges = np.linspace(first, len(index), placed_per_kpi + 1).astype(int)

    holiday_hours_before = np.concatenate(([0], np.cumsum(is_holiday)))
    hour_of_day = index.hour.to_numpy()
    anomalies = []
    for position, kpi in enumerate(KPIS):
        # Rotating through the kinds gives every KPI a mix and every kind several KPIs.
        planned = [ANOMALY_KINDS[(position * cfg.per_kpi + i) % len(ANOMALY_KINDS)] for i in range(cfg.per_kpi)]
        kinds = [planned[i] for i in rng.permutation(cfg.per_kpi)[:placed_per_kpi]]
        for kind, slot_start, slot_stop in zip(kinds, edges[:-1], edges[1:]):
            shortest, longest_of_kind = cfg.hours(kind)
            duration = int(rng.integers(shortest, longest_of_kind + 1))
            starts = np.arange(slot_start, slot_stop - duration - cfg.min_gap_hours + 1)
            allowed = holiday_hours_before[starts + duration] == holiday_hours_before[starts]
            if kind == "seasonal":
                allowed &= hour_of_day[starts] + duration <= cfg.seasonal_night_end_hour
            if not allowed.any():
                raise ValueError(f"no room for a {kind} anomaly on {kpi} in rows {slot_start}..{slot_stop}")
            start = int(rng.choice(starts[allowed]))
            anomalies.append(Anomaly(kpi, kind, start, start + duration))
    return anomalies


def _inject(
    anomaly: Anomaly,
    values: np.ndarray,
    expected: np.ndarray,
    hour_of_day: np.ndarray,
    rng: np.random.Generator,
    cfg: AnomalyInjection,
) -> None:
    """Overwrite ``values`` (one KPI's observed series) inside the anomaly's window."""
    if anomaly.kind != "seasonal":
        inject(anomaly, values, expected, rng, cfg.magnitudes)
        return
    source = anomaly.start - hour_of_day[anomaly.start] + cfg.seasonal_source_hour
    values[anomaly.start : anomaly.stop] = values[source : source + anomaly.stop - anomaly.start]
