"""Initial schema: observations, rejections, model registry, scores, feedback, anomalies view.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Migrations are frozen snapshots, so they spell out plain types instead of importing schema.py.
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

ANOMALIES_VIEW = """
CREATE VIEW anomalies AS
SELECT s.kpi, s.ts, s.value, s.expected, s.lower, s.upper,
       s.iforest_score, s.prophet_score, s.score, s.is_anomaly, s.severity,
       s.flagged_by, s.event_id, s.model_version, s.scored_at,
       f.label AS feedback, f.note AS feedback_note, f.created_at AS feedback_at
FROM anomaly_scores AS s
LEFT JOIN anomaly_feedback AS f ON f.kpi = s.kpi AND f.ts = s.ts
WHERE s.is_anomaly
"""


def upgrade() -> None:
    op.create_table(
        "kpi_observations",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("ts", Timestamp, primary_key=True),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("ingested_at", Timestamp, nullable=False),
        sa.Column("source", sa.Text),
    )
    op.create_index("ix_kpi_observations_ingested_at", "kpi_observations", ["ingested_at"])

    op.create_table(
        "rejected_observations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("line", sa.Integer),
        sa.Column("rejected_at", Timestamp, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.UniqueConstraint("fingerprint", name="uq_rejected_observations_fingerprint"),
    )

    op.create_table(
        "kpi_models",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("trained_at", Timestamp, nullable=False),
        sa.Column("train_start", Timestamp),
        sa.Column("train_end", Timestamp),
        sa.Column("n_points", sa.Integer),
        sa.Column("params", Json),
        sa.Column("metrics", Json),
        sa.Column("artifact", sa.LargeBinary),
    )

    op.create_table(
        "anomaly_scores",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("ts", Timestamp, primary_key=True),
        sa.Column("value", sa.Double()),
        sa.Column("expected", sa.Double()),
        sa.Column("lower", sa.Double()),
        sa.Column("upper", sa.Double()),
        sa.Column("iforest_score", sa.Double()),
        sa.Column("prophet_score", sa.Double()),
        sa.Column("score", sa.Double()),
        sa.Column("is_anomaly", sa.Boolean, nullable=False),
        sa.Column("severity", sa.Text),
        sa.Column("flagged_by", sa.Text),
        sa.Column("event_id", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("scored_at", Timestamp, nullable=False),
        sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="ck_anomaly_scores_severity"),
    )

    op.create_table(
        "anomaly_feedback",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("ts", Timestamp, primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.CheckConstraint("label IN ('true_positive', 'false_positive')", name="ck_anomaly_feedback_label"),
    )

    op.execute(ANOMALIES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW anomalies")
    for table in (
        "anomaly_feedback",
        "anomaly_scores",
        "kpi_models",
        "rejected_observations",
        "kpi_observations",
    ):
        op.drop_table(table)
