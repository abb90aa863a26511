"""KPI failures: the KPIs whose training or scoring failed in their last attempt, and why.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

One KPI's error never stops the others; its reason used to be visible only in the run that met
it. ``kpi-pipeline status`` and the dashboard read it from here until the KPI next succeeds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "kpi_failures",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("failing_since", Timestamp, nullable=False),
        sa.Column("last_failed_at", Timestamp, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.CheckConstraint("stage IN ('training', 'scoring')", name="ck_kpi_failures_stage"),
    )


def downgrade() -> None:
    op.drop_table("kpi_failures")
