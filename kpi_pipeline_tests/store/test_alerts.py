"""Alerting state in the store (kpi_pipeline/store/alerts.py), on PostgreSQL and SQLite."""

import pandas as pd
import pytest
from alembic import command

from kpi_pipeline import store
from kpi_pipeline.store.database import alembic_config, make_engine

T0 = pd.Timestamp("2025-03-01", tz="UTC")
LEASE = pd.Timedelta(minutes=5)


def _row(kpi="orders", hours=0, channel="email", recipient="a@example.com", status="pending"):
    ts = T0 + pd.Timedelta(hours=hours)
    return {
        "kpi": kpi,
        "ts": ts,
        "event_id": f"{kpi}@{ts.isoformat()}",
        "severity": "high",
        "channel": channel,
        "recipient": recipient,
        "batch": "run-1",
        "message_key": f"{kpi}@{ts.isoformat()}",
        "payload": {"kpi": kpi, "ts": ts.isoformat()},
        "status": status,
    }


def test_an_alert_is_recorded_once_per_anomaly_channel_and_recipient(migrated_engine):
    rows = [_row(), _row(recipient="b@example.com"), _row(channel="slack", recipient="#kpi")]

    assert store.record_deliveries(migrated_engine, rows) == 3
    assert store.record_deliveries(migrated_engine, [*rows, _row(hours=1)]) == 1

    stored = store.load_deliveries(migrated_engine)
    assert len(stored) == 4 and set(stored["status"]) == {"pending"}
    assert (stored["attempts"] == 0).all()
    with pytest.raises(ValueError, match="channel must be one of"):
        store.record_deliveries(migrated_engine, [_row(channel="pager")])


def test_claims_are_exclusive_until_sent_or_the_lease_ends(migrated_engine):
    store.record_deliveries(migrated_engine, [_row(), _row(hours=1)])
    now = pd.Timestamp.now("UTC")

    first = store.claim_due_deliveries(migrated_engine, "sender-1", now, LEASE)
    assert len(first) == 2 and first["payload"].iloc[0]["kpi"] == "orders"
    assert store.claim_due_deliveries(migrated_engine, "sender-2", now, LEASE).empty

    store.mark_sent(migrated_engine, [first["id"].iloc[0]], "sender-1", attempts=1)
    store.mark_sent(migrated_engine, [first["id"].iloc[1]], "sender-2", attempts=1)  # not its claim
    later = store.claim_due_deliveries(migrated_engine, "sender-2", now + 2 * LEASE, LEASE)
    assert list(later["id"]) == [first["id"].iloc[1]]
    sent = store.load_deliveries(migrated_engine, status="sent")
    assert list(sent["id"]) == [first["id"].iloc[0]] and sent["sent_at"].notna().all()


def test_a_retry_waits_until_its_time_and_attempts_add_up(migrated_engine):
    store.record_deliveries(migrated_engine, [_row()])
    now = pd.Timestamp.now("UTC")
    [claimed] = store.claim_due_deliveries(migrated_engine, "s", now, LEASE)["id"]

    store.mark_retry(migrated_engine, [claimed], "s", 3, "SMTP down", now + pd.Timedelta(minutes=1))

    assert store.claim_due_deliveries(migrated_engine, "s", now, LEASE).empty
    again = store.claim_due_deliveries(migrated_engine, "s", now + pd.Timedelta(minutes=2), LEASE)
    assert list(again["id"]) == [claimed]
    store.mark_failed(migrated_engine, [claimed], "s", 1, "HTTP 400")
    [row] = store.load_deliveries(migrated_engine).itertuples()
    assert (row.status, row.attempts, row.last_error) == ("failed", 4, "HTTP 400")


