"""Schedules: hourly scoring and a daily retrain, on by default (``dagster dev`` runs them), and
a daily retention run, on once a retention is set.

Times come from settings (``KPI_SCORING_CRON``, ``KPI_TRAINING_CRON``, ``KPI_SCHEDULE_TIMEZONE``);
``KPI_AUTOMATION_OFF`` lists schedules and sensors that start stopped. Each tick's run key is its
scheduled time, so a restarted daemon never launches the same tick twice.
"""

from __future__ import annotations

import dagster as dg

from kpi_pipeline.config import Settings
from kpi_pipeline.defs.assets import TRAINING_SHARDS
from kpi_pipeline.defs.jobs import retention_job, scoring_job, training_job

AUTOMATION = (
    "hourly_scoring_schedule",
    "daily_training_schedule",
    "daily_retention_schedule",
    "weekly_tuning_schedule",
    "new_kpi_data_sensor",
    "score_after_training_sensor",
    "anomaly_check_sensor",
)
"""Every schedule and sensor, by the name ``KPI_AUTOMATION_OFF`` uses."""


def starts_running(name: str, settings: Settings) -> bool:
    """Whether the schedule or sensor ``name`` runs by default (not listed in automation_off)."""
    off = {part.strip() for part in settings.automation_off.split(",") if part.strip()}
    unknown = sorted(off - {*AUTOMATION, "all"})
    if unknown:
        raise ValueError(
            f"KPI_AUTOMATION_OFF names unknown schedules or sensors {unknown}; known: {', '.join(AUTOMATION)} or all"
        )
    return not off & {name, "all"}


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    def status(name: str) -> dg.DefaultScheduleStatus:
        running = starts_running(name, settings)
        return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    return [
        dg.ScheduleDefinition(
            name="hourly_scoring_schedule",
            job=scoring_job,
            cron_schedule=settings.scoring_cron,
            execution_timezone=settings.schedule_timezone,
            default_status=status("hourly_scoring_schedule"),
            description="Score new points with the stored models, whether or not the new-data "
            "sensor already did (a safety net for missed sensor ticks).",
        ),
        dg.schedule(
            name="daily_training_schedule",
            job=training_job,
            cron_schedule=settings.training_cron,
            execution_timezone=settings.schedule_timezone,
            default_status=status("daily_training_schedule"),
            description="Retrain every KPI's models on its scored history, so scoring always "
            "uses a model at most a day old: one run per KPI shard, in parallel.",
        )(every_shard),
        dg.ScheduleDefinition(
            name="daily_retention_schedule",
            job=retention_job,
            cron_schedule=settings.retention_cron,
            execution_timezone=settings.schedule_timezone,
            # Nothing to delete while every retention is unset (the default: keep everything).
            default_status=status("daily_retention_schedule")
            if (settings.observation_retention_days or settings.score_retention_days)
            else dg.DefaultScheduleStatus.STOPPED,
            description="Delete observations and scores older than their retention.",
        ),
    ]


def every_shard(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One training run per KPI shard; the run key (shard and tick) launches each once."""
    tick = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{shard}@{tick}", partition_key=shard) for shard in TRAINING_SHARDS.get_partition_keys()
    ]
