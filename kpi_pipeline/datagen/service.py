"""Seeded minute-level folds: a web service's operational KPIs at 1 and 5 minutes, labelled.

This is the data of issue 19: teams watching requests, errors, latency and sign-ups per minute,
whose collectors do go down for days. Normal behaviour has a daily cycle (busiest mid-afternoon
UTC), a weekly one (weekends quieter) and the noise such metrics have: counts are Poisson with a
log-normal rate (traffic is burstier than Poisson alone), latency is log-normal and rises with
load. Both profiles, ``MINUTE`` (21 days) and ``FIVE_MINUTE`` (60 days), share this model; a
count is per step, so a 5-minute ``requests`` value is five times a 1-minute one.

Injected and labelled: spikes, dips, level shifts, variance bursts, slow drifts and outages
(``missing_gap``: no value at all, never a zero). Most outages hit one KPI, whose cells are then
empty; a collector outage hits every KPI, and its rows are absent from the data, as they would be
from a real export. Outages range from minutes to two days. Anomalies start after the first
``history_share`` of the series, so a detector has clean history, and never overlap one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

KPIS = ("requests", "errors", "latency_p95_ms", "signups")
"""Columns of the wide data frame after ``date``, in output order."""

ANOMALY_KINDS = ("spike", "dip", "level_shift", "variance_burst", "drift", "missing_gap")
"""Values of the labels' ``kind`` column."""

DECIMALS = {"requests": 0, "errors": 0, "latency_p95_ms": 1, "signups": 0}
"""Rounding per KPI: counts are whole numbers, latency is in tenths of a millisecond."""


@dataclass(frozen=True)
class ServiceBehaviour:
    """The anomaly-free structure of the service's KPIs, per minute."""

    requests_per_minute: float = 900.0
    """Mean request rate of an average weekday minute."""

    daily_amplitude: float = 0.6
    """Traffic swings this fraction above and below its daily mean."""

    peak_hour: float = 15.0
    """UTC hour of the busiest minute; the quietest is twelve hours later."""

    weekday_factors: tuple[float, ...] = (1.00, 1.03, 1.04, 1.02, 0.96, 0.70, 0.64)
    """Traffic multiplier Monday..Sunday."""

    traffic_noise: float = 0.05
    """Log-normal noise of the Poisson rate of requests and sign-ups."""

    error_rate: float = 0.004
    """Errors per request."""

    error_noise: float = 0.3
    """Log-normal noise of the error rate: errors come in small clusters."""

    signup_rate: float = 0.003
    """Sign-ups per request."""

    latency_ms: float = 180.0
    """p95 latency at average load."""

    latency_load_elasticity: float = 0.3
    """Latency grows as load ** this: a busy service is a little slower."""

    latency_noise: float = 0.08
    """Log-normal noise of latency."""


@dataclass(frozen=True)
class ServiceAnomalies:
    """Which anomalies each KPI gets, how long and how strong.

    Each kind's duration range is the field ``<kind>_duration``: durations are drawn log-uniform
    within it (so outages spread from minutes to days) and last at least one row.
    """

    per_kpi: tuple[tuple[str, int], ...] = (
        ("spike", 2),
        ("dip", 2),
        ("level_shift", 1),
        ("variance_burst", 1),
        ("drift", 1),
        ("missing_gap", 1),
    )
    """How many anomalies of each kind every KPI gets."""

    collector_outages: int = 1
    """Outages of every KPI at once: their rows are absent from the data."""

    history_share: float = 0.4
    """Leading share of the series without anomalies."""

    min_gap: str = "2h"
    """Least normal time between two anomalies, and after the last one."""

    magnitudes: Magnitudes = Magnitudes(
        spike_lift=(1.0, 3.0),
        dip_drop=(0.5, 0.9),
        level_shift_size=(0.3, 0.6),
        variance_burst_noise_factor=3.0,
        drift_size=(0.3, 0.8),
    )
    """Spikes multiply by 2-4 and dips by 0.1-0.5: operational incidents are sharp."""

    spike_duration: tuple[str, str] = ("1min", "10min")
    dip_duration: tuple[str, str] = ("2min", "20min")
    level_shift_duration: tuple[str, str] = ("1h", "12h")
    variance_burst_duration: tuple[str, str] = ("30min", "6h")
    drift_duration: tuple[str, str] = ("3h", "1D")
    missing_gap_duration: tuple[str, str] = ("5min", "2D")

    def duration(self, kind: str) -> tuple[pd.Timedelta, pd.Timedelta]:
        shortest, longest = getattr(self, f"{kind}_duration")
        return pd.Timedelta(shortest), pd.Timedelta(longest)