def test_false_positive_feedback_and_silences_suppress_pending_alerts(migrated_engine):
    store.upsert_scores(
        migrated_engine,
        pd.DataFrame({"kpi": "orders", "ts": [T0, T0 + pd.Timedelta(hours=5)], "is_anomaly": True}),
    )
    store.record_deliveries(
        migrated_engine,
        [_row(), _row(hours=5), _row(kpi="sales_eu", hours=5), _row(kpi="revenue", hours=5)],
    )

    store.set_feedback(migrated_engine, "orders", T0, "false_positive")
    assert store.suppress_false_positive_alerts(migrated_engine) == 1
    window = (T0 + pd.Timedelta(hours=4), T0 + pd.Timedelta(hours=6))
    assert store.add_silence(migrated_engine, "sales*", *window, "maintenance") == 1
    assert store.add_silence(migrated_engine, "sales*", *window, "maintenance") == 0

    rows = store.load_deliveries(migrated_engine).set_index("kpi")
    assert rows.loc["orders", "status"].tolist() == ["suppressed", "pending"]
    assert rows.loc["sales_eu", ["status", "last_error"]].tolist() == ["suppressed", "silenced: maintenance"]
    assert rows.loc["revenue", "status"] == "pending"
    assert len(store.load_silences(migrated_engine)) == 1


def test_what_was_scored_after_a_watermark(migrated_engine):
    scored_at = [T0, T0, T0 + pd.Timedelta(days=1)]
    store.upsert_scores(
        migrated_engine,
        pd.DataFrame(
            {
                "kpi": ["orders", "revenue", "orders"],
                "ts": [T0, T0, T0 + pd.Timedelta(hours=1)],
                "is_anomaly": [True, False, True],
                "severity": ["high", None, "low"],
                "scored_at": scored_at,
            }
        ),
    )

    assert store.scoring_watermark(migrated_engine) == scored_at[2]
    assert store.first_scored_at(migrated_engine) == {"orders": T0, "revenue": T0}
    new = store.load_anomalies_scored(migrated_engine, T0, scored_at[2])
    assert list(zip(new["kpi"], new["severity"])) == [("orders", "low")]
    assert len(store.load_anomalies_scored(migrated_engine, None, scored_at[2])) == 2
    assert store.trained_kpis(migrated_engine) == set()


def test_an_evaluation_is_recorded_where_the_next_one_starts(migrated_engine):
    assert store.last_evaluated_until(migrated_engine) is None
    store.record_alert_evaluation(
        migrated_engine, batch="run-1", scored_after=None, scored_until=T0, alerted=0, recorded_silently={"history": 3}
    )
    with store.alert_evaluation(migrated_engine) as connection:
        assert store.last_evaluated_until(connection) == T0
        store.record_alert_evaluation(
            connection, batch="run-2", scored_after=T0, scored_until=T0 + LEASE, alerted=2, recorded_silently={}
        )

    assert store.last_evaluated_until(migrated_engine) == T0 + LEASE
    evaluations = store.load_alert_evaluations(migrated_engine)
    assert evaluations["batch"].tolist() == ["run-1", "run-2"]
    assert evaluations["scored_after"].tolist()[1] == T0
    assert evaluations["recorded_silently"].tolist() == [{"history": 3}, {}]


def test_an_evaluation_that_fails_records_nothing(migrated_engine):
    with pytest.raises(RuntimeError), store.alert_evaluation(migrated_engine) as connection:
        store.record_alert_evaluation(
            connection, batch="run-1", scored_after=None, scored_until=T0, alerted=0, recorded_silently={}
        )
        raise RuntimeError("crash")
    assert store.load_alert_evaluations(migrated_engine).empty


def test_upgrading_a_store_with_scores_starts_evaluations_after_them(store_url):
    """Migration 0005 on a store scored before it: what was scored then is not judged again."""
    command.upgrade(alembic_config(store_url), "0004")
    engine = make_engine(store_url)
    try:
        store.upsert_scores(
            engine,
            pd.DataFrame(
                {
                    "kpi": "orders",
                    "ts": [T0, T0 + LEASE],
                    "is_anomaly": [True, False],
                    "scored_at": [T0, T0 + LEASE],
                }
            ),
        )
        command.upgrade(alembic_config(store_url), "head")
        assert store.last_evaluated_until(engine) == T0 + LEASE
        [seed] = store.load_alert_evaluations(engine).to_dict("records")
        assert (seed["batch"], seed["alerted"], seed["recorded_silently"]) == ("migration 0005", 0, {})
    finally:
        engine.dispose()
