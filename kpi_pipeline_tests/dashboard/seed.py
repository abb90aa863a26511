"""A seeded KPI database for the dashboard's tests and screenshots, written without training.

Scores are synthesised (an hourly daily/weekly cycle, its band, and injected incidents with
their severities) and stored through ``store.upsert_scores`` like the pipeline's own, so the
dashboard sees exactly what it would after ``kpi-pipeline run``, in well under a second.

``python -m kpi_pipeline_tests.dashboard.seed --database-url URL`` seeds a database by hand.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store

END = pd.Timestamp("2025-03-31 23:00", tz="UTC")
DAYS = 30
HOUR = pd.Timedelta(hours=1)
VERSION = "20250301T000000Z"


@dataclass(frozen=True)
class Incident:
    hours_before_end: int
    factor: float
    """The value is the expected one times this."""
    severity: str
    score: float
    flagged_by: str = "prophet"


@dataclass(frozen=True)
class SeedKpi:
    name: str
    level: float
    incidents: tuple[Incident, ...] = ()


KPIS = (
    SeedKpi(
        "orders",
        120.0,
        (
            Incident(0, 1.9, "critical", 0.86, "prophet,iforest"),
            Incident(30, 0.55, "high", 0.74),
            Incident(200, 1.35, "low", 0.53),
        ),
    ),
    SeedKpi("revenue", 9_500.0, (Incident(0, 0.6, "high", 0.72), Incident(420, 1.6, "medium", 0.64))),
    SeedKpi("sessions", 2_400.0, (Incident(15, 1.45, "medium", 0.62, "iforest"),)),
    SeedKpi("signups", 40.0, (Incident(300, 2.2, "critical", 0.83),)),
    SeedKpi("conversion_rate", 0.031, (Incident(100, 0.7, "low", 0.52),)),
    SeedKpi("sales", 5_000.0),
    SeedKpi("refunds", 12.0, (Incident(600, 2.5, "high", 0.77),)),
)
QUIET_KPI = "sales"
"""A seeded KPI without any anomaly."""
NEWEST_ANOMALY = ("orders", END)
"""The newest anomalous point of the seed (severity critical)."""


def kpi_scores(kpi: SeedKpi, days: int = DAYS, end: pd.Timestamp = END, seed: int = 0) -> pd.DataFrame:
    """Hourly scores of one KPI ending at ``end``, incidents included, as the pipeline writes them."""
    ts = pd.date_range(end=end, periods=24 * days, freq="h")
    hours, weekdays = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    expected = kpi.level * (1 + 0.35 * np.sin(2 * np.pi * (hours - 9) / 24)) * np.where(weekdays >= 5, 0.85, 1.0)
    rng = np.random.default_rng([seed, sum(map(ord, kpi.name))])
    value = expected * (1 + 0.03 * rng.standard_normal(len(ts)))
    half_width = 0.11 * expected
    score = np.clip(np.abs(value / expected - 1) / 0.25, 0, 1) * 0.3
    frame = pd.DataFrame(
        {
            "kpi": kpi.name,
            "ts": ts,
            "value": value,
            "expected": expected,
            "lower": expected - half_width,
            "upper": expected + half_width,
            "prophet_score": score,
            "iforest_score": score * 0.8,
            "score": score,
            "is_anomaly": False,
            "severity": None,
            "flagged_by": None,
            "event_id": None,
            "model_version": VERSION,
        }
    )
    for incident in kpi.incidents:
        at = len(ts) - 1 - incident.hours_before_end
        frame.loc[at, ["value", "score", "prophet_score"]] = [
            expected[at] * incident.factor,
            incident.score,
            incident.score,
        ]
        frame.loc[at, ["is_anomaly", "severity", "flagged_by", "event_id"]] = [
            True,
            incident.severity,
            incident.flagged_by,
            f"{kpi.name}@{ts[at].isoformat()}",
        ]
    return frame


def seed_database(url: str, kpis: tuple[SeedKpi, ...] = KPIS, days: int = DAYS) -> sa.Engine:
    """Migrate ``url`` and store observations, scores and a model registry row per KPI."""
    engine = store.make_engine(url)
    store.migrate(engine)
    scores = pd.concat([kpi_scores(kpi, days) for kpi in kpis], ignore_index=True)
    store.upsert_observations(engine, scores[["kpi", "ts", "value"]], "seed")
    store.upsert_scores(engine, scores)
    for kpi in kpis:
        store.save_model(
            engine,
            kpi=kpi.name,
            kind="ensemble",
            version=VERSION,
            trained_at=pd.Timestamp("2025-03-01 02:00", tz="UTC"),
            train_start=pd.Timestamp("2025-01-01", tz="UTC"),
            train_end=pd.Timestamp("2025-03-01", tz="UTC"),
            n_points=1416,
            params={},
            metrics={"n_points": 1416, "residual_scale": 0.031, "in_sample_mae": 0.024},
            artifact=None,
        )
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    seed_database(args.database_url).dispose()
    print(f"seeded {len(KPIS)} KPIs x {DAYS} days into {args.database_url}")


if __name__ == "__main__":
    main()
