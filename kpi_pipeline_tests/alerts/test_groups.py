"""Group events as alerts (kpi_pipeline/alerts/groups.py): one message per group event, queued
once however often it is judged, on Postgres with a local Slack API."""

from __future__ import annotations

import json

import pandas as pd

from kpi_pipeline import store
from kpi_pipeline.alerts.groups import group_event_alerts, queue_group_events
from kpi_pipeline.alerts.outbox import deliver
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.store import groups as group_store

NOW = pd.Timestamp.now("UTC").floor("h")
HOUR = pd.Timedelta(hours=1)
POLICY = AlertPolicy(cooldown_minutes=180, digest_threshold=3, max_age_hours=72)
MEMBERS = json.dumps(
    [
        {"kpi": "orders", "z": -4.1, "relative": -0.12, "at": "x"},
        {"kpi": "revenue", "z": 3.2, "relative": 0.08, "at": "x"},
    ]
)


def events(*starts_and_ends: tuple[pd.Timestamp, pd.Timestamp], peak: float = 0.75) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "group_name": "checkout",
                "event_id": f"group:checkout@{start.isoformat()}",
                "start": start,
                "end": end,
                "points": int((end - start) / HOUR) + 1,
                "peak_score": peak,
                "members": MEMBERS,
            }
            for start, end in starts_and_ends
        ]
    )


def test_a_group_event_reads_as_one_alert_naming_the_members_that_moved():
    [alert] = group_event_alerts(events((NOW - 3 * HOUR, NOW - 2 * HOUR)), severity_scores=(0.5, 0.6, 0.7, 0.8))
    assert (alert.kpi, alert.ts, alert.severity, alert.flagged_by) == (
        "group:checkout",
        NOW - 3 * HOUR,
        "high",
        "multivariate",
    )
    assert alert.members == "orders -4.1 sd (-12.0%), revenue +3.2 sd (+8.0%)"


def test_each_group_event_is_sent_once_as_one_message(pg_engine, channels, slack_api):
    first = events((NOW - 5 * HOUR, NOW - 4 * HOUR), (NOW - 100 * HOUR, NOW - 100 * HOUR))
    group_store.save_group_results(pg_engine, "checkout", events=first)

    alerts, queued = queue_group_events(pg_engine, batch="run-1", channels=channels, policy=POLICY)
    # The event extended by later points keeps its id and start: nothing new to queue.
    group_store.save_group_results(pg_engine, "checkout", events=events((NOW - 5 * HOUR, NOW - 3 * HOUR)))
    _, again = queue_group_events(pg_engine, batch="run-2", channels=channels, policy=POLICY)
    sent = deliver(pg_engine, channels, POLICY)

    assert [a.ts for a in alerts] == [NOW - 5 * HOUR]  # the 100-hour-old event is not news
    assert (queued.pending, again.pending, again.already_recorded) == (1, 0, 1)
    assert (sent.sent, sent.messages) == (1, 1)
    [message] = slack_api.messages()
    assert "group event: group:checkout" in message["text"]
    assert "orders -4.1 sd" in message["text"]
    assert store.load_deliveries(pg_engine)["kpi"].tolist() == ["group:checkout"]


def test_a_silence_on_groups_holds_their_events_back(pg_engine, channels):
    group_store.save_group_results(pg_engine, "checkout", events=events((NOW - 5 * HOUR, NOW - 4 * HOUR)))
    store.add_silence(pg_engine, "group:*", NOW - 10 * HOUR, NOW, "maintenance")
    alerts, queued = queue_group_events(pg_engine, batch="run-1", channels=channels, policy=POLICY)
    assert alerts == [] and queued.pending == 0


def test_group_events_of_a_silent_run_are_recorded_and_never_alerted(pg_engine, channels):
    """A backfill's or a ``kpi/alerts=off`` run's group events are recorded as suppressed, so a
    later evaluation does not alert them either."""
    group_store.save_group_results(pg_engine, "checkout", events=events((NOW - 5 * HOUR, NOW - 4 * HOUR)))
    _, silent = queue_group_events(
        pg_engine, batch="backfill", channels=channels, policy=POLICY, silent_reason="backfill run"
    )
    _, later = queue_group_events(pg_engine, batch="run-2", channels=channels, policy=POLICY)

    assert (silent.pending, silent.suppressed) == (0, {"backfill run": 1})
    assert (later.pending, later.already_recorded) == (0, 1)
    assert store.load_deliveries(pg_engine)["status"].tolist() == ["suppressed"]
