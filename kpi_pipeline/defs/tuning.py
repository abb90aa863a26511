"""Per-KPI tuning in Dagster: the ``kpi_parameters`` asset, its job and its weekly schedule.

Tuning is opt-in (docs/tuning.md): the asset is outside ``all_assets_job`` and ``kpi-pipeline
run``, and ``weekly_tuning_schedule`` starts stopped; start it in the UI (or ``dagster schedule
start weekly_tuning_schedule``) to retune every KPI shard once a week. Training applies what is
stored at its next retrain.
"""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline import tune as tuning_step
from kpi_pipeline.config import Settings
from kpi_pipeline.defs.assets import OWNERS, TRAINING_SHARDS, _log, _markdown, _shard_kpis, _shard_names, _tags
from kpi_pipeline.defs.assets import cleaned_kpis
from kpi_pipeline.defs.jobs import OPT_IN_TAG
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.defs.schedules import every_shard, starts_running
from kpi_pipeline.detection.tuning import TuningSettings
from kpi_pipeline.store import schema as tables

_DEFAULTS = TuningSettings()

TUNING_CRON = "0 1 * * 0"
"""Sundays at 01:00, before the daily retrain (02:30 by default) that picks the parameters up."""


class TuningConfig(dg.Config):
    """How hard to search each KPI's parameters."""

    budget_seconds: float = Field(
        default=_DEFAULTS.budget_seconds, description="Time per KPI after which no new trial starts."
    )
    trials: int = Field(default=_DEFAULTS.max_trials, description="Most trials per KPI.")
    seed: int = Field(default=_DEFAULTS.seed, description="Seed of the search.")
    kpis: list[str] = Field(
        default=[], description="Tune only these KPIs (each must belong to the run's shards); empty: every KPI."
    )


@dg.asset(
    deps=[cleaned_kpis],
    group_name="modeling",
    kinds={"python", "optuna", "postgres"},
    owners=OWNERS,
    tags={**_tags("gold"), OPT_IN_TAG: "true"},
    metadata={"dagster/table_name": tables.kpi_parameters.name},
    partitions_def=TRAINING_SHARDS,
)
def kpi_parameters(context: dg.AssetExecutionContext, store: KpiStore, config: TuningConfig) -> dg.MaterializeResult:
    """Per-KPI detector parameters (``kpi_parameters``) chosen by an Optuna search on each
    KPI's own history, partitioned by KPI shard like ``kpi_models``, which uses them at its next
    retrain. Pinned parameters are kept and not searched."""
    engine = store.engine()
    shards = list(context.partition_keys)
    kpis = _shard_kpis(engine, shards, config.kpis)
    _log("kpi_parameters", f"{len(kpis)} KPIs in {_shard_names(shards)}")
    settings = TuningSettings(budget_seconds=config.budget_seconds, max_trials=config.trials, seed=config.seed)
    results = []
    if kpis:
        results = tuning_step.tune_kpis(
            engine,
            tuning_step.run_config(),
            kpis,
            settings,
            progress=lambda message: _log("kpi_parameters", message),
        )
    tuned = [r for r in results if r.result is not None]
    return dg.MaterializeResult(
        metadata={
            "shards": dg.MetadataValue.json(shards),
            "kpis_tuned": len(tuned),
            "kpis_improved": sum(r.result.improved for r in tuned if r.result),
            "trials": sum(r.result.trials for r in tuned if r.result),
            "pruned_trials": sum(r.result.pruned_trials for r in tuned if r.result),
            "failed": dg.MetadataValue.json({r.kpi: r.detail for r in results if r.status == "failed"}),
            "parameters": dg.MetadataValue.json({r.kpi: r.result.params for r in tuned if r.result}),
            "summary": _summary(results),
        }
    )


def _summary(results: list[tuning_step.KpiTuning]) -> dg.MetadataValue:
    rows = []
    for outcome in results:
        result = outcome.result
        rows.append(
            {
                "kpi": outcome.kpi,
                "status": outcome.status if result else f"{outcome.status}: {outcome.detail}",
                "objective": result.objective if result else "",
                "defaults": result.default_value if result else None,
                "tuned": result.value if result else None,
                "parameters": json.dumps(result.params) if result else "",
                "pinned": json.dumps(outcome.pinned) if outcome.pinned else "",
                "trials (pruned)": f"{result.trials} ({result.pruned_trials})" if result else "",
                "seconds": round(result.seconds, 1) if result else None,
            }
        )
    return _markdown(pd.DataFrame(rows))


tuning_job = dg.define_asset_job(
    "tuning_job",
    selection=[kpi_parameters],
    partitions_def=TRAINING_SHARDS,
    description="Tune the detector parameters of one KPI shard (its partition); the weekly "
    "schedule runs every shard, each in its own run.",
)


def tuning_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    """``weekly_tuning_schedule``: stopped by default (tuning is opt-in, docs/tuning.md), and
    stays stopped if ``KPI_AUTOMATION_OFF`` lists it."""
    starts_running("weekly_tuning_schedule", settings)  # checks KPI_AUTOMATION_OFF's names
    return [
        dg.schedule(
            name="weekly_tuning_schedule",
            job=tuning_job,
            cron_schedule=TUNING_CRON,
            execution_timezone=settings.schedule_timezone,
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description="Retune every KPI's detector parameters once a week, one run per KPI "
            "shard (opt-in: start it to use it).",
        )(every_shard)
    ]


TUNING_ASSETS = [kpi_parameters]
