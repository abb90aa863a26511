"""KPI parameters: per-KPI overrides of the detector's configuration, tuned or pinned by hand.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Every KPI used to be trained with the run's configuration. ``kpi-pipeline tune`` writes the
parameters it chose per KPI (source ``tuned``), ``kpi-pipeline params pin`` those an analyst
fixes (source ``pinned``, which wins); training applies both on top of the run's configuration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "kpi_parameters",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("params", Json, nullable=False),
        sa.Column("objective", sa.Text),
        sa.Column("objective_value", sa.Float),
        sa.Column("default_value", sa.Float),
        sa.Column("trials", sa.Integer),
        sa.Column("pruned_trials", sa.Integer),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint("source IN ('tuned', 'pinned')", name="ck_kpi_parameters_source"),
    )


def downgrade() -> None:
    op.drop_table("kpi_parameters")
