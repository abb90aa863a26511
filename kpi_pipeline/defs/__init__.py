"""Dagster definitions of kpi-pipeline: ``dagster dev -m kpi_pipeline.defs`` or workspace.yaml.

``dagster dev`` runs the schedules and sensors too, so it alone keeps scores fresh and alerts
flowing; ``KPI_AUTOMATION_OFF`` lists the ones that should start stopped.
"""

import dagster as dg

from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.defs.assets import ASSETS
from kpi_pipeline.defs.checks import CHECKS
from kpi_pipeline.defs.jobs import JOBS
from kpi_pipeline.defs.resources import KpiStore, alert_resources
from kpi_pipeline.defs.schedules import build_schedules
from kpi_pipeline.defs.sensors import build_sensors
from kpi_pipeline.defs.tuning import TUNING_ASSETS, tuning_job, tuning_schedules


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, check, job, schedule, sensor and resource, configured by ``settings``."""
    return dg.Definitions(
        assets=[*ASSETS, *TUNING_ASSETS],
        asset_checks=CHECKS,
        jobs=[*JOBS, tuning_job],
        schedules=[*build_schedules(settings), *tuning_schedules(settings)],
        sensors=build_sensors(settings),
        resources={"store": KpiStore(), **alert_resources(settings)},
        executor=executor(settings),
    )


def executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor of every job, from ``KPI_EXECUTOR``: parallel processes on this machine
    (default), one process, or ``dagster-celery`` workers fed through ``KPI_CELERY_BROKER``."""
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": settings.celery_broker,
                "backend": settings.celery_backend,
                "config_source": {"task_default_queue": settings.celery_queue},
            },
            name="celery",
        )
    return dg.multiprocess_executor


defs = build_definitions(get_settings())
