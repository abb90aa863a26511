"""The Definitions load, and every asset, job and resource is declared as the design says."""

import dagster as dg
import pytest

from kpi_pipeline.defs import defs
from kpi_pipeline.defs.assets import raw_kpis
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.store import table_counts

ASSET_KEYS = {
    "raw_kpis",
    "cleaned_kpis",
    "kpi_features",
    "kpi_models",
    "anomaly_scores",
    "anomalies",
    "group_events",
    "kpi_parameters",
}


def _specs() -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_definitions_load_with_every_asset():
    dg.Definitions.validate_loadable(defs)
    assert set(_specs()) == ASSET_KEYS


@pytest.mark.parametrize("key", sorted(ASSET_KEYS))
def test_asset_has_group_kinds_and_description(key):
    spec = _specs()[key]
    assert spec.group_name in {"ingestion", "modeling", "scoring"}
    assert spec.kinds
    assert spec.description and len(spec.description) > 20


def test_raw_kpis_is_observable_source():
    assert raw_kpis.is_observable


def test_scores_depend_on_models_and_cleaned_series():
    deps = {dep.asset_key.to_user_string() for dep in _specs()["anomaly_scores"].deps}
    assert deps == {"cleaned_kpis", "kpi_models"}


@pytest.mark.parametrize(
    ("job", "assets"),
    [
        ("training_job", {"kpi_models"}),
        ("scoring_job", {"cleaned_kpis", "anomaly_scores", "anomalies", "group_events"}),
        ("all_assets_job", ASSET_KEYS - {"raw_kpis", "kpi_parameters"}),
        ("tuning_job", {"kpi_parameters"}),
    ],
)
def test_job_selects_its_assets(job, assets):
    selected = defs.resolve_job_def(job).asset_layer.selected_asset_keys
    assert {key.to_user_string() for key in selected} == assets


def test_store_resource_gives_one_migrated_engine_per_database(sqlite_url):
    store = KpiStore(database_url=sqlite_url)
    engine = store.engine()
    assert table_counts(engine)["kpi_observations"] == 0
    assert KpiStore(database_url=sqlite_url).engine() is engine
