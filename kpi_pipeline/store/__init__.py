"""The storage layer: SQLAlchemy tables, Alembic migrations and every query of the product.

All timestamps going in are stored as UTC (naive input is taken to be UTC); all timestamps
coming out are tz-aware UTC pandas Timestamps, on Postgres and SQLite alike.
"""

from kpi_pipeline.store.database import make_engine, migrate, table_counts
from kpi_pipeline.store.models import (
    ModelRecord,
    load_latest_models,
    load_model_versions,
    save_model,
)
from kpi_pipeline.store.observations import (
    UpsertCounts,
    insert_rejections,
    list_kpis,
    load_observations,
    observations_ingested_since,
    observations_version,
    upsert_observations,
)
from kpi_pipeline.store.schema import FEEDBACK_LABELS, SEVERITIES
from kpi_pipeline.store.scores import (
    last_scored_ts,
    load_anomalies,
    load_scores,
    set_feedback,
    upsert_scores,
)

__all__ = [
    "FEEDBACK_LABELS",
    "SEVERITIES",
    "ModelRecord",
    "UpsertCounts",
    "insert_rejections",
    "last_scored_ts",
    "list_kpis",
    "load_anomalies",
    "load_latest_models",
    "load_model_versions",
    "load_observations",
    "load_scores",
    "make_engine",
    "migrate",
    "observations_ingested_since",
    "observations_version",
    "save_model",
    "set_feedback",
    "table_counts",
    "upsert_observations",
    "upsert_scores",
]
