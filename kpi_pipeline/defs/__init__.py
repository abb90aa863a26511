"""Dagster definitions of kpi-pipeline: ``dagster dev -m kpi_pipeline.defs`` or workspace.yaml."""

import dagster as dg

from kpi_pipeline.defs.assets import ASSETS
from kpi_pipeline.defs.jobs import JOBS
from kpi_pipeline.defs.resources import KpiStore

defs = dg.Definitions(assets=ASSETS, jobs=JOBS, resources={"store": KpiStore()})
