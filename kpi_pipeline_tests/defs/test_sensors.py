"""Sensors (kpi_pipeline/defs/sensors.py) on Postgres with a real Dagster instance: the new-data
sensor's cursor, run keys, late and corrected data; the alert sensor sending what the anomaly
check queued, once, whichever Dagster instance it runs on."""

import json

import dagster as dg
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.config import Settings
from kpi_pipeline.defs.assets import TRAINING_SHARDS
from kpi_pipeline.defs.resources import KpiStore, alert_resources
from kpi_pipeline.sharding import shard_of, shards_of
from kpi_pipeline_tests.alerts.databases import module_pg_engine, pg_engine  # noqa: F401
from kpi_pipeline_tests.alerts.servers import SlackApi
from kpi_pipeline_tests.defs.harness import HOUR, Automation, orders

START = pd.Timestamp("2025-03-03", tz="UTC")
SENSOR = "new_kpi_data_sensor"


@pytest.fixture
def engine(pg_engine):
    return pg_engine


@pytest.fixture(scope="module")
def instance():
    # The sensor keeps its state in its cursor, not in the instance: one serves every test.
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def automation(engine, instance):
    url = engine.url.render_as_string(hide_password=False)
    resources = {"store": KpiStore(database_url=url), **alert_resources(Settings())}
    return Automation(instance, resources, Settings())


def _cursor(automation) -> pd.Timestamp:
    return pd.Timestamp(json.loads(automation.cursors[SENSOR])["ingested_at"])


def test_no_new_rows_is_a_skip_that_says_since_when(automation, engine):
    assert automation.tick(SENSOR).skip_message == "no rows ingested into kpi_observations yet"

    store.upsert_observations(engine, orders(START, 48), "test")
    cursor = automation.tick(SENSOR).cursor
    again = automation.tick(SENSOR)
    assert again.run_requests == [] and again.cursor == cursor
    assert again.skip_message.startswith("no rows ingested into kpi_observations since 20")


def test_a_kpi_without_a_model_gets_its_shard_trained_and_then_scored(automation, engine):
    store.upsert_observations(engine, orders(START, 48), "test")

    scoring, training = automation.tick(SENSOR).run_requests

    newest = store.observations_ingested_since(engine)["max_ingested_at"].max()
    shard = shard_of("orders", TRAINING_SHARDS.get_num_partitions())
    assert scoring.job_name == "scoring_job"
    assert scoring.run_key == f"scoring_job@{newest.isoformat()}"
    assert (training.job_name, training.partition_key) == ("training_job", shard)
    assert training.run_key == f"training_job:{shard}@{newest.isoformat()}"
    assert training.tags["kpi/untrained_kpis"] == "orders"
    assert scoring.tags["kpi/changed_kpis"] == "orders"
    assert _cursor(automation) == newest


def test_untrained_kpis_of_one_shard_share_one_training_run(automation, engine):
    shards = TRAINING_SHARDS.get_num_partitions()
    names = [f"kpi_{index}" for index in range(40)]
    frames = [orders(START, 4).assign(kpi=name) for name in names]
    store.upsert_observations(engine, pd.concat(frames, ignore_index=True), "test")

    _scoring, *training = automation.tick(SENSOR).run_requests

    assert sorted(r.partition_key for r in training) == shards_of(names, shards)
    for request in training:
        members = request.tags["kpi/untrained_kpis"].split(",")
        assert {shard_of(name, shards) for name in members} == {request.partition_key}
    assert sum(len(r.tags["kpi/untrained_kpis"].split(",")) for r in training) == len(names)


def test_a_successful_training_run_requests_scoring_once(automation, engine):
    store.upsert_observations(engine, orders(START, 24 * 10), "test")
    _scoring, training = automation.tick(SENSOR).run_requests
    result = automation.run(training)

    first, again = automation.after_training(result), automation.after_training(result)

    assert first.job_name == "scoring_job"
    assert first.run_key == again.run_key == f"after-training:{result.run_id}"
    assert store.trained_kpis(engine) == {"orders"}


