"""Automation and alerting state: what is trained and scored, the alert evaluations, the
``alert_deliveries`` outbox, and silences.

An alert evaluation judges the anomalies scored since the previous one and queues their alerts;
``alert_evaluation`` runs it in one transaction that no other evaluation overlaps, ending with
the ``alert_evaluations`` row where the next one starts. So each scored anomaly is judged once,
whichever Dagster instance runs the check, and a failed evaluation leaves nothing behind.

The outbox holds one row per (anomaly, channel, recipient). A row is written before anything is
sent, claimed by a sender with a lease, and then marked sent, failed, or left pending with the
time of its next attempt; writing the same row twice is a no-op, so re-deciding an alert never
sends it again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline.store._convert import Kind, TimeLike, build_frame, to_utc, utc_now
from kpi_pipeline.store._sql import Bind, connected, read_frame, upsert
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import (
    ALERT_CHANNELS,
    DELIVERY_STATUSES,
    alert_deliveries,
    alert_evaluations,
    alert_silences,
    anomalies,
    anomaly_feedback,
    anomaly_scores,
    kpi_models,
)
from kpi_pipeline.store.scores import ANOMALY_COLUMNS

DELIVERY_COLUMNS: dict[str, Kind] = {
    "id": "int",
    "kpi": "str",
    "ts": "utc",
    "event_id": "str",
    "severity": "str",
    "channel": "str",
    "recipient": "str",
    "batch": "str",
    "message_key": "str",
    "status": "str",
    "attempts": "int",
    "last_error": "str",
    "next_attempt_at": "utc",
    "created_at": "utc",
    "sent_at": "utc",
}
EVALUATION_COLUMNS: dict[str, Kind] = {
    "id": "int",
    "batch": "str",
    "scored_after": "utc",
    "scored_until": "utc",
    "alerted": "int",
    "evaluated_at": "utc",
}
SILENCE_COLUMNS: dict[str, Kind] = {
    "kpi_pattern": "str",
    "since": "utc",
    "until": "utc",
    "reason": "str",
    "created_at": "utc",
}


# -- what is trained and scored -------------------------------------------------------------


def trained_kpis(engine: sa.Engine) -> set[str]:
    """KPIs with at least one registered ensemble model (without loading any artifact)."""
    query = sa.select(kpi_models.c.kpi).where(kpi_models.c.kind == "ensemble").distinct()
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def scoring_watermark(bind: Bind) -> pd.Timestamp | None:
    """The newest ``scored_at`` of any score: everything scored so far is at or before it."""
    with connected(bind) as connection:
        newest = connection.scalar(sa.select(sa.func.max(anomaly_scores.c.scored_at)))
    return None if newest is None else to_utc(newest)


def first_scored_at(bind: Bind, kpis: Iterable[str] | None = None) -> dict[str, pd.Timestamp]:
    """When each KPI (of ``kpis``, default all) was first scored: the oldest ``scored_at``
    among its scores."""
    table = anomaly_scores
    query = sa.select(table.c.kpi, sa.func.min(table.c.scored_at)).group_by(table.c.kpi)
    if kpis is not None:
        query = query.where(table.c.kpi.in_(list(kpis)))
    with connected(bind) as connection:
        return {kpi: to_utc(ts) for kpi, ts in connection.execute(query)}


def load_anomalies_scored(bind: Bind, after: TimeLike | None, until: TimeLike) -> pd.DataFrame:
    """Anomalous points with ``after < scored_at <= until`` (no lower bound if ``after`` is None),
    with any feedback, sorted by kpi and ts."""
    view = anomalies
    query = sa.select(*(view.c[name] for name in ANOMALY_COLUMNS)).where(view.c.scored_at <= to_utc(until))
    if after is not None:
        query = query.where(view.c.scored_at > to_utc(after))
    return read_frame(bind, query.order_by(view.c.kpi, view.c.ts), ANOMALY_COLUMNS)


# -- alert evaluations ----------------------------------------------------------------------


@contextmanager
def alert_evaluation(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write transaction that no other ``alert_evaluation`` overlaps; it commits on success.

    Run an evaluation's reads and writes on the connection it yields, and record the range it
    judged with ``record_alert_evaluation``: an evaluation waiting for this one then starts
    where it stopped.
    """
    with write_transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            # Readers go on; a second evaluation waits here until this one commits. (SQLite's
            # write transactions already exclude each other.)
            connection.execute(sa.text("LOCK TABLE alert_evaluations IN EXCLUSIVE MODE"))
        yield connection


