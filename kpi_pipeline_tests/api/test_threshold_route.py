"""GET /v1/kpis/{kpi}/threshold: a KPI's anomaly threshold with what analysts' false positives
raise it by (docs/adaptive-thresholds.md)."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.api.schemas import KpiThreshold
from kpi_pipeline.detection.ensemble import DetectorConfig

pytestmark = pytest.mark.postgres


def iso(ts: pd.Timestamp) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def test_a_false_positive_raises_the_threshold_the_api_shows_and_a_true_positive_does_not(client, seeded):
    config = DetectorConfig()
    before = KpiThreshold.model_validate(client.get("/v1/kpis/sales/threshold").json())
    assert before.raised_by == 0.0 and before.false_positives == 0
    assert before.threshold == before.base == config.threshold
    assert before.cap == config.feedback_threshold_cap

    confirmed = client.post(f"/v1/anomalies/sales/{iso(seeded.spikes[0])}/feedback", json={"label": "true_positive"})
    assert confirmed.status_code == 200
    assert client.get("/v1/kpis/sales/threshold").json()["raised_by"] == 0.0

    client.post(f"/v1/anomalies/sales/{iso(seeded.spikes[1])}/feedback", json={"label": "false_positive"})
    after = KpiThreshold.model_validate(client.get("/v1/kpis/sales/threshold").json())
    assert after.false_positives == 1
    assert 0 < after.raised_by <= config.feedback_threshold_step
    assert after.threshold == pytest.approx(after.base + after.raised_by)

    store.reset_threshold(seeded.engine, "sales")
    reset = KpiThreshold.model_validate(client.get("/v1/kpis/sales/threshold").json())
    assert reset.raised_by == 0.0 and reset.reset_at is not None


def test_a_kpi_without_a_model_or_unknown_is_404(client):
    assert client.get("/v1/kpis/orders/threshold").status_code == 404
    assert client.get("/v1/kpis/no-such-kpi/threshold").status_code == 404
