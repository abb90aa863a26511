"""A partial index on the anomalous rows of ``anomaly_scores``, newest first.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01

Anomaly pages (``GET /v1/anomalies``) are read newest first, ``ORDER BY ts DESC, kpi DESC``,
from the ``anomalies`` view (``WHERE is_anomaly``). Without a KPI filter, no index had that
order, so every page scanned and sorted all of ``anomaly_scores``; this index holds only the
anomalous rows (a fraction of a percent) in page order, so a page reads its rows and stops.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ANOMALOUS = sa.text("is_anomaly")


def upgrade() -> None:
    op.create_index(
        "ix_anomaly_scores_anomalies_newest",
        "anomaly_scores",
        [sa.text("ts DESC"), sa.text("kpi DESC")],
        postgresql_where=ANOMALOUS,
        sqlite_where=ANOMALOUS,
    )


def downgrade() -> None:
    op.drop_index("ix_anomaly_scores_anomalies_newest", table_name="anomaly_scores")
