"""The ``group_events`` asset in the graph, with and without a groups file, on PostgreSQL."""

import pytest

from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.store import groups as group_store
from kpi_pipeline.store import upsert_observations
from kpi_pipeline_tests.defs.synthetic import hourly_kpis
from kpi_pipeline_tests.defs.test_assets import _materialize


@pytest.fixture
def kpi_store(pg_url, monkeypatch):
    monkeypatch.delenv("KPI_GROUPS_FILE", raising=False)
    get_settings.cache_clear()
    yield KpiStore(database_url=pg_url)
    get_settings.cache_clear()


def test_without_groups_the_asset_judges_nothing(kpi_store):
    engine = kpi_store.engine()
    upsert_observations(engine, hourly_kpis(days=10), "test")

    metadata = _materialize(kpi_store)["group_events"]

    assert (metadata["groups"], metadata["timestamps_judged"], metadata["events_written"]) == (0, 0, 0)
    assert group_store.load_group_states(engine) == {}
    assert group_store.load_member_scores(engine, ["orders", "sessions"])["multivariate_score"].isna().all()


def test_a_declared_group_is_judged_after_its_members_are_scored(kpi_store, monkeypatch, tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("groups:\n  shop:\n    members: [orders, sessions]\n")
    monkeypatch.setenv("KPI_GROUPS_FILE", str(path))
    get_settings.cache_clear()
    engine = kpi_store.engine()
    upsert_observations(engine, hourly_kpis(days=10), "test")

    metadata = _materialize(kpi_store)["group_events"]

    # 192 scored points per member; the first version needs 168 of them.
    assert (metadata["groups"], metadata["timestamps_judged"]) == (1, 192 - 168)
    assert metadata["failed"] == {}
    assert [m.members for m in group_store.load_group_models(engine, "shop")] == [("orders", "sessions")]
