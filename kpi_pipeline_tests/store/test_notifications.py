"""Notifications of writes (kpi_pipeline/store/notifications.py): sent by every score write
when it commits (and by every write of observations and models, from triggers), received by a
dedicated listening connection; none on SQLite."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.store import (
    load_scores,
    make_engine,
    migrate,
    save_model,
    upsert_observations,
    upsert_scores,
)
from kpi_pipeline.store import notifications
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.notifications import (
    ANY_KPI,
    LISTENER_NAME,
    MAX_PAYLOAD_BYTES,
    ScoreWriteListener,
    can_listen,
    notify_scores_written,
)

T0 = pd.Timestamp("2025-05-01", tz="UTC")
WAIT_S = 5.0


def scores(*kpis: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kpi": list(kpis),
            "ts": [T0 + pd.Timedelta(hours=hour) for hour in range(len(kpis))],
            "score": 0.1,
            "is_anomaly": False,
        }
    )


def received(listener: ScoreWriteListener, count: int) -> list[str]:
    """The next ``count`` payloads (or fewer, if they do not all arrive within WAIT_S)."""
    payloads, deadline = [], time.monotonic() + WAIT_S
    while len(payloads) < count and (left := deadline - time.monotonic()) > 0:
        payloads += listener.wait(left)
    return payloads


@pytest.mark.postgres
def test_a_score_write_notifies_each_kpi_it_wrote_once_when_it_commits(migrated_pg_engine):
    with ScoreWriteListener(migrated_pg_engine) as listener:
        assert listener.wait(0) == []

        upsert_scores(migrated_pg_engine, scores("sales", "orders", "sales"))

        assert sorted(received(listener, 2)) == ["orders", "sales"]
        assert listener.wait(0.2) == []


@pytest.mark.postgres
def test_nothing_is_notified_before_the_commit_nor_by_a_rolled_back_write(migrated_pg_engine):
    class Abort(Exception):
        pass

    with ScoreWriteListener(migrated_pg_engine) as listener:
        with pytest.raises(Abort), write_transaction(migrated_pg_engine) as connection:
            notify_scores_written(connection, ["sales"])
            raise Abort
        assert listener.wait(0.2) == []

        with write_transaction(migrated_pg_engine) as connection:
            notify_scores_written(connection, ["sales"])
            assert listener.wait(0.2) == []  # not committed yet
        assert received(listener, 1) == ["sales"]


@pytest.mark.postgres
def test_a_kpi_name_too_long_for_a_payload_notifies_any_kpi_and_the_write_lands(migrated_pg_engine):
    long_name = "k" * MAX_PAYLOAD_BYTES
    with ScoreWriteListener(migrated_pg_engine) as listener:
        upsert_scores(migrated_pg_engine, scores(long_name, "sales"))

        assert received(listener, 1) == [ANY_KPI]
    assert len(load_scores(migrated_pg_engine, [long_name])) == 1


@pytest.mark.postgres
def test_the_listener_is_its_own_session_and_reports_losing_it(migrated_pg_engine):
    with ScoreWriteListener(migrated_pg_engine) as listener:
        with migrated_pg_engine.connect() as connection:
            pid = connection.scalar(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": LISTENER_NAME},
            )
            assert pid == listener.backend_pid
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        with pytest.raises(sa.exc.OperationalError):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                listener.wait(deadline - time.monotonic())


@pytest.mark.postgres
def test_interrupt_ends_a_wait_from_another_thread(migrated_pg_engine):
    with ScoreWriteListener(migrated_pg_engine) as listener:
        threading.Timer(0.1, listener.interrupt).start()
        started = time.monotonic()

        assert listener.wait(WAIT_S) == []
        assert time.monotonic() - started < WAIT_S / 2


def test_sqlite_writes_scores_without_notifications_and_cannot_be_listened_to(sqlite_url):
    engine = make_engine(sqlite_url)
    migrate(engine)

    upsert_scores(engine, scores("sales"))

    assert len(load_scores(engine, ["sales"])) == 1
    assert not can_listen(engine)
    with pytest.raises(ValueError):
        ScoreWriteListener(engine)
    engine.dispose()


@pytest.mark.postgres
def test_a_lost_listener_keeps_raising_instead_of_waiting_forever(migrated_pg_engine):
    with ScoreWriteListener(migrated_pg_engine) as listener:
        with migrated_pg_engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": listener.backend_pid})
        with pytest.raises(sa.exc.OperationalError):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                listener.wait(0.05)
        # psycopg closed its socket, which the selector drops silently: the next wait must not
        # block on it for good.
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            listener.wait(None)
        assert time.monotonic() - started < 1.0


@pytest.mark.postgres
def test_connection_options_in_the_database_url_do_not_clash_with_the_listeners(pg_url):
    url = sa.make_url(pg_url).update_query_dict(
        {"application_name": "my-api", "connect_timeout": "3", "keepalives_idle": "30"}
    )
    engine = make_engine(url.render_as_string(hide_password=False))
    migrate(engine)
    try:
        with ScoreWriteListener(engine) as listener:
            upsert_scores(engine, scores("sales"))
            assert received(listener, 1) == ["sales"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_listener_that_notifications_do_not_reach_refuses_to_start(migrated_pg_engine, monkeypatch):
    # As behind a pooler in transaction mode: the test notification never arrives.
    monkeypatch.setattr(notifications, "_send_probe", lambda engine, token: None)
    monkeypatch.setattr(notifications, "PROBE_TIMEOUT_S", 0.3)
    with pytest.raises(sa.exc.OperationalError, match="not delivered"):
        with ScoreWriteListener(migrated_pg_engine):
            pass


@pytest.mark.postgres
def test_score_writes_notified_while_the_probe_is_awaited_are_kept(migrated_pg_engine, monkeypatch):
    send = notifications._send_probe

    def write_then_probe(engine, token):
        upsert_scores(engine, scores("orders"))  # lands before the probe's notification
        send(engine, token)

    monkeypatch.setattr(notifications, "_send_probe", write_then_probe)
    with ScoreWriteListener(migrated_pg_engine) as listener:
        assert listener.wait(0) == ["orders"]
        assert listener.wait(0) == []


# -- writes of observations and models (migration 0004's triggers) ----------------------------


def observations(*kpis: str, value: float = 1.0) -> pd.DataFrame:
    return scores(*kpis).drop(columns=["score", "is_anomaly"]).assign(value=value)


@pytest.mark.postgres
def test_every_write_of_observations_or_models_notifies_its_kpis_whoever_writes_it(
    migrated_pg_engine,
):
    engine = migrated_pg_engine
    with ScoreWriteListener(engine, notifications.INPUTS_CHANNEL, "test-inputs") as listener:
        upsert_observations(engine, observations("sales", "orders", "sales"), "test")
        assert sorted(received(listener, 2)) == ["orders", "sales"]
        upsert_observations(engine, observations("sales", "orders", "sales"), "test")
        assert listener.wait(0.3) == []  # nothing changed: nothing to hear

        with engine.begin() as connection:  # a loader writing the table directly
            connection.execute(
                sa.text(
                    "INSERT INTO kpi_observations (kpi, ts, value, ingested_at, source) "
                    "VALUES ('visits', now(), 3, now(), 'loader')"
                )
            )
            connection.execute(sa.text("UPDATE kpi_observations SET value = 2 WHERE kpi = 'orders'"))
        assert sorted(received(listener, 2)) == ["orders", "visits"]
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE kpi_observations SET kpi = 'renamed' WHERE kpi = 'visits'"))
        assert sorted(received(listener, 2)) == ["renamed", "visits"]
        with engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM kpi_observations WHERE kpi = 'renamed'"))
        assert received(listener, 1) == ["renamed"]

        save_model(
            engine,
            kpi="signups",
            kind="ensemble",
            version="v1",
            trained_at=T0,
            train_start=T0,
            train_end=T0,
            n_points=1,
            params={},
            metrics={},
            artifact=b"x",
        )
        assert received(listener, 1) == ["signups"]
        with engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE kpi_observations"))
        assert received(listener, 1) == [ANY_KPI]

        upsert_scores(engine, scores("sales"))  # scores have their own channel
        assert listener.wait(0.3) == []


@pytest.mark.postgres
def test_statements_that_change_nothing_are_silent_and_long_names_mean_any_kpi(
    migrated_pg_engine,
):
    engine = migrated_pg_engine
    long_name = "k" * MAX_PAYLOAD_BYTES
    save_model(
        engine,
        kpi="signups",
        kind="ensemble",
        version="v1",
        trained_at=T0,
        train_start=T0,
        train_end=T0,
        n_points=1,
        params={},
        metrics={},
        artifact=b"x",
    )
    with ScoreWriteListener(engine, notifications.INPUTS_CHANNEL, "test-inputs") as listener:
        with engine.begin() as connection:  # the statement triggers fire, with no rows
            connection.execute(sa.text("UPDATE kpi_observations SET value = 1 WHERE kpi = 'x'"))
            connection.execute(sa.text("DELETE FROM kpi_models WHERE kpi = 'x'"))
        assert listener.wait(0.3) == []

        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE kpi_models SET n_points = 2"))
        assert received(listener, 1) == ["signups"]
        upsert_observations(engine, observations(long_name), "test")
        assert received(listener, 1) == [ANY_KPI]


@pytest.mark.postgres
def test_a_listener_on_inputs_refuses_to_start_while_a_trigger_is_missing_or_disabled(
    migrated_pg_engine,
):
    engine = migrated_pg_engine
    assert notifications.triggers_enabled(engine, notifications.INPUT_TRIGGERS)
    with engine.connect() as connection:  # fire in replica sessions too (replication, restores)
        states = connection.execute(
            sa.text("SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgname LIKE '%_notify'")
        ).scalars()
        assert list(states) == ["A"]
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE kpi_models DISABLE TRIGGER kpi_models_inserted_notify"))

    assert not notifications.triggers_enabled(engine, notifications.INPUT_TRIGGERS)
    with pytest.raises(sa.exc.OperationalError, match="missing or disabled"):
        with ScoreWriteListener(engine, notifications.INPUTS_CHANNEL, "test-inputs"):
            pass
    with ScoreWriteListener(engine) as listener:  # score notifications need no trigger
        assert listener.wait(0) == []
