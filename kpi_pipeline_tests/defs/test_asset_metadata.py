"""What the assets show in the Dagster UI (kpi_pipeline/defs/assets.py): owners, tags, kinds,
table schemas, and the metadata of each materialization."""

import dagster as dg

from kpi_pipeline.defs.assets import every_shard_tags
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.defs import assets, defs
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.store import schema
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis

SPIKE = START + pd.Timedelta(hours=200)
TABLES = {
    "raw_kpis": schema.kpi_observations,
    "cleaned_kpis": schema.kpi_cleaned,
    "kpi_features": schema.kpi_features,
    "kpi_models": schema.kpi_models,
    "anomaly_scores": schema.anomaly_scores,
}


def _specs() -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_assets_carry_owners_tags_and_kinds():
    for key, spec in _specs().items():
        assert spec.tags["domain"] == "kpi" and spec.tags["tier"] in {"bronze", "silver", "gold"}
        assert spec.kinds, key
        if key != "raw_kpis":  # a source asset belongs to whoever sends the data
            assert spec.owners == assets.OWNERS, key


@pytest.mark.parametrize("key", sorted(TABLES))
def test_table_backed_assets_name_their_table_and_columns(key):
    metadata = _specs()[key].metadata
    assert metadata["dagster/table_name"] == TABLES[key].name
    columns = [column.name for column in metadata["dagster/column_schema"].columns]
    assert columns == [column.name for column in TABLES[key].columns]


def _materialized(selection, kpi_store) -> dict[str, dict]:
    result = dg.materialize(selection, resources={"store": kpi_store}, tags=every_shard_tags())
    assert result.success
    return {
        event.asset_key.to_user_string(): {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def test_materializations_report_severities_newest_anomalies_and_models(pg_url):
    kpi_store = KpiStore(database_url=pg_url)
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=SPIKE), "test")

    metadata = _materialized(assets.ASSETS, kpi_store)

    scores = metadata["anomaly_scores"]
    counts = store.severity_counts(engine)
    assert {level: scores[f"{level}_anomalies"] for level in store.SEVERITIES} == counts
    assert sum(counts.values()) == scores["anomalies"] > 0
    assert scores["dagster/row_count"] == scores["points_scored"]
    newest = store.newest_anomalies(engine, 1).iloc[0]
    assert f"| {newest['kpi']} " in scores["newest_anomalies"].splitlines()[2]
    last_scores = scores["last_score_per_kpi"]
    assert "| orders " in last_scores and "| sessions " in last_scores
    models = metadata["kpi_models"]["models"]
    versions = store.model_versions(engine, "orders")
    orders_row = next(line for line in models.splitlines() if line.startswith("| orders"))
    assert versions["version"].iloc[0] in orders_row
    assert f"{versions['residual_scale'].iloc[0]:.4g}" in orders_row


def test_per_kpi_tables_are_capped(sqlite_url, monkeypatch):
    # The seed is fully scored, so scoring it again fits nothing and writes nothing.
    seed.seed_database(sqlite_url).dispose()
    monkeypatch.setattr(assets, "PER_KPI_ROWS", 3)

    scores = _materialized([assets.anomaly_scores], KpiStore(database_url=sqlite_url))["anomaly_scores"]

    assert scores["points_scored"] == 0
    assert {scores[f"{level}_anomalies"] for level in store.SEVERITIES} == {0}
    table = scores["last_score_per_kpi"]
    assert table.splitlines()[2].startswith("| orders ")  # the most anomalous KPI first
    assert table.rstrip().endswith(f"… and {len(seed.KPIS) - 3} more KPIs.")
    assert "critical" in scores["newest_anomalies"]
