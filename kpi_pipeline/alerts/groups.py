"""Group events as alerts: one message per group event, through the same outbox as anomalies.

A group event (``group_events``) becomes one ``Anomaly`` whose ``kpi`` is ``group:<name>``, at
the event's first timestamp, with its peak score, the severity that score reads as
(``DetectorConfig.severity_scores``), and the members that moved. Its members' own anomalies
are alerted as before; the group component never makes a member's point anomalous, so a group
incident is one message, not one per member. ``enqueue`` records each (event, channel,
recipient) once, so a rerun or a re-judged event (extended by later points: same id, same
start) queues nothing twice, and applies the age limit, cooldown and routing of any alert
(route on ``group:*`` to send group events apart) and silences.
"""

from __future__ import annotations

import bisect
import fnmatch

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.alerts.anomaly import Anomaly
from kpi_pipeline.alerts.outbox import Enqueued, enqueue
from kpi_pipeline.alerts.channels import AlertChannel
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.alerts.routing import Routing
from kpi_pipeline.detection.config import DetectorConfig
from kpi_pipeline.detection.multivariate import describe_members
from kpi_pipeline.store import SEVERITIES, load_group_events, load_silences

GROUP_PREFIX = "group:"


def group_event_alerts(events: pd.DataFrame, severity_scores=DetectorConfig().severity_scores) -> list[Anomaly]:
    """One ``Anomaly`` per row of ``group_events``."""
    alerts = []
    for row in events.itertuples(index=False):
        rank = min(max(bisect.bisect_right(severity_scores, row.peak_score) - 1, 0), len(SEVERITIES) - 1)
        alerts.append(
            Anomaly(
                kpi=f"{GROUP_PREFIX}{row.group_name}",
                ts=pd.Timestamp(row.start),
                severity=SEVERITIES[rank],
                score=float(row.peak_score),
                flagged_by="multivariate",
                event_id=row.event_id,
                members=describe_members(row.members),
            )
        )
    return alerts


def queue_group_events(
    engine: sa.Engine,
    *,
    batch: str,
    channels: dict[str, AlertChannel],
    policy: AlertPolicy,
    routing: Routing | None = None,
    now: pd.Timestamp | None = None,
    silent_reason: str | None = None,
) -> tuple[list[Anomaly], Enqueued]:
    """Queue an alert for each group event that started within the alert age limit (older ones
    are not news); returns the events judged and what was queued. With ``silent_reason`` (a run
    tagged ``kpi/alerts=off`` or a backfill's, ``news.silent_run_reason``) they are recorded as
    suppressed instead, so no later evaluation alerts them."""
    now = now if now is not None else pd.Timestamp.now("UTC")
    events = load_group_events(engine, since=now - policy.max_age)
    silences = load_silences(engine)
    alerts = [
        alert
        for alert in group_event_alerts(events)
        if now - alert.ts <= policy.max_age and not _silenced(alert, silences)
    ]
    return alerts, enqueue(
        engine,
        alerts,
        batch=batch,
        channels=channels,
        policy=policy,
        routing=routing,
        now=now,
        silent_reason=silent_reason,
    )


def _silenced(alert: Anomaly, silences: pd.DataFrame) -> bool:
    """Whether a silence (``kpi-pipeline silence 'group:*' ...``) covers the event's start."""
    return any(
        silence.since <= alert.ts <= silence.until and fnmatch.fnmatchcase(alert.kpi, silence.kpi_pattern)
        for silence in silences.itertuples(index=False)
    )
