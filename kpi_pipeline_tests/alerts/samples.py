"""Anomalies to alert about, as the anomaly check reports them."""

import pandas as pd

from kpi_pipeline.alerts.anomaly import Anomaly

TS = pd.Timestamp("2025-03-11 08:00", tz="UTC")


def anomaly(kpi: str = "orders", ts: pd.Timestamp = TS, severity: str = "high", **values) -> Anomaly:
    """A spike of ``kpi`` at ``ts``: 412 where 101 was expected (band 90..112), score 0.83."""
    figures = {
        "score": 0.83,
        "value": 412.0,
        "expected": 101.0,
        "lower": 90.0,
        "upper": 112.0,
        "flagged_by": "prophet,iforest",
        "event_id": f"{kpi}@{ts.isoformat()}",
        "model_version": "20250310T230000Z",
    }
    return Anomaly(kpi=kpi, ts=ts, severity=severity, **(figures | values))