def last_evaluated_until(bind: Bind) -> pd.Timestamp | None:
    """``scored_until`` of the newest alert evaluation (None before the first)."""
    table = alert_evaluations
    query = sa.select(table.c.scored_until).order_by(table.c.id.desc()).limit(1)
    with connected(bind) as connection:
        until = connection.scalar(query)
    return None if until is None else to_utc(until)


def record_alert_evaluation(
    bind: Bind,
    *,
    batch: str,
    scored_after: TimeLike | None,
    scored_until: TimeLike,
    alerted: int,
    recorded_silently: Mapping[str, int],
) -> None:
    """Record that the anomalies with ``scored_after < scored_at <= scored_until`` were judged:
    ``alerted`` of them are news, the others were recorded silently (reason -> count)."""
    row = {
        "batch": batch,
        "scored_after": None if scored_after is None else to_utc(scored_after),
        "scored_until": to_utc(scored_until),
        "alerted": alerted,
        "recorded_silently": dict(recorded_silently),
        "evaluated_at": utc_now(),
    }
    with _writing(bind) as connection:
        connection.execute(sa.insert(alert_evaluations), [row])


def load_alert_evaluations(bind: Bind) -> pd.DataFrame:
    """Every alert evaluation (``EVALUATION_COLUMNS`` and ``recorded_silently``), oldest first."""
    table = alert_evaluations
    query = sa.select(*(table.c[name] for name in EVALUATION_COLUMNS), table.c.recorded_silently).order_by(table.c.id)
    with connected(bind) as connection:
        rows = connection.execute(query).all()
    frame = build_frame([row[:-1] for row in rows], EVALUATION_COLUMNS)
    return frame.assign(recorded_silently=pd.Series([row[-1] for row in rows], dtype=object))


# -- the outbox -----------------------------------------------------------------------------


def record_deliveries(bind: Bind, rows: Sequence[dict[str, Any]]) -> int:
    """Insert outbox rows; a row whose (kpi, ts, channel, recipient) exists is skipped.

    Each row has kpi, ts, event_id, severity, channel, recipient, batch, message_key, payload,
    status (``pending`` or ``suppressed``) and optionally last_error. Returns rows inserted.
    """
    if not rows:
        return 0
    now = utc_now()
    records = []
    for row in rows:
        _check_value("channel", row["channel"], ALERT_CHANNELS)
        _check_value("status", row["status"], ("pending", "suppressed"))
        records.append(
            {
                **row,
                "ts": to_utc(row["ts"]),
                "last_error": row.get("last_error"),
                "attempts": 0,
                "created_at": now,
            }
        )
    with _writing(bind) as connection:
        inserted = upsert(
            connection,
            alert_deliveries,
            records,
            conflict=["kpi", "ts", "channel", "recipient"],
            returning=True,
        )
    return len(inserted or ())


def load_recent_deliveries(bind: Bind, kpis: Iterable[str], since: TimeLike) -> pd.DataFrame:
    """Outbox rows of ``kpis`` with ``ts >= since``, any status: what a new alert is compared
    with (already recorded? within a cooldown?)."""
    table = alert_deliveries
    query = _select_deliveries().where(table.c.kpi.in_(list(kpis)), table.c.ts >= to_utc(since))
    return read_frame(bind, query.order_by(table.c.ts), DELIVERY_COLUMNS)


def load_deliveries(engine: sa.Engine, status: str | None = None, kpi: str | None = None) -> pd.DataFrame:
    """Outbox rows (without payload), oldest first."""
    table = alert_deliveries
    query = _select_deliveries()
    if status is not None:
        _check_value("status", status, DELIVERY_STATUSES)
        query = query.where(table.c.status == status)
    if kpi is not None:
        query = query.where(table.c.kpi == kpi)
    return read_frame(engine, query.order_by(table.c.id), DELIVERY_COLUMNS)


def claim_due_deliveries(engine: sa.Engine, token: str, now: TimeLike, lease: pd.Timedelta) -> pd.DataFrame:
    """Claim every pending row that is due (and not claimed by another sender) for ``lease``.

    Returns the claimed rows with their ``payload``, oldest first. The claim is a conditional
    update, so of two senders racing for a row exactly one gets it.
    """
    table = alert_deliveries
    now = to_utc(now)
    due = sa.and_(
        table.c.status == "pending",
        sa.or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now),
        sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
    )
    with write_transaction(engine) as connection:
        connection.execute(sa.update(table).where(due).values(claimed_until=now + lease, claim_token=token))
        rows = connection.execute(
            _select_deliveries(table.c.payload)
            .where(table.c.claim_token == token, table.c.status == "pending")
            .order_by(table.c.id)
        ).all()
    frame = build_frame([row[:-1] for row in rows], DELIVERY_COLUMNS)
    return frame.assign(payload=pd.Series([row[-1] for row in rows], dtype=object))


