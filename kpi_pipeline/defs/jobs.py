"""Jobs: training and scoring run on separate cadences; ``all_assets_job`` runs everything."""

from __future__ import annotations

import dagster as dg

from kpi_pipeline.defs.assets import (
    anomalies,
    anomaly_scores,
    cleaned_kpis,
    kpi_features,
    kpi_models,
)

training_job = dg.define_asset_job(
    "training_job",
    selection=[cleaned_kpis, kpi_features, kpi_models],
    description="Clean the KPIs, rebuild their features and train or retrain their models.",
)

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=[cleaned_kpis, anomaly_scores, anomalies],
    description="Score the points that arrived since the last run with the stored models.",
)

all_assets_job = dg.define_asset_job(
    "all_assets_job",
    selection=dg.AssetSelection.all(),
    description="Clean, train, score and summarise anomalies in one run.",
)

JOBS = [training_job, scoring_job, all_assets_job]
