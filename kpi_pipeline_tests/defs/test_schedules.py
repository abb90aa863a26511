"""Schedules (kpi_pipeline/defs/schedules.py): what they run, when, how to switch them off, and
the instance setting that keeps scoring runs from overlapping."""

import datetime as dt

import dagster as dg
import pytest

from kpi_pipeline.config import PROJECT_ROOT, Settings
from kpi_pipeline.defs import build_definitions, defs
from kpi_pipeline.defs.assets import TRAINING_SHARDS
from kpi_pipeline.defs.jobs import SCORING_RUN_TAGS
from kpi_pipeline.defs.schedules import AUTOMATION, build_schedules
from kpi_pipeline.defs.sensors import build_sensors


def _by_name(definitions) -> dict:
    return {d.name: d for d in definitions}


def test_hourly_scoring_and_daily_training_run_by_default():
    schedules = _by_name(defs.schedules)

    scoring, training = schedules["hourly_scoring_schedule"], schedules["daily_training_schedule"]
    assert (scoring.job_name, scoring.cron_schedule) == ("scoring_job", "5 * * * *")
    assert (training.job_name, training.cron_schedule) == ("training_job", "30 2 * * *")
    assert {s.execution_timezone for s in schedules.values()} == {"UTC"}
    assert {scoring.default_status, training.default_status} == {dg.DefaultScheduleStatus.RUNNING}
    sensors = _by_name(defs.sensors)
    assert {s.default_status for s in sensors.values()} == {dg.DefaultSensorStatus.RUNNING}
    assert sensors["new_kpi_data_sensor"].minimum_interval_seconds == 30
    assert set(schedules) | set(sensors) == set(AUTOMATION)


def test_a_tick_requests_one_run_of_the_schedules_job():
    scoring = _by_name(defs.schedules)["hourly_scoring_schedule"]
    tick_time = dt.datetime(2025, 3, 11, 8, 5, tzinfo=dt.timezone.utc)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time) as context,
    ):
        [request] = scoring.evaluate_tick(context).run_requests

    # No job name: the run targets the schedule's own job (scoring_job).
    assert request.job_name is None and request.run_config == {}
    assert request.tags["dagster/schedule_name"] == "hourly_scoring_schedule"


def test_a_training_tick_requests_one_run_per_shard_once():
    training = _by_name(defs.schedules)["daily_training_schedule"]
    tick_time = dt.datetime(2025, 3, 11, 2, 30, tzinfo=dt.timezone.utc)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick_time,
            repository_def=defs.get_repository_def(),
        ) as context,
    ):
        requests = training.evaluate_tick(context).run_requests

    shards = TRAINING_SHARDS.get_partition_keys()
    assert [r.partition_key for r in requests] == shards
    assert len({r.run_key for r in requests}) == len(shards)
    assert all(tick_time.isoformat() in r.run_key for r in requests)


def test_times_zone_and_on_off_come_from_settings():
    settings = Settings(
        scoring_cron="*/15 * * * *",
        training_cron="0 4 * * 1",
        schedule_timezone="Europe/Berlin",
        new_data_sensor_interval=60,
        automation_off="daily_training_schedule, anomaly_check_sensor",
    )
    schedules, sensors = _by_name(build_schedules(settings)), _by_name(build_sensors(settings))

    assert schedules["hourly_scoring_schedule"].cron_schedule == "*/15 * * * *"
    assert schedules["daily_training_schedule"].cron_schedule == "0 4 * * 1"
    assert schedules["daily_training_schedule"].execution_timezone == "Europe/Berlin"
    assert schedules["daily_training_schedule"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedules["hourly_scoring_schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert sensors["anomaly_check_sensor"].default_status == dg.DefaultSensorStatus.STOPPED
    assert sensors["new_kpi_data_sensor"].minimum_interval_seconds == 60

    everything_off = build_definitions(Settings(automation_off="all"))
    stopped = {s.default_status for s in everything_off.schedules}
    assert stopped == {dg.DefaultScheduleStatus.STOPPED}
    assert {s.default_status for s in everything_off.sensors} == {dg.DefaultSensorStatus.STOPPED}


def test_an_unknown_name_in_automation_off_is_an_error():
    with pytest.raises(ValueError, match="unknown schedules or sensors \\['hourly_scoring'\\]"):
        build_schedules(Settings(automation_off="hourly_scoring"))


def test_the_instance_config_lets_one_scoring_run_at_a_time(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    with dg.DagsterInstance.get() as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits

    [(key, value)] = SCORING_RUN_TAGS.items()
    assert {"key": key, "value": value, "limit": 1} in limits
    for job in ("scoring_job", "all_assets_job"):
        assert defs.resolve_job_def(job).tags.items() >= SCORING_RUN_TAGS.items()


def test_the_retention_schedule_runs_only_once_a_retention_is_set():
    def status(**settings) -> dg.DefaultScheduleStatus:
        schedules = _by_name(build_schedules(Settings(**settings)))
        return schedules["daily_retention_schedule"].default_status

    assert status() == dg.DefaultScheduleStatus.STOPPED  # default: keep everything
    assert status(score_retention_days=90) == dg.DefaultScheduleStatus.RUNNING
    assert status(observation_retention_days=400, retention_cron="0 5 * * *") == dg.DefaultScheduleStatus.RUNNING
    assert (
        status(observation_retention_days=400, automation_off="daily_retention_schedule")
        == dg.DefaultScheduleStatus.STOPPED
    )
    schedule = _by_name(build_schedules(Settings()))["daily_retention_schedule"]
    assert (schedule.job_name, schedule.cron_schedule) == ("retention_job", "45 3 * * *")
