"""The one resource of the pipeline: the KPI store (PostgreSQL, or embedded SQLite if unset)."""

from __future__ import annotations

from functools import cache

import dagster as dg
import sqlalchemy as sa

from kpi_pipeline.config import get_settings
from kpi_pipeline.pipeline import open_store


class KpiStore(dg.ConfigurableResource):
    """The KPI database every asset reads and writes through ``kpi_pipeline.store``.

    Leave ``database_url`` unset to use ``KPI_DATABASE_URL`` (or the embedded SQLite file), so
    the URL and its password stay in the environment and out of run config.
    """

    database_url: str | None = None

    def engine(self) -> sa.Engine:
        """A pooled engine on the database, migrated to the current schema on first use."""
        return _migrated_engine(self.database_url or get_settings().resolved_database_url())


@cache
def _migrated_engine(url: str) -> sa.Engine:
    # One engine (and pool) per database and process: assets of a run share it.
    return open_store(url)
