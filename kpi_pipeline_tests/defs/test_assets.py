"""The whole asset graph, materialized against PostgreSQL with small synthetic KPIs."""

import dagster as dg
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.defs.assets import ASSETS, raw_kpis, every_shard_tags
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis

HOUR = pd.Timedelta(hours=1)
SPIKE = START + 200 * HOUR


@pytest.fixture
def kpi_store(pg_url):
    return KpiStore(database_url=pg_url)


def _materialize(kpi_store: KpiStore) -> dict[str, dict]:
    """Materialize every asset; returns each asset's metadata values."""
    result = dg.materialize(ASSETS, resources={"store": kpi_store}, tags=every_shard_tags())
    assert result.success
    return {
        event.asset_key.to_user_string(): {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def _observed_version(kpi_store: KpiStore) -> str:
    job = dg.define_asset_job("observe_raw_kpis", selection=[raw_kpis])
    defs = dg.Definitions(assets=ASSETS, jobs=[job], resources={"store": kpi_store})
    result = defs.resolve_job_def("observe_raw_kpis").execute_in_process()
    [observation] = result.asset_observations_for_node("raw_kpis")
    return observation.tags["dagster/data_version"]


def test_raw_kpis_data_version_follows_the_observations(kpi_store):
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=1), "test")
    first = _observed_version(kpi_store)
    assert first == store.observations_version(engine)

    store.upsert_observations(engine, hourly_kpis(days=1), "test")  # the same values again
    assert _observed_version(kpi_store) == first

    store.upsert_observations(engine, hourly_kpis(days=2), "test")
    assert _observed_version(kpi_store) not in {first, ""}


def test_graph_flags_the_injected_spike(kpi_store):
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=SPIKE), "test")

    metadata = _materialize(kpi_store)

    assert metadata["cleaned_kpis"]["rows_written"] == 480
    assert metadata["cleaned_kpis"]["kpis"] == ["orders", "sessions"]
    assert metadata["kpi_features"]["rows_written"] == 480
    assert metadata["kpi_models"]["kpis_trained"] == ["orders", "sessions"]
    scores = store.load_scores(engine, ["orders"])
    top = scores.loc[scores["score"].idxmax()]
    assert top["ts"] == SPIKE and top["is_anomaly"] and top["severity"] in {"high", "critical"}
    assert metadata["anomaly_scores"]["points_scored"] == 2 * (240 - 48)
    assert metadata["anomalies"]["events"] >= 1
    assert f"orders@{SPIKE.isoformat()}" in metadata["anomalies"]["newest_events"]


def test_the_anomalies_summary_holds_the_last_seven_days_of_events_not_all_history(kpi_store):
    engine = kpi_store.engine()
    old, recent = START + 100 * HOUR, START + 400 * HOUR  # 12.5 days apart
    both = hourly_kpis(days=20, spike_at=old)
    both.loc[(both["kpi"] == "orders") & (both["ts"] == recent), "value"] *= 6
    store.upsert_observations(engine, both, "test")

    summary = _materialize(kpi_store)["anomalies"]

    events = store.load_anomalies(engine, "orders")["ts"]
    assert {old, recent} <= set(events)  # both are anomalies in the store
    assert summary["as_of"] == str(START + 479 * HOUR)
    assert f"orders@{recent.isoformat()}" in summary["newest_events"]
    assert f"orders@{old.isoformat()}" not in summary["newest_events"]


def test_rerun_without_new_data_changes_nothing(kpi_store):
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=SPIKE), "test")
    _materialize(kpi_store)
    _materialize(kpi_store)  # the nightly retrain on the scored history
    counts = store.table_counts(engine)
    scores = store.load_scores(engine)

    metadata = _materialize(kpi_store)

    assert store.table_counts(engine) == counts
    pd.testing.assert_frame_equal(store.load_scores(engine), scores)
    assert metadata["kpi_models"]["versions_trained"] == 0
    assert metadata["anomaly_scores"]["points_scored"] == 0
    assert metadata["cleaned_kpis"]["rows_written"] == metadata["kpi_features"]["rows_written"] == 0


def test_new_points_are_the_only_ones_scored(kpi_store):
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    _materialize(kpi_store)
    before = store.load_scores(engine)

    store.upsert_observations(engine, hourly_kpis(days=11), "test")
    metadata = _materialize(kpi_store)

    assert metadata["anomaly_scores"]["points_scored"] == 2 * 24
    # Cleaned from each KPI's last observed point on: it and the day after it.
    assert metadata["cleaned_kpis"]["rows_written"] == 2 * (1 + 24)
    after = store.load_scores(engine)
    old = after["ts"] <= before["ts"].max()
    pd.testing.assert_frame_equal(after[old].reset_index(drop=True), before)
    new = after[~old]
    assert len(new) == 2 * 24
    # Scored by the retrain on the first ten days, which ended before every new point.
    assert set(new["model_version"]) == {(START + 239 * HOUR).strftime("%Y%m%dT%H%M%SZ")}
