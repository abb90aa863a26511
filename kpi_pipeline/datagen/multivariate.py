"""Seeded multivariate fold: hourly KPIs in correlated groups, with group incidents and labels.

Three groups of three or four KPIs and three independent KPIs, 120 days hourly. Every KPI has a
daily and a weekly pattern and multiplicative noise; within a group part of the noise is
shared (``shared_noise_share`` of its variance), so the members' residuals correlate, as
KPIs driven by the same traffic do.

Group incidents move two to four members of one group at once for a few hours, each by a
modest amount (``group_move`` normal spreads, in log space) and not all in the same direction:
the relationship between the members breaks (sessions up while conversion and orders fall, as
bot traffic does; order value down while orders rise, as a pricing bug does). Each member moves
too little for its own detector to be sure; the joint move is very unlikely. Single-KPI
incidents (spikes, dips) hit one KPI, a group member or an independent one.

Files: ``kpi_data.csv`` and ``kpi_labels.csv`` as every profile writes them (a group incident is
labelled on each member it moved, kind ``group``), plus ``group_labels.csv`` (``group, start,
end, members``: one row per group incident) and ``groups.yaml`` (the groups, the file
``KPI_GROUPS_FILE`` points at).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kpi_pipeline.datagen.common import DEFAULT_SEED, TIMESTAMP_FORMAT, Anomaly, labels_frame, spread

GROUPS: dict[str, tuple[str, ...]] = {
    "checkout": ("orders", "revenue", "conversion_rate", "average_order_value"),
    "traffic": ("sessions", "page_views", "signups"),
    "platform": ("api_requests", "api_latency_ms", "cache_hit_rate"),
}
INDEPENDENT = ("refunds", "support_tickets", "newsletter_opens")
KPIS = tuple(kpi for members in GROUPS.values() for kpi in members) + INDEPENDENT

LEVELS = {
    "orders": 120.0,
    "revenue": 8400.0,
    "conversion_rate": 2.4,
    "average_order_value": 70.0,
    "sessions": 5000.0,
    "page_views": 21000.0,
    "signups": 60.0,
    "api_requests": 90000.0,
    "api_latency_ms": 180.0,
    "cache_hit_rate": 85.0,
    "refunds": 9.0,
    "support_tickets": 25.0,
    "newsletter_opens": 700.0,
}
DECIMALS = {kpi: 2 for kpi in KPIS}

GROUP_LABELS_FILE = "group_labels.csv"
GROUPS_FILE = "groups.yaml"


@dataclass(frozen=True)
class MultivariateConfig:
    days: int = 120
    noise: float = 0.05
    """Standard deviation of each KPI's log noise."""
    shared_noise_share: float = 0.5
    """Share of a member's noise variance shared with its group."""
    daily_amplitude: float = 0.35
    weekly_amplitude: float = 0.08
    group_incidents: int = 30
    group_hours: tuple[int, int] = (2, 6)
    group_move: tuple[float, float] = (2.5, 3.5)
    """How far each moved member goes, in its normal spreads (``noise``), in log space."""
    single_incidents: int = 12
    single_move: tuple[float, float] = (0.3, 0.6)
    """A single-KPI spike or dip: this fraction of the value."""
    warmup_days: int = 14
    """No incident in the first days: the first models learn from them."""


def generate(
    seed: int = DEFAULT_SEED, config: MultivariateConfig = MultivariateConfig()
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(data, labels, group_labels)``: the wide hourly data (``date`` and a column per KPI),
    the per-KPI labels and one row per group incident."""
    rng = np.random.default_rng(seed)
    n = config.days * 24
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    hour = np.asarray(index.hour)
    weekday = np.asarray(index.dayofweek)
    log_values = {}
    for group, members in [*GROUPS.items(), *((kpi, (kpi,)) for kpi in INDEPENDENT)]:
        shared = rng.normal(0.0, 1.0, n)
        share = config.shared_noise_share if len(members) > 1 else 0.0
        for kpi in members:
            phase = rng.uniform(-1.0, 1.0)
            daily = config.daily_amplitude * rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (hour - 9 + phase) / 24)
            weekly = config.weekly_amplitude * np.where(weekday >= 5, -1.0, 0.4)
            noise = config.noise * (np.sqrt(share) * shared + np.sqrt(1 - share) * rng.normal(0.0, 1.0, n))
            log_values[kpi] = np.log(LEVELS[kpi]) + daily + weekly + noise

    first, stop = config.warmup_days * 24, n - 24
    incidents: list[tuple[str, int, int, tuple[str, ...]]] = []
    lengths = rng.integers(config.group_hours[0], config.group_hours[1] + 1, config.group_incidents)
    starts = spread(rng, first, stop, lengths, min_gap=24)
    labels: list[Anomaly] = []
    for start, length in zip(starts, lengths):
        group = list(GROUPS)[rng.integers(len(GROUPS))]
        members = GROUPS[group]
        count = int(rng.integers(2, len(members) + 1))
        moved = tuple(str(kpi) for kpi in rng.choice(members, count, replace=False))
        signs = rng.choice((-1.0, 1.0), count)
        signs[1] = -signs[0]  # the relationship breaks: not every member moves the same way
        for kpi, sign in zip(moved, signs):
            log_values[kpi][start : start + length] += sign * rng.uniform(*config.group_move) * config.noise
            labels.append(Anomaly(kpi, "group", int(start), int(start + length)))
        incidents.append((group, int(start), int(start + length), moved))

    taken = np.zeros(n, dtype=bool)
    for _, start, end, _ in incidents:
        taken[max(0, start - 12) : end + 12] = True
    free = np.flatnonzero(~taken[first:stop]) + first
    for position in np.sort(rng.choice(free, config.single_incidents, replace=False)):
        kpi = str(rng.choice(KPIS))
        kind = str(rng.choice(("spike", "dip")))
        size = rng.uniform(*config.single_move)
        log_values[kpi][position] += np.log1p(size) if kind == "spike" else np.log1p(-size)
        labels.append(Anomaly(kpi, kind, int(position), int(position + 1)))

    data = pd.DataFrame({"date": index, **{kpi: np.exp(log_values[kpi]) for kpi in KPIS}})
    group_labels = pd.DataFrame(
        {
            "group": [group for group, *_ in incidents],
            "start": [index[start] for _, start, _, _ in incidents],
            "end": [index[end - 1] for _, _, end, _ in incidents],
            "members": [" ".join(sorted(moved)) for *_, moved in incidents],
        }
    ).sort_values("start", ignore_index=True)
    return data, labels_frame(labels, index), group_labels


def groups_yaml() -> str:
    """The groups as ``KPI_GROUPS_FILE`` reads them."""
    return yaml.safe_dump(
        {"groups": {name: {"members": list(members)} for name, members in GROUPS.items()}}, sort_keys=False
    )


def write_group_files(out_dir: Path, group_labels: pd.DataFrame) -> tuple[Path, Path]:
    """Write ``group_labels.csv`` and ``groups.yaml`` beside the data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path, groups_path = out_dir / GROUP_LABELS_FILE, out_dir / GROUPS_FILE
    group_labels.to_csv(labels_path, index=False, date_format=TIMESTAMP_FORMAT)
    groups_path.write_text(groups_yaml())
    return labels_path, groups_path
