"""Sensors: score new KPI rows within a minute, and alert the anomalies the checks report.

``new_kpi_data_sensor`` polls ``kpi_observations`` for rows ingested after its cursor and asks
for a scoring run, and for a training run of each shard holding a KPI without a model;
``score_after_training_sensor`` scores again once such a run succeeds. ``anomaly_check_sensor``
sends the alerts the ``no_new_anomalies`` check queued in the store's outbox, including alerts
left pending by an earlier failure; it reads nothing from Dagster's event log.
"""

import json

import dagster as dg
import pandas as pd

from kpi_pipeline import store as kpi_store
from kpi_pipeline.alerts.channels import (
    EmailChannel,
    SlackChannel,
    SmsChannel,
    announce_off_channels,
)
from kpi_pipeline.alerts.outbox import Delivered, deliver
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.config import Settings
from kpi_pipeline.defs.assets import TRAINING_SHARDS
from kpi_pipeline.defs.jobs import scoring_job, training_job
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.defs.schedules import starts_running
from kpi_pipeline.sharding import kpis_in_shards, shards_of

TAG_VALUE_LIMIT = 200
"""Longest run tag value the sensor writes (a list of KPIs is cut, with a count)."""

_announced_off: set[str] = set()
"""Channels whose "off" notice this process has logged (it is logged once)."""


def new_kpi_data(context: dg.SensorEvaluationContext, store: KpiStore):
    """Request a scoring run for the KPIs with rows ingested since the cursor, and a training
    run of each shard holding a KPI without a model.

    The cursor is the newest ``ingested_at`` seen; it only moves with run requests covering
    those rows (a run scores everything stored when it starts). ``ingested_at`` moves whenever a
    row is inserted or its value corrected, so late data for old timestamps is seen too. Run
    keys carry that newest ``ingested_at``: evaluating the same rows again requests nothing new.
    A new KPI is scored by ``score_after_training_sensor`` once its shard's training succeeds.
    """
    engine = store.engine()
    cursor = _ingested_cursor(context.cursor)
    changed = kpi_store.observations_ingested_since(engine, cursor)
    if changed.empty:
        since = f"since {cursor.isoformat()}" if cursor is not None else "yet"
        return dg.SkipReason(f"no rows ingested into kpi_observations {since}")
    newest = changed["max_ingested_at"].max()
    kpis = changed["kpi"].tolist()
    untrained = sorted(set(kpis) - kpi_store.trained_kpis(engine))
    shards = shards_of(untrained, TRAINING_SHARDS.get_num_partitions())
    context.log.info(
        f"{int(changed['n_rows'].sum())} rows of {len(kpis)} KPIs ingested up to "
        f"{newest.isoformat()}: requesting {scoring_job.name}"
        + (
            f" and {training_job.name} of {', '.join(shards)} (no model yet: {_short_list(untrained)})"
            if untrained
            else ""
        )
    )
    tags = {"kpi/changed_kpis": _short_list(kpis), "kpi/ingested_until": newest.isoformat()}
    requests = [
        dg.RunRequest(
            run_key=f"{scoring_job.name}@{newest.isoformat()}",
            job_name=scoring_job.name,
            tags=tags,
        ),
        *(
            dg.RunRequest(
                run_key=f"{training_job.name}:{shard}@{newest.isoformat()}",
                job_name=training_job.name,
                partition_key=shard,
                tags={
                    **tags,
                    "kpi/untrained_kpis": _short_list(
                        kpis_in_shards(untrained, [shard], TRAINING_SHARDS.get_num_partitions())
                    ),
                },
            )
            for shard in shards
        ),
    ]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"ingested_at": newest.isoformat()}))


def score_after_training(context: dg.RunStatusSensorContext):
    """Score right after a training run succeeds, so a new KPI's history is scored (and its
    newest points judged) without waiting for the hourly schedule."""
    run = context.dagster_run
    shard = run.tags.get("dagster/partition", "")
    return dg.RunRequest(
        run_key=f"after-training:{run.run_id}",
        tags={"kpi/after_training_run": run.run_id, "kpi/trained_shard": shard},
    )


def anomaly_alerts(
    context: dg.SensorEvaluationContext,
    store: KpiStore,
    email: EmailChannel,
    slack: SlackChannel,
    sms: SmsChannel,
    alert_policy: AlertPolicy,
):
    """Send every alert due in the outbox, once.

    The ``no_new_anomalies`` check queues the alerts (``alerts.outbox.queue_news``); the outbox
    knows what is due, so the sensor keeps no cursor and any sensor, on any Dagster instance,
    sends the same alerts. Sending happens on every tick, so alerts a channel could not take
    earlier go out once it is back.
    """
    channels = {"email": email, "slack": slack, "sms": sms}
    announce_off_channels(channels, context.log.info, _announced_off)
    delivered = deliver(store.engine(), channels, alert_policy, log=context.log)
    return dg.SkipReason(_summary(delivered))


def build_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    def status(name: str) -> dg.DefaultSensorStatus:
        running = starts_running(name, settings)
        return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED

    return [
        dg.sensor(
            name="new_kpi_data_sensor",
            jobs=[scoring_job, training_job],
            minimum_interval_seconds=settings.new_data_sensor_interval,
            default_status=status("new_kpi_data_sensor"),
            description="Requests a scoring run when rows land in kpi_observations, and a "
            "training run of the shards of KPIs without a model.",
        )(new_kpi_data),
        dg.run_status_sensor(
            name="score_after_training_sensor",
            run_status=dg.DagsterRunStatus.SUCCESS,
            monitored_jobs=[training_job],
            request_job=scoring_job,
            minimum_interval_seconds=settings.new_data_sensor_interval,
            default_status=status("score_after_training_sensor"),
            description="Requests a scoring run when a training run succeeds, so new KPIs are "
            "scored as soon as they have a model.",
        )(score_after_training),
        dg.sensor(
            name="anomaly_check_sensor",
            minimum_interval_seconds=settings.alert_sensor_interval,
            default_status=status("anomaly_check_sensor"),
            description="Sends the email / Slack / SMS alerts the no_new_anomalies check "
            "queued, and retries pending ones.",
        )(anomaly_alerts),
    ]


def _ingested_cursor(cursor: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(json.loads(cursor)["ingested_at"]) if cursor else None


def _short_list(names: list[str]) -> str:
    text = ",".join(names)
    if len(text) <= TAG_VALUE_LIMIT:
        return text
    return text[: TAG_VALUE_LIMIT - 20].rsplit(",", 1)[0] + f",... ({len(names)} KPIs)"


def _summary(delivered: Delivered) -> str:
    parts = [
        f"sent {delivered.sent} alert(s) in {delivered.messages} message(s), "
        f"{delivered.waiting} waiting for a retry, {delivered.failed} failed"
    ]
    if delivered.suppressed:
        parts.append(f"{delivered.suppressed} suppressed as false positives")
    return "; ".join(parts)
