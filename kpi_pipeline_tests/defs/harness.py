"""Drive the Dagster automation the way the daemon does: evaluate sensor ticks against a real
(temporary) ``DagsterInstance``, keep their cursors, and execute the runs they request."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from kpi_pipeline.defs.assets import ASSETS
from kpi_pipeline.defs.checks import CHECKS, no_new_anomalies
from kpi_pipeline.defs.jobs import JOBS
from kpi_pipeline.defs.sensors import build_sensors
from kpi_pipeline_tests.defs.synthetic import SPIKE_FACTOR, hourly_kpis

HOUR = pd.Timedelta(hours=1)


def orders(start: pd.Timestamp, hours: int, spikes: tuple[pd.Timestamp, ...] = ()) -> pd.DataFrame:
    """The first ``hours`` hourly ``orders`` points of the synthetic series from ``start``, with
    each of ``spikes`` multiplied by ``SPIKE_FACTOR``. A longer series from the same start keeps
    the earlier values, so it can stand for new rows landing."""
    frame = hourly_kpis(days=hours // 24 + 1, start=start)
    frame = frame[frame["kpi"] == "orders"].head(hours).reset_index(drop=True)
    frame.loc[frame["ts"].isin(spikes), "value"] *= SPIKE_FACTOR
    return frame


ANOMALY_CHECK_JOB = dg.define_asset_job(
    "anomaly_check_job", selection=dg.AssetSelection.checks(no_new_anomalies)
)
"""Evaluates ``no_new_anomalies`` alone, on scores a test wrote itself."""


class Automation:
    """Definitions with the given resources, a test instance, and sensor cursors kept per tick."""

    def __init__(self, instance: dg.DagsterInstance, resources: dict, settings) -> None:
        self.instance = instance
        self.resources = resources
        self.defs = dg.Definitions(
            assets=ASSETS,
            asset_checks=CHECKS,
            jobs=[*JOBS, ANOMALY_CHECK_JOB],
            sensors=build_sensors(settings),
            resources=resources,
        )
        self.cursors: dict[str, str | None] = {}

    def tick(self, sensor: str):
        """Evaluate one tick of ``sensor`` and keep its cursor (as the daemon does)."""
        definition = self.defs.resolve_sensor_def(sensor)
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor),
            resources=self.resources,
            sensor_name=sensor,
        ) as context:
            data = definition.evaluate_tick(context)
        if data.cursor is not None:
            self.cursors[sensor] = data.cursor
        return data

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(instance=self.instance, tags=request.tags)
        assert result.success
        return result

    def run_job(self, name: str, tags: dict | None = None) -> dg.ExecuteInProcessResult:
        return self.run(dg.RunRequest(job_name=name, tags=tags or {}))

    @staticmethod
    def check_result(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
        [evaluation] = [
            e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.asset_check_evaluation_data.check_name == name
        ]
        return evaluation
