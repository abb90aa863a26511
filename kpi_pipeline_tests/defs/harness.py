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


ANOMALY_CHECK_JOB = dg.define_asset_job("anomaly_check_job", selection=dg.AssetSelection.checks(no_new_anomalies))
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
            # Partitioned run requests (training shards) are resolved against the definitions.
            repository_def=self.defs.get_repository_def(),
        ) as context:
            data = definition.evaluate_tick(context)
        if data.cursor is not None:
            self.cursors[sensor] = data.cursor
        return data

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(instance=self.instance, tags=request.tags, partition_key=request.partition_key)
        assert result.success
        return result

    def run_all(self, requests: list[dg.RunRequest]) -> list[dg.ExecuteInProcessResult]:
        """Execute ``requests`` in order, then the scoring that ``score_after_training_sensor``
        requests after each successful training run (as the daemon would)."""
        results = [self.run(request) for request in requests]
        for result in list(results):
            if result.dagster_run.job_name == "training_job":
                results.append(self.run(self.after_training(result)))
        return results

    def after_training(self, result: dg.ExecuteInProcessResult) -> dg.RunRequest:
        """The request of ``score_after_training_sensor`` for a finished training run."""
        sensor = self.defs.resolve_sensor_def("score_after_training_sensor")
        [success] = self.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=success.dagster_event,
            dagster_instance=self.instance,
            dagster_run=result.dagster_run,
        )
        request = sensor(context)
        return dg.RunRequest(job_name="scoring_job", run_key=request.run_key, tags=request.tags)

    def run_job(self, name: str, tags: dict | None = None) -> dg.ExecuteInProcessResult:
        return self.run(dg.RunRequest(job_name=name, tags=tags or {}))

    @staticmethod
    def check_result(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
        [evaluation] = [
            e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.asset_check_evaluation_data.check_name == name
        ]
        return evaluation
