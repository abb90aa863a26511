"""Asset checks: the cleaned KPIs' data quality, and new anomalies in the scores.

Checks are predicates named for what passing means, with the actual value and the threshold in
their metadata. A failed check does not fail the run (open-source Dagster). ``no_new_anomalies``
judges the anomalies scored since its previous evaluation recorded in the store and queues the
alerts for the news in the store's outbox (``alerts.outbox.queue_news``), which
``anomaly_check_sensor`` sends; it fails when there is news.
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline import derived
from kpi_pipeline.alerts.anomaly import HIGH_SEVERITIES, Anomaly
from kpi_pipeline.alerts.channels import EmailChannel, SlackChannel, SmsChannel
from kpi_pipeline.alerts.news import silent_run_reason
from kpi_pipeline.alerts.groups import queue_group_events
from kpi_pipeline.alerts.outbox import queue_news
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.defs.assets import anomaly_scores, cleaned_kpis, group_events
from kpi_pipeline.defs.resources import KpiStore

PREVIEW_ROWS = 20
"""Anomalies shown in the check's markdown preview (all of them are in ``anomalies``)."""


class DataQualityConfig(dg.Config):
    """Thresholds of the data-quality checks on ``cleaned_kpis``."""

    stale_after_intervals: int = Field(
        default=3,
        ge=1,
        description="A KPI is stale when its newest point is older than this many of its sampling intervals.",
    )
    recent_points: int = Field(default=168, ge=1, description="Most recent grid points judged for missing values.")
    max_missing_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Largest share of those points that may lack an observation.",
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "kpis_are_fresh",
            asset=cleaned_kpis,
            description="Every KPI has a point newer than `stale_after_intervals` of its sampling intervals.",
        ),
        dg.AssetCheckSpec(
            "kpis_have_no_duplicate_timestamps",
            asset=cleaned_kpis,
            description="No two stored observations of a KPI fall on the same time slot.",
        ),
        dg.AssetCheckSpec(
            "kpis_have_values",
            asset=cleaned_kpis,
            description="At most `max_missing_share` of each KPI's recent points lack a value.",
        ),
    ],
)
def cleaned_kpis_quality(store: KpiStore, config: DataQualityConfig) -> Iterator[dg.AssetCheckResult]:
    """The data-quality checks of ``cleaned_kpis``: freshness and duplicates of every KPI from
    its ``kpi_series`` row; missing values from the recent cleaned rows of the KPIs the newest
    cleaning run wrote (the others' rows have not changed since)."""
    quality = derived.data_quality(store.engine(), recent_points=config.recent_points)
    yield _freshness(quality, config.stale_after_intervals)
    yield _no_duplicates(quality)
    yield _values_present(quality, config.max_missing_share)


def _freshness(quality: pd.DataFrame, intervals: int) -> dg.AssetCheckResult:
    limit = quality["frequency"] * intervals
    stale = quality[quality["age"] > limit]
    per_kpi = {
        row.kpi: {
            "last_point": row.last_ts.isoformat(),
            "age_hours": round(row.age / pd.Timedelta(hours=1), 2),
            "limit_hours": None if pd.isna(lim) else round(lim / pd.Timedelta(hours=1), 2),
        }
        for row, lim in zip(quality.itertuples(index=False), limit, strict=True)
    }
    return dg.AssetCheckResult(
        check_name="kpis_are_fresh",
        passed=stale.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "stale_kpis": dg.MetadataValue.json(stale["kpi"].tolist()),
            "threshold_intervals": intervals,
            "oldest_age_hours": round(quality["age"].max() / pd.Timedelta(hours=1), 2) if len(quality) else 0.0,
            "per_kpi": dg.MetadataValue.json(per_kpi),
        },
    )


def _no_duplicates(quality: pd.DataFrame) -> dg.AssetCheckResult:
    duplicated = quality[quality["duplicate_timestamps"] > 0]
    return dg.AssetCheckResult(
        check_name="kpis_have_no_duplicate_timestamps",
        passed=duplicated.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "duplicate_timestamps": int(quality["duplicate_timestamps"].sum()),
            "threshold": 0,
            "per_kpi": dg.MetadataValue.json(
                dict(zip(duplicated["kpi"], duplicated["duplicate_timestamps"].astype(int)))
            ),
        },
    )


