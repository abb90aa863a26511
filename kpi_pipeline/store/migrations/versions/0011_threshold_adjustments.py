"""Threshold resets: forget the false positives that raised a KPI's threshold so far.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Analysts' false positives raise their KPI's anomaly threshold (docs/adaptive-thresholds.md);
the raise is derived from ``anomaly_feedback`` at scoring time. ``kpi-pipeline thresholds reset``
records here when a KPI's raise was reset: feedback given up to then no longer raises it (it
still shapes training and alerts).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "threshold_resets",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("reset_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("threshold_resets")
