"""Derived series tables: ``kpi_series`` (grid and maintenance state per KPI), ``kpi_cleaned``
and ``kpi_features``.

Revision ID: 0006
Revises: 0005
Create Date: 2025-05-01

The ``cleaned_kpis`` and ``kpi_features`` assets keep these up to date from the observations
ingested since their previous run, instead of cleaning every observation on every run. Empty
after the upgrade: the first run fills them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Migrations are frozen snapshots, so they spell out plain types instead of importing schema.py.
Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

FEATURES = (
    "rolling_mean_7",
    "rolling_std_7",
    "diff_1",
    "lag_1",
    "lag_season",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "month_sin",
    "month_cos",
)


def upgrade() -> None:
    op.create_table(
        "kpi_series",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("origin", Timestamp, nullable=False),
        sa.Column("step_us", sa.BigInteger),
        sa.Column("step_counts", Json, nullable=False),
        sa.Column("observations", sa.BigInteger, nullable=False),
        sa.Column("duplicates", sa.BigInteger, nullable=False),
        sa.Column("last_observed", Timestamp, nullable=False),
        sa.Column("ingested_through", Timestamp, nullable=False),
        sa.Column("cleaned_at", Timestamp, nullable=False),
        sa.Column("changed_from", Timestamp, nullable=False),
        sa.Column("features_through", Timestamp),
    )
    op.create_index("ix_kpi_series_cleaned_at", "kpi_series", ["cleaned_at"])
    op.create_table(
        "kpi_cleaned",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("ts", Timestamp, primary_key=True),
        sa.Column("value", sa.Double()),
        sa.Column("filled", sa.Boolean, nullable=False),
        sa.Column("gap", sa.Boolean, nullable=False),
    )
    op.create_table(
        "kpi_features",
        sa.Column("kpi", sa.Text, primary_key=True),
        sa.Column("ts", Timestamp, primary_key=True),
        *(sa.Column(name, sa.Double()) for name in FEATURES),
        sa.Column("is_weekend", sa.SmallInteger, nullable=False),
        sa.Column("is_holiday", sa.SmallInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("kpi_features", "kpi_cleaned", "kpi_series"):
        op.drop_table(table)
