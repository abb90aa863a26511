"""Jobs without assets (kpi_pipeline/defs/jobs.py): ``retention_job``."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline import pipeline, store
from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.jobs import retention_job
from kpi_pipeline.defs.resources import KpiStore


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _seed(url: str) -> None:
    engine = pipeline.open_store(url)
    now = pd.Timestamp.now("UTC").floor("D")
    ts = pd.date_range(now - pd.Timedelta(days=99), periods=100, freq="D")
    store.upsert_observations(engine, pd.DataFrame({"kpi": "orders", "ts": ts, "value": 1.0}), "t")
    store.upsert_scores(engine, pd.DataFrame({"kpi": "orders", "ts": ts, "is_anomaly": False}))
    store.save_model(
        engine,
        kpi="orders",
        kind="ensemble",
        version="v1",
        trained_at=now,
        train_start=now - pd.Timedelta(days=20),
        train_end=now,
        n_points=20,
        params={},
        metrics={},
        artifact=b"",
    )
    engine.dispose()


def _run(url: str) -> dict[str, int]:
    result = retention_job.execute_in_process(resources={"store": KpiStore(database_url=url)})
    assert result.success
    (materialization,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialization.event_specific_data.metadata
    return {key: value.value for key, value in metadata.items()}


def test_retention_job_keeps_everything_by_default(sqlite_url, fresh_settings):
    _seed(sqlite_url)
    assert _run(sqlite_url) == {"observations_deleted": 0, "scores_deleted": 0}


def test_retention_job_applies_each_tables_retention(sqlite_url, fresh_settings, monkeypatch):
    _seed(sqlite_url)
    monkeypatch.setenv("KPI_OBSERVATION_RETENTION_DAYS", "30")
    monkeypatch.setenv("KPI_SCORE_RETENTION_DAYS", "50")
    get_settings.cache_clear()

    # The model's training window (20 days) is inside both: the retentions apply as set.
    assert _run(sqlite_url) == {"observations_deleted": 70, "scores_deleted": 50}
    assert _run(sqlite_url) == {"observations_deleted": 0, "scores_deleted": 0}
