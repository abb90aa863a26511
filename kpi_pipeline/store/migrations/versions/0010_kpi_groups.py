"""KPI groups: multivariate detection over groups of KPIs that move together.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``kpi_groups`` holds each declared group (its members as last seen, and the newest timestamp
its detector has judged); ``group_models`` the group detector's versions, stored as data like
``kpi_models`` but keyed by group (a group is not a KPI: the per-KPI registry, its retention and
its readers stay per KPI); ``group_events`` one row per group event with the members that moved.
``anomaly_scores`` gains the group component of a member's point (``multivariate_score``, 0..1)
and the member's standardised residual there (``multivariate_z``); both stay NULL for a KPI in
no group, so nothing changes without groups.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "kpi_groups",
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("members", Json, nullable=False),
        sa.Column("scored_until", Timestamp),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "group_models",
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("trained_at", Timestamp, nullable=False),
        sa.Column("train_start", Timestamp),
        sa.Column("train_end", Timestamp, nullable=False),
        sa.Column("n_points", sa.Integer),
        sa.Column("members", Json, nullable=False),
        sa.Column("params", Json),
        sa.Column("artifact", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "group_events",
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("start", Timestamp, nullable=False),
        sa.Column("end", Timestamp, nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("peak_score", sa.Double(), nullable=False),
        sa.Column("members", sa.Text, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_index("ix_group_events_start", "group_events", ["start"])
    op.add_column("anomaly_scores", sa.Column("multivariate_score", sa.Double()))
    op.add_column("anomaly_scores", sa.Column("multivariate_z", sa.Double()))


def downgrade() -> None:
    with op.batch_alter_table("anomaly_scores") as batch:
        batch.drop_column("multivariate_z")
        batch.drop_column("multivariate_score")
    op.drop_index("ix_group_events_start", "group_events")
    op.drop_table("group_events")
    op.drop_table("group_models")
    op.drop_table("kpi_groups")