def test_rows_of_trained_kpis_request_scoring_of_just_those(automation, engine):
    store.upsert_observations(engine, orders(START, 48), "test")
    store.save_model(
        engine,
        kpi="orders",
        kind="ensemble",
        version="v1",
        trained_at=START,
        train_start=START,
        train_end=START,
        n_points=48,
        params={},
        metrics={},
        artifact=b"",
    )
    automation.tick(SENSOR)
    store.upsert_observations(engine, orders(START, 50), "test")

    [request] = automation.tick(SENSOR).run_requests

    assert request.job_name == "scoring_job" and request.tags["kpi/changed_kpis"] == "orders"


def test_late_and_corrected_rows_are_seen_and_a_repeated_tick_repeats_its_run_key(automation, engine):
    store.upsert_observations(engine, orders(START, 48), "test")
    automation.tick(SENSOR)
    before = automation.cursors[SENSOR]

    late = pd.DataFrame({"kpi": ["orders"], "ts": [START - 24 * HOUR], "value": [90.0]})
    store.upsert_observations(engine, late, "late file")
    late_request = automation.tick(SENSOR).run_requests[0]  # scoring (then training)
    assert _cursor(automation) > pd.Timestamp(json.loads(before)["ingested_at"])

    corrected = orders(START, 48).iloc[[5]].assign(value=1.0)
    store.upsert_observations(engine, corrected, "correction")
    after_late = automation.cursors[SENSOR]
    correction_request = automation.tick(SENSOR).run_requests[0]
    assert len({late_request.run_key, correction_request.run_key}) == 2

    # The daemon lost the tick's cursor (a crash) and evaluates again: same key, so no new run.
    automation.cursors[SENSOR] = after_late
    repeated = automation.tick(SENSOR).run_requests[0]
    assert repeated.run_key == correction_request.run_key


# -- anomaly_check_sensor -----------------------------------------------------------------


def test_alerts_go_out_once_across_a_new_dagster_instance(engine):
    slack = SlackApi("xoxb-test").start()
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(slack_token="xoxb-test", slack_channel="#kpi", slack_base_url=slack.base_url)
    resources = {"store": KpiStore(database_url=url), **alert_resources(settings)}
    try:
        with dg.instance_for_test() as instance:
            automation = Automation(instance, resources, settings)
            _score(engine, hours_ago=range(100, 40, -1), scored_hours_ago=30, spike_hours_ago=60)
            automation.run_job("anomaly_check_job")  # first evaluation: history only
            _score(engine, hours_ago=range(40, 35, -1), scored_hours_ago=20, spike_hours_ago=38)
            automation.run_job("anomaly_check_job")
            tick = automation.tick("anomaly_check_sensor")
            assert len(slack.messages()) == 1 and tick.cursor is None
            assert tick.skip_message.startswith("sent 1 alert(s) in 1 message(s)")
            # Queued by a check, not sent before the redeploy (beyond the 6 h cooldown).
            _score(engine, hours_ago=range(35, 28, -1), scored_hours_ago=10, spike_hours_ago=29)
            automation.run_job("anomaly_check_job")

        with dg.instance_for_test() as new_instance:
            automation = Automation(new_instance, resources, settings)
            automation.tick("anomaly_check_sensor")
            assert len(slack.messages()) == 2
            _score(engine, hours_ago=range(28, 18, -1), scored_hours_ago=5, spike_hours_ago=19)
            automation.run_job("anomaly_check_job")
            automation.tick("anomaly_check_sensor")
            automation.tick("anomaly_check_sensor")
            assert len(slack.messages()) == 3

        sent = store.load_deliveries(engine)
        assert sent["ts"].tolist() == [NOW - h * HOUR for h in (38, 29, 19)]
        assert set(sent["status"]) == {"sent"}
    finally:
        slack.stop()


NOW = pd.Timestamp.now("UTC").floor("h")


def _score(engine, hours_ago: range, scored_hours_ago: int, spike_hours_ago: int | None = None):
    """Scores of ``orders`` at ``NOW - h``; the one at ``spike_hours_ago`` is a high anomaly."""
    spike = [h == spike_hours_ago for h in hours_ago]
    store.upsert_scores(
        engine,
        pd.DataFrame(
            {
                "kpi": "orders",
                "ts": [NOW - h * HOUR for h in hours_ago],
                "value": 100.0,
                "expected": 100.0,
                "score": 0.1,
                "is_anomaly": spike,
                "severity": ["high" if s else None for s in spike],
                "scored_at": NOW - scored_hours_ago * HOUR,
            }
        ),
    )
