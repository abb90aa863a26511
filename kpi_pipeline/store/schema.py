"""Table definitions: the public data contract of the product (see DESIGN.md).

These objects describe the schema for queries; the migrations under ``migrations/versions``
create it. ``kpi_pipeline_tests/store/test_database.py`` checks that the two agree.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
"""Severity levels, least to most severe."""

FEEDBACK_LABELS: tuple[str, ...] = ("true_positive", "false_positive")

ALERT_CHANNELS: tuple[str, ...] = ("email", "slack", "sms")

DELIVERY_STATUSES: tuple[str, ...] = ("pending", "sent", "failed", "suppressed")
"""``pending`` waits to be sent (or retried), ``sent`` reached the channel, ``failed`` was refused
for good (a configuration error), ``suppressed`` was decided against (``last_error`` says why)."""

UTC = dt.timezone.utc


class UtcDateTime(sa.TypeDecorator):
    """A timezone-aware UTC datetime on every dialect.

    SQLite has no timezone type, so values are stored there as naive UTC; reads always return
    aware UTC datetimes. Naive values written through this type are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, pd.Timestamp) or not isinstance(value, dt.datetime):
            value = pd.Timestamp(value).floor("us").to_pydatetime()
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on Postgres (indexable, compact); JSON text elsewhere.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

kpi_observations = sa.Table(
    "kpi_observations",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    sa.Column("value", sa.Double(), nullable=False),
    # Set on insert and bumped whenever the value changes, so "rows newer than a cursor"
    # also finds late and corrected data.
    sa.Column("ingested_at", UtcDateTime, nullable=False),
    sa.Column("source", sa.Text),
    sa.Index("ix_kpi_observations_ingested_at", "ingested_at"),
)

rejected_observations = sa.Table(
    "rejected_observations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("line", sa.Integer),
    sa.Column("rejected_at", UtcDateTime, nullable=False),
    # sha256 of source|line|raw|reason: re-ingesting the same bad file adds nothing.
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.UniqueConstraint("fingerprint", name="uq_rejected_observations_fingerprint"),
)

kpi_models = sa.Table(
    "kpi_models",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("trained_at", UtcDateTime, nullable=False),
    sa.Column("train_start", UtcDateTime),
    sa.Column("train_end", UtcDateTime),
    sa.Column("n_points", sa.Integer),
    sa.Column("params", Json),
    sa.Column("metrics", Json),
    sa.Column("artifact", sa.LargeBinary),
)

anomaly_scores = sa.Table(
    "anomaly_scores",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    sa.Column("value", sa.Double()),  # NULL: a missing-data gap scored as an anomaly
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
    sa.Column("scored_at", UtcDateTime, nullable=False),
    # The group component of a member of a KPI group (0..1) and its standardised residual;
    # NULL for a KPI in no group (migration 0010, docs/multivariate.md).
    sa.Column("multivariate_score", sa.Double()),
    sa.Column("multivariate_z", sa.Double()),
    sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="ck_anomaly_scores_severity"),
    # The anomaly check reads what was scored since its previous evaluation.
    sa.Index("ix_anomaly_scores_scored_at", "scored_at"),
)

# Anomaly pages read the anomalous rows newest first (ties by KPI descending); this partial
# index holds only those rows, in that order.
sa.Index(
    "ix_anomaly_scores_anomalies_newest",
    anomaly_scores.c.ts.desc(),
    anomaly_scores.c.kpi.desc(),
    postgresql_where=anomaly_scores.c.is_anomaly,
    sqlite_where=anomaly_scores.c.is_anomaly,
)

