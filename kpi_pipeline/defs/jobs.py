"""Jobs: training and scoring run on separate cadences; ``all_assets_job`` runs everything.

Each job also runs the asset checks of the assets it selects.
"""

from __future__ import annotations

import dagster as dg

from kpi_pipeline.defs.assets import (
    TRAINING_SHARDS,
    anomalies,
    anomaly_scores,
    cleaned_kpis,
    kpi_models,
)

training_job = dg.define_asset_job(
    "training_job",
    selection=[kpi_models],
    partitions_def=TRAINING_SHARDS,
    description="Train or retrain the models of one KPI shard (its partition); the daily "
    "schedule runs every shard, each in its own run, in parallel.",
)

SCORING_RUN_TAGS = {"kpi/scoring": "true"}
"""Tag of every run that writes scores. ``dagster.yaml`` limits such runs to one at a time
(``concurrency.runs.tag_concurrency_limits``), so the schedule and the sensor never score at
once; the score upserts are idempotent either way."""

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=[cleaned_kpis, anomaly_scores, anomalies],
    description="Score the points that arrived since the last run with the stored models.",
    tags=SCORING_RUN_TAGS,
)

all_assets_job = dg.define_asset_job(
    "all_assets_job",
    selection=dg.AssetSelection.all(),
    description="Clean, train the selected shards, score and summarise anomalies in one run.",
    tags=SCORING_RUN_TAGS,
)

JOBS = [training_job, scoring_job, all_assets_job]
