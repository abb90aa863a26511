"""KPI shards (kpi_pipeline/sharding.py) and the partitioned ``kpi_models`` asset."""

import dagster as dg
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.defs.assets import ASSETS, TRAINING_SHARDS, kpi_models
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.sharding import kpis_in_shards, shard_keys, shard_of, shards_of
from kpi_pipeline_tests.defs.synthetic import hourly_kpis


def test_a_kpi_keeps_its_shard_whatever_other_kpis_exist():
    # crc32, not Python's per-process salted hash: these are the same in every process.
    assert shard_of("sales", 8) == "shard-04"
    assert shard_of("orders", 8) == "shard-06"
    names = [f"kpi_{index}" for index in range(10_000)]
    before = {name: shard_of(name, 8) for name in names}
    assert {name: shard_of(name, 8) for name in reversed(names)} == before
    sizes = pd.Series(before).value_counts()
    assert len(sizes) == 8 and sizes.max() / sizes.min() < 1.05  # evenly spread


def test_shard_keys_sort_in_order_and_unknown_shards_are_refused():
    assert shard_keys(3) == ["shard-00", "shard-01", "shard-02"]
    assert shard_keys(120)[-1] == "shard-119" and shard_keys(120)[5] == "shard-005"
    kpis = ["a", "b", "c", "d"]
    together = sorted(kpis_in_shards(kpis, [s], 3) for s in shard_keys(3))
    assert sorted(sum(together, [])) == kpis
    assert shards_of(kpis, 3) == sorted({shard_of(k, 3) for k in kpis})
    with pytest.raises(ValueError, match="unknown shard.*shard-09.*KPI_TRAINING_SHARDS"):
        kpis_in_shards(kpis, ["shard-09"], 3)
    with pytest.raises(ValueError, match="at least one shard"):
        shard_keys(0)


def _train(url: str, partition_key: str, kpis: list[str] | None = None):
    config = {"ops": {"kpi_models": {"config": {"kpis": kpis or []}}}}
    return dg.materialize(
        ASSETS,
        selection=[kpi_models],
        resources={"store": KpiStore(database_url=url)},
        partition_key=partition_key,
        run_config=config,
        raise_on_error=False,
    )


def test_a_shard_run_trains_its_own_kpis_and_no_other(sqlite_url):
    engine = KpiStore(database_url=sqlite_url).engine()
    frame = hourly_kpis(days=6)  # orders and sessions
    store.upsert_observations(engine, frame, "test")
    count = TRAINING_SHARDS.get_num_partitions()
    shard = shard_of("orders", count)
    assert shard_of("sessions", count) != shard  # the test needs them apart

    result = _train(sqlite_url, shard)

    assert result.success
    [materialization] = result.asset_materializations_for_node("kpi_models")
    assert materialization.partition == shard
    assert materialization.metadata["kpis_trained"].value == ["orders"]
    assert store.trained_kpis(engine) == {"orders"}


def test_one_kpi_of_a_shard_can_be_trained_alone_and_a_wrong_shard_is_explained(sqlite_url):
    engine = KpiStore(database_url=sqlite_url).engine()
    store.upsert_observations(engine, hourly_kpis(days=6), "test")
    count = TRAINING_SHARDS.get_num_partitions()
    home, other = shard_of("sessions", count), shard_of("orders", count)

    assert _train(sqlite_url, home, ["sessions"]).success
    assert store.trained_kpis(engine) == {"sessions"}

    wrong = _train(sqlite_url, other, ["sessions"])
    assert not wrong.success
    [failure] = wrong.get_step_failure_events()
    assert f"sessions is in {home}" in failure.step_failure_data.error.message
    unknown = _train(sqlite_url, home, ["nope"])
    assert "unknown KPI(s): nope" in unknown.get_step_failure_events()[0].step_failure_data.error.message