anomaly_feedback = sa.Table(
    "anomaly_feedback",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("label IN ('true_positive', 'false_positive')", name="ck_anomaly_feedback_label"),
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kpi", sa.Text, nullable=False),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column("event_id", sa.Text),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    # The run whose anomaly check raised the alert.
    sa.Column("batch", sa.Text, nullable=False),
    # Rows sharing a key go out as one message (a digest); otherwise the key is the anomaly's.
    sa.Column("message_key", sa.Text, nullable=False),
    # The anomaly as the check reported it, so a message can be rendered long after.
    sa.Column("payload", Json, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", UtcDateTime),
    # A sender's lease on the row, so two senders never send the same alert.
    sa.Column("claimed_until", UtcDateTime),
    sa.Column("claim_token", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    # One row per (anomaly, channel, recipient): recording an alert twice is a no-op.
    sa.UniqueConstraint("kpi", "ts", "channel", "recipient", name="uq_alert_deliveries_target"),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed', 'suppressed')", name="ck_alert_deliveries_status"),
    sa.Index("ix_alert_deliveries_status", "status", "next_attempt_at"),
)

alert_silences = sa.Table(
    "alert_silences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # A KPI name or glob pattern (``sales*``, ``*``).
    sa.Column("kpi_pattern", sa.Text, nullable=False),
    # The anomalies' timestamps it covers, inclusive.
    sa.Column("since", UtcDateTime, nullable=False),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("kpi_pattern", "since", "until", name="uq_alert_silences_window"),
)

alert_evaluations = sa.Table(
    "alert_evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # The run whose anomaly check made the evaluation (the ``batch`` of the alerts it queued).
    sa.Column("batch", sa.Text, nullable=False),
    # It judged the anomalies with scored_after < scored_at <= scored_until (NULL: no lower
    # bound); the newest row's scored_until is where the next evaluation starts.
    sa.Column("scored_after", UtcDateTime),
    sa.Column("scored_until", UtcDateTime, nullable=False),
    sa.Column("alerted", sa.Integer, nullable=False),
    # Anomalies recorded without an alert: reason -> count.
    sa.Column("recorded_silently", Json, nullable=False),
    sa.Column("evaluated_at", UtcDateTime, nullable=False),
)

kpi_series = sa.Table(
    "kpi_series",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    # The grid `kpi_cleaned` lies on: origin + k * step. origin is the first observation; step
    # is the most common step between observations (NULL while the KPI has one observation).
    sa.Column("origin", UtcDateTime, nullable=False),
    sa.Column("step_us", sa.BigInteger),
    # How often each step (microseconds, as text keys) occurs between consecutive observations:
    # step is its mode, updated from new observations alone.
    sa.Column("step_counts", Json, nullable=False),
    sa.Column("observations", sa.BigInteger, nullable=False),
    # Observations falling on a grid slot another observation already holds.
    sa.Column("duplicates", sa.BigInteger, nullable=False),
    sa.Column("last_observed", UtcDateTime, nullable=False),
    # The newest ingested_at of the KPI's observations cleaned: newer rows are news.
    sa.Column("ingested_through", UtcDateTime, nullable=False),
    # When a run last wrote the KPI's cleaned rows, and the first ts it (or an earlier run not
    # yet followed by kpi_features) may have changed.
    sa.Column("cleaned_at", UtcDateTime, nullable=False),
    sa.Column("changed_from", UtcDateTime, nullable=False),
    # The cleaned_at that kpi_features was last built for (NULL: never).
    sa.Column("features_through", UtcDateTime),
    sa.Index("ix_kpi_series_cleaned_at", "cleaned_at"),
)

kpi_cleaned = sa.Table(
    "kpi_cleaned",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    sa.Column("value", sa.Double()),  # NULL inside a long gap
    sa.Column("filled", sa.Boolean, nullable=False),
    sa.Column("gap", sa.Boolean, nullable=False),
)

kpi_features = sa.Table(
    "kpi_features",
    metadata,
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    # detection.features.FEATURE_COLUMNS; NULL where a feature has too little history.
    *(
        sa.Column(name, sa.Double())
        for name in (
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
    ),
    sa.Column("is_weekend", sa.SmallInteger, nullable=False),
    sa.Column("is_holiday", sa.SmallInteger, nullable=False),
)

MULTIVARIATE_COLUMNS = ("multivariate_score", "multivariate_z")

# A view, created by the migration; a lightweight construct keeps it out of `metadata`.
anomalies = sa.table(
    "anomalies",
    *(
        sa.column(column.name, column.type)
        for column in anomaly_scores.columns
        if column.name not in MULTIVARIATE_COLUMNS  # added after the view, not in it
    ),
    sa.column("feedback", sa.Text),
    sa.column("feedback_note", sa.Text),
    sa.column("feedback_at", UtcDateTime),
)

KPI_STAGES: tuple[str, ...] = ("training", "scoring")

kpi_failures = sa.Table(
    "kpi_failures",
    metadata,
    # A KPI whose training or scoring failed in its last attempt, with the reason; the row goes
    # when the stage next succeeds for it, so the table holds what is failing now.
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    # When it first failed (kept while it keeps failing) and when it last failed.
    sa.Column("failing_since", UtcDateTime, nullable=False),
    sa.Column("last_failed_at", UtcDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.CheckConstraint("stage IN ('training', 'scoring')", name="ck_kpi_failures_stage"),
)


kpi_groups = sa.Table(
    "kpi_groups",
    metadata,
    # A declared KPI group as last scored: its members, and the newest timestamp it judged.
    sa.Column("group_name", sa.Text, primary_key=True),
    sa.Column("members", Json, nullable=False),
    sa.Column("scored_until", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

group_models = sa.Table(
    "group_models",
    metadata,
    # The group detector's versions, as data (``GroupDetector.to_artifact``).
    sa.Column("group_name", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("trained_at", UtcDateTime, nullable=False),
    sa.Column("train_start", UtcDateTime),
    sa.Column("train_end", UtcDateTime, nullable=False),
    sa.Column("n_points", sa.Integer),
    sa.Column("members", Json, nullable=False),
    sa.Column("params", Json),
    sa.Column("artifact", sa.LargeBinary, nullable=False),
)

group_events = sa.Table(
    "group_events",
    metadata,
    # One row per group event; ``members``: JSON list of the members that moved and how much.
    sa.Column("group_name", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("start", UtcDateTime, nullable=False),
    sa.Column("end", UtcDateTime, nullable=False),
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("peak_score", sa.Double(), nullable=False),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_group_events_start", "start"),
)


threshold_resets = sa.Table(
    "threshold_resets",
    metadata,
    # When a KPI's feedback-raised threshold was last reset: false positives labelled up to then
    # no longer raise it (docs/adaptive-thresholds.md).
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("reset_at", UtcDateTime, nullable=False),
)

PARAMETER_SOURCES: tuple[str, ...] = ("tuned", "pinned")
"""Where a KPI's parameter overrides come from; ``pinned`` ones win over ``tuned`` ones."""

kpi_parameters = sa.Table(
    "kpi_parameters",
    metadata,
    # Per KPI and source, a JSON object of DetectorConfig overrides keyed by dotted field names
    # ("threshold", "prophet.changepoint_prior_scale"); training applies tuned, then pinned.
    sa.Column("kpi", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("params", Json, nullable=False),
    # What tuning optimised (forecast_mae or event_f1), the value it reached, the defaults'
    # value on the same folds, and its trials (all and pruned); null on pinned rows.
    sa.Column("objective", sa.Text),
    sa.Column("objective_value", sa.Float),
    sa.Column("default_value", sa.Float),
    sa.Column("trials", sa.Integer),
    sa.Column("pruned_trials", sa.Integer),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("source IN ('tuned', 'pinned')", name="ck_kpi_parameters_source"),
)


TABLES: tuple[sa.Table, ...] = tuple(metadata.sorted_tables)
