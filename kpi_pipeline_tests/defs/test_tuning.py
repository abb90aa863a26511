"""The ``kpi_parameters`` asset, ``tuning_job`` and ``weekly_tuning_schedule`` (defs/tuning.py)."""

import datetime as dt

import dagster as dg
import pytest

from kpi_pipeline import store
from kpi_pipeline.defs import defs
from kpi_pipeline.defs.assets import ASSETS, TRAINING_SHARDS
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.defs.tuning import kpi_parameters
from kpi_pipeline.sharding import shard_of
from kpi_pipeline_tests.defs.synthetic import hourly_kpis


@pytest.fixture
def kpi_store(pg_url):
    return KpiStore(database_url=pg_url)


def test_a_shard_run_tunes_its_kpis_and_shows_the_parameters(kpi_store):
    engine = kpi_store.engine()
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    store.pin_parameters(engine, "orders", {"prophet.seasonality_mode": "additive"})
    shard = shard_of("orders", TRAINING_SHARDS.get_num_partitions())

    result = dg.materialize(
        [*ASSETS, kpi_parameters],
        selection=[kpi_parameters],
        partition_key=shard,
        resources={"store": kpi_store},
        run_config={"ops": {"kpi_parameters": {"config": {"kpis": ["orders"], "trials": 2, "budget_seconds": 600}}}},
    )

    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = {key: value.value for key, value in event.materialization.metadata.items()}
    stored = store.load_parameters(engine)["orders"]
    assert metadata["kpis_tuned"] == 1 and metadata["trials"] == 2
    assert metadata["parameters"] == {
        "orders": {key: value for key, value in stored.items() if key != "prophet.seasonality_mode"}
    }
    assert stored["prophet.seasonality_mode"] == "additive"  # the pin, not searched
    assert '"prophet.seasonality_mode": "additive"' in metadata["summary"]


def test_weekly_tuning_schedule_is_opt_in_and_requests_one_run_per_shard():
    schedule = defs.resolve_schedule_def("weekly_tuning_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert (schedule.job_name, schedule.cron_schedule) == ("tuning_job", "0 1 * * 0")
    tick = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.timezone.utc)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        ) as context,
    ):
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == TRAINING_SHARDS.get_partition_keys()
