"""Jobs: training and scoring run on separate cadences; ``all_assets_job`` runs everything.

Each job also runs the asset checks of the assets it selects.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.assets import (
    TRAINING_SHARDS,
    anomalies,
    anomaly_scores,
    cleaned_kpis,
    group_events,
    kpi_models,
)
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.store import retention

training_job = dg.define_asset_job(
    "training_job",
    selection=[kpi_models],
    partitions_def=TRAINING_SHARDS,
    description="Train or retrain the models of one KPI shard (its partition); the daily "
    "schedule runs every shard, each in its own run, in parallel.",
)

OPT_IN_TAG = "kpi/opt_in"
"""Tag (value ``true``) of assets that only run when asked for: ``all_assets_job`` leaves them out."""

SCORING_RUN_TAGS = {"kpi/scoring": "true"}
"""Tag of every run that writes scores. ``dagster.yaml`` limits such runs to one at a time
(``concurrency.runs.tag_concurrency_limits``), so the schedule and the sensor never score at
once; the score upserts are idempotent either way."""

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=[cleaned_kpis, anomaly_scores, anomalies, group_events],
    description="Score the points that arrived since the last run with the stored models.",
    tags=SCORING_RUN_TAGS,
)

all_assets_job = dg.define_asset_job(
    "all_assets_job",
    # Opt-in assets (tuning, defs/tuning.py) have their own jobs and are not part of every run.
    selection=dg.AssetSelection.all() - dg.AssetSelection.tag(OPT_IN_TAG, "true"),
    description="Clean, train the selected shards, score and summarise anomalies in one run.",
    tags=SCORING_RUN_TAGS,
)


@dg.op(
    description="Delete observations and scores older than KPI_OBSERVATION_RETENTION_DAYS "
    "and KPI_SCORE_RETENTION_DAYS (unset: keep them), except what models and open events "
    "still need (docs/models.md)."
)
def apply_retention(context, store: KpiStore) -> dg.Output:
    settings = get_settings()
    engine = store.engine()
    now = dt.datetime.now(dt.timezone.utc)
    deleted = {}
    for name, days, delete in (
        ("observations", settings.observation_retention_days, retention.delete_old_observations),
        ("scores", settings.score_retention_days, retention.delete_old_scores),
    ):
        deleted[name] = 0 if days is None else delete(engine, now - dt.timedelta(days=days))
        context.log.info(f"{name}: {'kept (no retention set)' if days is None else days}; {deleted[name]} rows deleted")
    return dg.Output(None, metadata={f"{name}_deleted": n for name, n in deleted.items()})


@dg.job(description="Apply the retention of observations and scores (idempotent).")
def retention_job() -> None:
    apply_retention()


JOBS = [training_job, scoring_job, all_assets_job, retention_job]
