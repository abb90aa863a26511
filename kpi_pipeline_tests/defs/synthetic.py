"""Small synthetic KPI series for pipeline, asset and CLI tests: hourly, seasonal, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2025-03-03", tz="UTC")  # a Monday
KPI_LEVELS = {"orders": 100.0, "sessions": 2000.0}
SPIKE_FACTOR = 4.0


def hourly_kpis(
    days: int = 10,
    start: pd.Timestamp = START,
    spike_at: pd.Timestamp | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Long-shape observations (kpi, ts, value) of two KPIs with a daily cycle and 2% noise.

    ``spike_at`` multiplies that hour of ``orders`` by ``SPIKE_FACTOR``. The noise is drawn
    per timestamp from ``seed``, so extending a series leaves its earlier points unchanged
    when the extension uses the same seed and start.
    """
    ts = pd.date_range(start, periods=24 * days, freq="h")
    hours = ts.hour.to_numpy()
    frames = []
    for offset, (kpi, level) in enumerate(KPI_LEVELS.items()):
        noise = np.random.default_rng([seed, offset]).standard_normal(len(ts))
        values = level * (1 + 0.3 * np.sin(2 * np.pi * hours / 24)) * (1 + 0.02 * noise)
        if spike_at is not None and kpi == "orders":
            values[np.asarray(ts == spike_at)] *= SPIKE_FACTOR
        frames.append(pd.DataFrame({"kpi": kpi, "ts": ts, "value": values}))
    return pd.concat(frames, ignore_index=True)


def to_wide_csv(observations: pd.DataFrame) -> str:
    """The observations as the wide CSV text ``kpi-pipeline ingest`` reads."""
    wide = observations.pivot(index="ts", columns="kpi", values="value")
    wide.index = wide.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    return wide.rename_axis("timestamp").reset_index().to_csv(index=False)
