"""Alert evaluations: which scored anomalies the anomaly check has judged, kept in the store.

Revision ID: 0005
Revises: 0004
Create Date: 2025-05-01

The ``no_new_anomalies`` check used to find where its previous evaluation stopped in Dagster's
event log; on a new Dagster instance it found nothing and treated every anomaly as history, new
ones included. Each evaluation now records here the ``scored_at`` range it judged, in the
transaction that queues its alerts in ``alert_deliveries``.

A database that already holds scores gets one row covering them: the first evaluation after
the upgrade judges what is scored from then on (anomalies scored between the last evaluation
before the upgrade and the upgrade itself are not alerted).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Migrations are frozen snapshots, so they spell out plain types instead of importing schema.py.
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    evaluations = op.create_table(
        "alert_evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch", sa.Text, nullable=False),
        sa.Column("scored_after", Timestamp),
        sa.Column("scored_until", Timestamp, nullable=False),
        sa.Column("alerted", sa.Integer, nullable=False),
        sa.Column("recorded_silently", Json, nullable=False),
        sa.Column("evaluated_at", Timestamp, nullable=False),
    )
    scores = sa.table("anomaly_scores", sa.column("scored_at", Timestamp))
    newest = sa.func.max(scores.c.scored_at)
    op.execute(
        evaluations.insert().from_select(
            ["batch", "scored_after", "scored_until", "alerted", "recorded_silently", "evaluated_at"],
            sa.select(
                sa.literal("migration 0005"),
                sa.null(),
                newest,
                sa.literal(0),
                sa.literal({}, Json),
                sa.func.current_timestamp(),
            ).having(newest.is_not(None)),
        )
    )


def downgrade() -> None:
    op.drop_table("alert_evaluations")
