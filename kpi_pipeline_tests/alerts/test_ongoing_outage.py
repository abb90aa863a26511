"""A KPI that stops reporting (kpi_pipeline/alerts/outbox.py ``ongoing_outages``), on Postgres.

Nothing is scored for a silent KPI, so the anomaly check looks for ongoing outages on every
evaluation: a KPI with ``outage_after_intervals`` of its intervals without a point is alerted at
once (severity high, flagged ``gap``), once however often it is judged, and not again when its
data returns and the outage's first missing slot is scored. An outage that began longer ago
than ``max_age`` (an old file loaded today) is not news.
"""

import pandas as pd

from kpi_pipeline import derived, store
from kpi_pipeline.alerts.outbox import deliver, queue_news
from kpi_pipeline.alerts.policy import AlertPolicy

NOW = pd.Timestamp.now("UTC").floor("h")
HOUR = pd.Timedelta(hours=1)
POLICY = AlertPolicy(cooldown_minutes=180, digest_threshold=3, retry_base_seconds=30, max_inline_wait_seconds=1)


def _observe(engine, kpi: str, first: pd.Timestamp, last: pd.Timestamp) -> None:
    ts = pd.date_range(first, last, freq="h")
    store.upsert_observations(engine, pd.DataFrame({"kpi": kpi, "ts": ts, "value": 100.0}), source="test")
    derived.clean_new_observations(engine)


def _score(engine, kpi: str, ts: list[pd.Timestamp], scored_at: pd.Timestamp, gap_at=None) -> None:
    """Quiet scores of ``kpi`` at ``ts``; with ``gap_at``, that slot is the outage's score."""
    rows = pd.DataFrame({"kpi": kpi, "ts": ts, "value": 100.0, "expected": 100.0, "score": 0.1})
    rows = rows.assign(is_anomaly=False, severity=None, flagged_by=None, scored_at=scored_at)
    if gap_at is not None:
        gap = rows["ts"] == gap_at
        rows.loc[gap, ["value", "score", "is_anomaly", "severity", "flagged_by"]] = [None, 0.7, True, "high", "gap"]
    store.upsert_scores(engine, rows)


def _queue(engine, channels, batch: str, now: pd.Timestamp):
    return queue_news(engine, batch=batch, channels=channels, policy=POLICY, now=now)


def test_a_kpi_that_stops_reporting_is_alerted_once_and_not_again_when_it_returns(pg_engine, channels, slack_api):
    engine = pg_engine
    last = NOW - 48 * HOUR
    _observe(engine, "orders", NOW - 96 * HOUR, last)
    _score(engine, "orders", list(pd.date_range(NOW - 96 * HOUR, last, freq="h")), scored_at=last)
    assert _queue(engine, channels, "history", now=last + HOUR).news.alert == []  # first scoring: history

    # Three silent hours are not an outage yet (cleaning would fill them); the fourth is.
    assert _queue(engine, channels, "run-1", now=last + 3 * HOUR).news.alert == []
    found = _queue(engine, channels, "run-2", now=last + 4 * HOUR)
    [outage] = found.news.alert
    assert (outage.kpi, outage.ts, outage.severity, outage.kind, outage.ongoing) == (
        "orders",
        last + HOUR,
        "high",
        "outage",
        True,
    )
    assert found.enqueued.pending == 1

    # Judged again every evaluation while it lasts, queued once.
    later = _queue(engine, channels, "run-3", now=last + 30 * HOUR)
    assert later.enqueued.pending == 0 and later.enqueued.already_recorded == 1
    assert deliver(engine, channels, POLICY, sleep=lambda _s: None).sent == 1
    [message] = slack_api.messages()
    assert "orders" in str(message)

    # Data returns; the outage's first missing slot is scored as the outage: no second alert.
    back = NOW - 2 * HOUR
    _observe(engine, "orders", back, NOW)
    _score(engine, "orders", list(pd.date_range(last + HOUR, NOW, freq="h")), scored_at=NOW, gap_at=last + HOUR)
    returned = _queue(engine, channels, "run-4", now=NOW + 10 * pd.Timedelta(minutes=1))
    assert [(a.ts, a.flagged_by) for a in returned.news.alert] == [(last + HOUR, "gap")]
    assert returned.enqueued.pending == 0 and returned.enqueued.already_recorded == 1
    assert len(store.load_deliveries(engine)) == 1


def test_an_outage_that_began_before_max_age_is_not_news(pg_engine, channels):
    """A dataset loaded from an old file has 'stopped reporting' long ago: nothing to alert."""
    engine = pg_engine
    last = NOW - 200 * HOUR  # well past max_age (72 h) before NOW
    _observe(engine, "orders", last - 48 * HOUR, last)
    _score(engine, "orders", list(pd.date_range(last - 48 * HOUR, last, freq="h")), scored_at=NOW - HOUR)
    _queue(engine, channels, "history", now=NOW - HOUR)
    _score(engine, "orders", [last], scored_at=NOW)  # something new is scored, so it evaluates
    assert _queue(engine, channels, "run-1", now=NOW).news.alert == []
    assert store.load_deliveries(engine).empty


def test_a_kpi_never_scored_is_not_alerted_when_silent(pg_engine, channels):
    engine = pg_engine
    last = NOW - 10 * HOUR
    _observe(engine, "new_kpi", last - 5 * HOUR, last)
    _observe(engine, "orders", last - 5 * HOUR, NOW)
    _score(engine, "orders", [NOW - HOUR], scored_at=NOW - HOUR)
    _queue(engine, channels, "history", now=NOW - HOUR)
    _score(engine, "orders", [NOW], scored_at=NOW)
    judged = _queue(engine, channels, "run-1", now=NOW)
    assert judged.news.alert == [] and judged.news.silent.get("first scoring of the KPI's history") == 1


def test_ongoing_outages_take_the_slot_the_scores_give_the_outage(pg_engine):
    """Off-grid timestamps snap to the nearest slot, as cleaning does; the first missing slot is
    the one after it, and the outage starts counting when ``after_slots`` slots have passed."""
    engine = pg_engine
    # The grid runs through the first point; the later ones come a few seconds late.
    ts = pd.date_range(NOW - 20 * HOUR, NOW - 10 * HOUR, freq="h")
    ts = ts.where(ts == ts[0], ts + pd.Timedelta(seconds=7))
    store.upsert_observations(engine, pd.DataFrame({"kpi": "orders", "ts": ts, "value": 1.0}), source="test")
    derived.clean_new_observations(engine)
    assert store.ongoing_outages(engine, NOW - 7 * HOUR, 4).empty
    [row] = store.ongoing_outages(engine, NOW, 4).itertuples(index=False)
    assert (row.start, row.missing_points, row.outage_since) == (NOW - 9 * HOUR, 10, NOW - 6 * HOUR)