def _values_present(quality: pd.DataFrame, max_share: float) -> dg.AssetCheckResult:
    quality = quality[quality["recent_points"].notna()]
    share = (quality["missing_points"].astype(float) / quality["recent_points"].astype(float).clip(lower=1)).round(4)
    failing = quality.loc[share > max_share, "kpi"].tolist()
    return dg.AssetCheckResult(
        check_name="kpis_have_values",
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "worst_missing_share": float(share.max()) if len(share) else 0.0,
            "threshold": max_share,
            "kpis_failing": dg.MetadataValue.json(failing),
            "per_kpi": dg.MetadataValue.json(dict(zip(quality["kpi"], share.astype(float)))),
        },
    )


@dg.asset_check(
    asset=anomaly_scores,
    name="no_new_anomalies",
    description="No anomaly worth an alert was scored since the previous evaluation (recorded "
    "in the store). Fails with WARN for low/medium and ERROR for high/critical anomalies, "
    "listed in `anomalies`; their alerts are queued in `alert_deliveries`, which "
    "`anomaly_check_sensor` sends.",
)
def no_new_anomalies(
    context: dg.AssetCheckExecutionContext,
    store: KpiStore,
    alert_policy: AlertPolicy,
    email: EmailChannel,
    slack: SlackChannel,
    sms: SmsChannel,
) -> dg.AssetCheckResult:
    evaluation = queue_news(
        store.engine(),
        batch=context.run.run_id,
        channels={"email": email, "slack": slack, "sms": sms},
        policy=alert_policy,
        silent_reason=silent_run_reason(context.run.tags),
    )
    news, after, until = evaluation.news, evaluation.scored_after, evaluation.scored_until
    worst = max(news.alert, key=lambda a: a.rank, default=None)
    metadata = {
        "new_anomalies": len(news.alert),
        "threshold": 0,
        "max_severity": worst.severity if worst else "none",
        "anomalies": dg.MetadataValue.json([a.to_json() for a in news.alert]),
        "recorded_without_alert": dg.MetadataValue.json(news.silent),
        "alerts_queued": evaluation.enqueued.pending,
        "scored_after": after.isoformat() if after is not None else "",
        "scored_until": until.isoformat() if until is not None else "",
        "preview": _preview(news.alert),
    }
    severity = (
        dg.AssetCheckSeverity.ERROR
        if worst is not None and worst.severity in HIGH_SEVERITIES
        else dg.AssetCheckSeverity.WARN
    )
    return dg.AssetCheckResult(passed=not news.alert, severity=severity, metadata=metadata)


def _preview(anomalies: list[Anomaly]) -> dg.MetadataValue:
    if not anomalies:
        return dg.MetadataValue.md("_(none)_")
    worst_first = sorted(anomalies, key=lambda a: (-a.rank, a.ts))[:PREVIEW_ROWS]
    frame = pd.DataFrame(
        {
            "kpi": [a.kpi for a in worst_first],
            "ts": [a.ts.isoformat() for a in worst_first],
            "value": [a.value for a in worst_first],
            "expected": [a.expected for a in worst_first],
            "band": [
                f"{a.lower:.4g} .. {a.upper:.4g}" if a.lower is not None and a.upper is not None else ""
                for a in worst_first
            ],
            "score": [a.score for a in worst_first],
            "severity": [a.severity for a in worst_first],
            "flagged_by": [a.flagged_by for a in worst_first],
        }
    )
    return dg.MetadataValue.md(frame.to_markdown(index=False))


@dg.asset_check(
    asset=group_events,
    name="no_new_group_events",
    description="No KPI group event started within the alert age limit that was not alerted "
    "yet; each new one is queued as one alert in `alert_deliveries` (docs/multivariate.md).",
)
def no_new_group_events(
    context: dg.AssetCheckExecutionContext,
    store: KpiStore,
    alert_policy: AlertPolicy,
    email: EmailChannel,
    slack: SlackChannel,
    sms: SmsChannel,
) -> dg.AssetCheckResult:
    events, enqueued = queue_group_events(
        store.engine(),
        batch=context.run.run_id,
        channels={"email": email, "slack": slack, "sms": sms},
        policy=alert_policy,
        silent_reason=silent_run_reason(context.run.tags),
    )
    new = enqueued.pending + sum(enqueued.suppressed.values())
    return dg.AssetCheckResult(
        passed=new == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "new_group_events": new,
            "threshold": 0,
            "alerts_queued": enqueued.pending,
            "events": dg.MetadataValue.json([a.to_json() for a in events]),
        },
    )


CHECKS = [cleaned_kpis_quality, no_new_anomalies, no_new_group_events]
