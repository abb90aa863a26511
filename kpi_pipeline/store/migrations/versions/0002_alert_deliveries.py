"""Alerting: the ``alert_deliveries`` outbox, ``alert_silences``, an index on ``scored_at``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Migrations are frozen snapshots, so they spell out plain types instead of importing schema.py.
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_index("ix_anomaly_scores_scored_at", "anomaly_scores", ["scored_at"])

    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kpi", sa.Text, nullable=False),
        sa.Column("ts", Timestamp, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("batch", sa.Text, nullable=False),
        sa.Column("message_key", sa.Text, nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", Timestamp),
        sa.Column("claimed_until", Timestamp),
        sa.Column("claim_token", sa.Text),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("sent_at", Timestamp),
        sa.UniqueConstraint("kpi", "ts", "channel", "recipient", name="uq_alert_deliveries_target"),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'suppressed')",
            name="ck_alert_deliveries_status",
        ),
    )
    op.create_index("ix_alert_deliveries_status", "alert_deliveries", ["status", "next_attempt_at"])

    op.create_table(
        "alert_silences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kpi_pattern", sa.Text, nullable=False),
        sa.Column("since", Timestamp, nullable=False),
        sa.Column("until", Timestamp, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("kpi_pattern", "since", "until", name="uq_alert_silences_window"),
    )


def downgrade() -> None:
    op.drop_table("alert_silences")
    op.drop_index("ix_alert_deliveries_status", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_anomaly_scores_scored_at", table_name="anomaly_scores")