def mark_sent(engine: sa.Engine, ids: Sequence[int], token: str, attempts: int) -> None:
    """The claimed rows ``ids`` reached their recipient after ``attempts`` tries."""
    _finish(engine, ids, token, attempts, status="sent", sent_at=utc_now(), last_error=None)


def mark_failed(engine: sa.Engine, ids: Sequence[int], token: str, attempts: int, error: str) -> None:
    """The channel refused the claimed rows ``ids`` for good; they will not be retried."""
    _finish(engine, ids, token, attempts, status="failed", last_error=error)


def mark_retry(
    engine: sa.Engine,
    ids: Sequence[int],
    token: str,
    attempts: int,
    error: str | None,
    next_attempt_at: TimeLike,
) -> None:
    """Leave the claimed rows ``ids`` pending until ``next_attempt_at`` and release them;
    ``error`` (if not None) replaces their last error."""
    error_value = {} if error is None else {"last_error": error}
    _finish(engine, ids, token, attempts, next_attempt_at=to_utc(next_attempt_at), **error_value)


def _finish(engine: sa.Engine, ids: Sequence[int], token: str, attempts: int, **values: Any) -> None:
    table = alert_deliveries
    with write_transaction(engine) as connection:
        connection.execute(
            sa.update(table)
            .where(table.c.id.in_([int(i) for i in ids]), table.c.claim_token == token)
            .values(
                attempts=table.c.attempts + attempts,
                claimed_until=None,
                claim_token=None,
                **values,
            )
        )


def suppress_false_positive_alerts(engine: sa.Engine) -> int:
    """Suppress pending alerts of every point labelled ``false_positive``; returns how many."""
    table, feedback = alert_deliveries, anomaly_feedback
    marked = (
        sa.select(feedback.c.kpi)
        .where(
            feedback.c.kpi == table.c.kpi,
            feedback.c.ts == table.c.ts,
            feedback.c.label == "false_positive",
        )
        .exists()
    )
    with write_transaction(engine) as connection:
        result = connection.execute(
            sa.update(table)
            .where(table.c.status == "pending", marked)
            .values(status="suppressed", last_error="marked false positive")
        )
    return result.rowcount


# -- silences -------------------------------------------------------------------------------


def add_silence(engine: sa.Engine, kpi_pattern: str, since: TimeLike, until: TimeLike, reason: str) -> int:
    """Silence anomalies of KPIs matching ``kpi_pattern`` with ``since <= ts <= until``.

    Pending alerts the silence covers are suppressed at once; returns how many. Adding the same
    silence again changes nothing.
    """
    since, until = to_utc(since), to_utc(until)
    if until < since:
        raise ValueError(f"silence ends ({until}) before it starts ({since})")
    row = {
        "kpi_pattern": kpi_pattern,
        "since": since,
        "until": until,
        "reason": reason,
        "created_at": utc_now(),
    }
    table = alert_deliveries
    with write_transaction(engine) as connection:
        upsert(connection, alert_silences, [row], conflict=["kpi_pattern", "since", "until"])
        pending = connection.execute(
            sa.select(table.c.id, table.c.kpi).where(
                table.c.status == "pending", table.c.ts >= since, table.c.ts <= until
            )
        ).all()
        ids = [id_ for id_, kpi in pending if fnmatch.fnmatchcase(kpi, kpi_pattern)]
        if ids:
            connection.execute(
                sa.update(table)
                .where(table.c.id.in_(ids))
                .values(status="suppressed", last_error=f"silenced: {reason}")
            )
    return len(ids)


def load_silences(bind: Bind) -> pd.DataFrame:
    """Every silence: kpi_pattern, since, until, reason, created_at."""
    table = alert_silences
    query = sa.select(*(table.c[name] for name in SILENCE_COLUMNS)).order_by(table.c.id)
    return read_frame(bind, query, SILENCE_COLUMNS)


# -- helpers --------------------------------------------------------------------------------


@contextmanager
def _writing(bind: Bind) -> Iterator[sa.Connection]:
    """``bind`` if it is a connection (it writes in its own transaction), else a new write
    transaction of the engine ``bind``."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with write_transaction(bind) as connection:
            yield connection


def _select_deliveries(*extra: sa.ColumnElement) -> sa.Select:
    return sa.select(*(alert_deliveries.c[name] for name in DELIVERY_COLUMNS), *extra)


def _check_value(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, not {value!r}")