@dataclass(frozen=True)
class ServiceConfig:
    step: str
    """Time between rows, as a pandas frequency."""
    days: int
    """Default length of the series."""
    normal: ServiceBehaviour = field(default_factory=ServiceBehaviour)
    anomalies: ServiceAnomalies = field(default_factory=ServiceAnomalies)

    @property
    def periods(self) -> int:
        return self.days * (pd.Timedelta(days=1) // pd.Timedelta(self.step))


MINUTE = ServiceConfig(step="1min", days=21)
# A 5-minute p95 summarises five times as many requests, so it is steadier.
FIVE_MINUTE = ServiceConfig(step="5min", days=60, normal=ServiceBehaviour(latency_noise=0.05))


def generate(
    seed: int = DEFAULT_SEED,
    config: ServiceConfig = MINUTE,
    start: str | pd.Timestamp = "2026-01-05",
    periods: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The service's KPIs every ``config.step`` from ``start`` (UTC) and their labels.

    ``periods`` defaults to ``config.days`` of rows. Returns ``(data, labels)`` as the hourly
    ``generate`` does, except that the rows of a collector outage are absent from ``data``: its
    timestamps are regular but for those holes. ``labels`` bound each window by the first and
    last anomalous timestamp of the full grid (inclusive), even where that row is absent.
    """
    rng = np.random.default_rng(seed)
    periods = config.periods if periods is None else periods
    index = pd.date_range(start, periods=periods, freq=config.step, tz="UTC", name="date")
    observed, expected = _normal_kpis(index, pd.Timedelta(config.step), rng, config.normal)

    anomalies = _place_anomalies(periods, pd.Timedelta(config.step), rng, config.anomalies)
    for anomaly in anomalies:
        kpi = anomaly.kpi
        inject(anomaly, observed[kpi], expected[kpi], rng, config.anomalies.magnitudes)

    data = pd.DataFrame({"date": index})
    for kpi in KPIS:
        data[kpi] = np.round(observed[kpi], DECIMALS[kpi])
    # A collector that is down writes no row, so a row missing on every KPI is left out.
    reported = data[list(KPIS)].notna().any(axis=1)
    return data[reported].reset_index(drop=True), labels_frame(anomalies, index)


def _normal_kpis(
    index: pd.DatetimeIndex, step: pd.Timedelta, rng: np.random.Generator, cfg: ServiceBehaviour
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Observed (noisy) and expected (noise-free) values per KPI, before any anomaly."""
    hour = (index.hour + index.minute / 60).to_numpy()
    daily = 1 + cfg.daily_amplitude * np.cos(2 * np.pi * (hour - cfg.peak_hour) / 24)
    load = daily * np.asarray(cfg.weekday_factors)[index.day_of_week.to_numpy()]
    requests_per_row = cfg.requests_per_minute * (step / pd.Timedelta(minutes=1)) * load
    expected_latency = cfg.latency_ms * load**cfg.latency_load_elasticity
    expected = {
        "requests": requests_per_row,
        "errors": requests_per_row * cfg.error_rate,
        "latency_p95_ms": expected_latency,
        "signups": requests_per_row * cfg.signup_rate,
    }

    def noise(sigma: float) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, len(index)))

    observed = {
        "requests": rng.poisson(expected["requests"] * noise(cfg.traffic_noise)).astype(float),
        "errors": rng.poisson(expected["errors"] * noise(cfg.error_noise)).astype(float),
        "latency_p95_ms": expected_latency * noise(cfg.latency_noise),
        "signups": rng.poisson(expected["signups"] * noise(cfg.traffic_noise)).astype(float),
    }
    return observed, expected


def _place_anomalies(
    periods: int, step: pd.Timedelta, rng: np.random.Generator, cfg: ServiceAnomalies
) -> list[Anomaly]:
    """Every KPI's anomalies plus the collector outages, in random order, none overlapping."""
    events = [(kind, (kpi,)) for kpi in KPIS for kind, count in cfg.per_kpi for _ in range(count)]
    events += [("missing_gap", KPIS)] * cfg.collector_outages
    kinds = np.array([kind for kind, _ in events])
    lengths = np.zeros(len(events), dtype=int)
    for kind in dict.fromkeys(kinds):
        of_kind = np.flatnonzero(kinds == kind)
        lengths[of_kind] = _durations(rng, cfg.duration(kind), of_kind.size, step)

    order = rng.permutation(len(events))
    gap = int(pd.Timedelta(cfg.min_gap) // step)
    first = int(np.ceil(cfg.history_share * periods))
    starts = spread(rng, first, periods - gap, lengths[order], gap)
    return [
        Anomaly(kpi, events[event][0], int(start), int(start + lengths[event]))
        for event, start in zip(order, starts)
        for kpi in events[event][1]
    ]


def _durations(
    rng: np.random.Generator,
    bounds: tuple[pd.Timedelta, pd.Timedelta],
    count: int,
    step: pd.Timedelta,
) -> np.ndarray:
    """``count`` lengths in rows, log-uniform within ``bounds``, in random order.

    Each draw comes from its own equal slice of the log range, so even a few draws cover it from
    the shortest to the longest instead of bunching by chance.
    """
    edges = np.linspace(np.log(bounds[0] / step), np.log(bounds[1] / step), count + 1)
    rows = np.round(np.exp(rng.uniform(edges[:-1], edges[1:])))
    return rng.permutation(np.maximum(rows, 1).astype(int))
