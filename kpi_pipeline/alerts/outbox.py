"""Turning anomalies into alerts without losing or repeating any: the ``alert_deliveries`` outbox.

``queue_news`` is one evaluation of the anomaly check: it judges the anomalies scored since the
previous evaluation recorded in the store (``news.select_news``), queues the news with
``enqueue`` and records where it stopped, all in one transaction that no other evaluation
overlaps. Where the next evaluation starts is kept in the store, not in Dagster: a new Dagster
instance neither loses news nor alerts history again, and a failed, retried or concurrent
evaluation queues nothing twice.

``enqueue`` decides, for each anomaly and each (channel, recipient) its routes name, whether to
alert: too old or within a cooldown is recorded as ``suppressed``, everything else as
``pending``. Nothing is sent there, and an anomaly already recorded for a recipient is skipped,
so re-evaluating a check or rerunning a scoring run records nothing new.

``deliver`` claims the due pending rows, sends each message once (rows sharing a message key
form one digest) and records the outcome: ``sent``; ``failed`` for a configuration error, which
is reported and not retried; or still ``pending`` with the time of the next try (exponential
backoff, or the service's ``Retry-After``) when the channel is down, so a later call delivers
it. Only a crash between a successful send and its ``sent`` mark can repeat an alert;
emails then carry the same Message-ID.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.alerts.anomaly import Anomaly, severity_rank
from kpi_pipeline.alerts.channels import AlertChannel, DeliveryError
from kpi_pipeline.alerts.messages import Message, render
from kpi_pipeline.alerts.news import News, select_news
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.alerts.routing import Routing


class Log(Protocol):
    def info(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


@dataclass
class Enqueued:
    """What ``enqueue`` recorded."""

    pending: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    """Reason -> rows recorded as suppressed."""
    already_recorded: int = 0


@dataclass(frozen=True)
class Evaluation:
    """What one ``queue_news`` judged and queued."""

    scored_after: pd.Timestamp | None
    """The previous evaluation's ``scored_until`` (None: there was none)."""
    scored_until: pd.Timestamp | None
    """The newest ``scored_at`` judged (None: nothing is scored yet)."""
    news: News
    enqueued: Enqueued


@dataclass
class Delivered:
    """What ``deliver`` did, in outbox rows (a digest is one message for several rows)."""

    sent: int = 0
    messages: int = 0
    waiting: int = 0
    """Rows left pending for a later try."""
    failed: int = 0
    suppressed: int = 0
    """Pending rows suppressed because their point was marked false positive."""
    errors: list[str] = field(default_factory=list)


def queue_news(
    engine: sa.Engine,
    *,
    batch: str,
    channels: Mapping[str, AlertChannel],
    policy: AlertPolicy,
    silent_reason: str | None = None,
    routing: Routing | None = None,
    now: pd.Timestamp | None = None,
) -> Evaluation:
    """Judge the anomalies scored since the previous evaluation and queue alerts for the news.

    ``batch`` names this evaluation (the check's run id); ``silent_reason`` (from
    ``news.silent_run_reason``) records everything silently. Anomalies with ``scored_at`` after
    the store's last evaluation and up to the newest score are judged; before the first
    evaluation ever, everything scored so far is history. An evaluation that finds nothing
    scored since the previous one records nothing.

    KPIs that have stopped reporting (``ongoing_outages``) are judged on every evaluation, since
    nothing is scored for them: each outage is queued once (the outbox keys it by its first
    missing slot, the same key its score takes when data returns).
    """
    now = now if now is not None else pd.Timestamp.now("UTC")
    with store.alert_evaluation(engine) as connection:
        after = store.last_evaluated_until(connection)
        newest = store.scoring_watermark(connection)
        until = max((t for t in (after, newest) if t is not None), default=None)
        if until is None:
            return Evaluation(after, until, News(alert=[]), Enqueued())
        scored = store.load_anomalies_scored(connection, after, until) if until != after else None
        outages = ongoing_outages(connection, now, policy)
        if scored is None and not outages:
            return Evaluation(after, until, News(alert=[]), Enqueued())
        first_scored = store.first_scored_at(
            connection, set(() if scored is None else scored["kpi"]) | {a.kpi for a in outages}
        )
        silences = store.load_silences(connection)
        judge = partial(
            select_news,
            watermark=after,
            first_scored=first_scored,
            silences=silences,
            silent_reason=silent_reason,
            alert_on_history=policy.alert_on_history,
        )
        news = judge(scored) if scored is not None else News(alert=[])
        if outages:
            found = judge(pd.DataFrame([outage.to_json() for outage in outages]))
            news = News(alert=news.alert + found.alert, silent=dict(Counter(news.silent) + Counter(found.silent)))
        enqueued = enqueue(
            connection,
            news.alert,
            batch=batch,
            channels=channels,
            policy=policy,
            routing=routing,
            now=now,
        )
        if until != after:
            store.record_alert_evaluation(
                connection,
                batch=batch,
                scored_after=after,
                scored_until=until,
                alerted=len(news.alert),
                recorded_silently=news.silent,
            )
    return Evaluation(after, until, news, enqueued)


def ongoing_outages(bind: sa.Connection, now: pd.Timestamp, policy: AlertPolicy) -> list[Anomaly]:
    """KPIs that have stopped reporting, as outage anomalies (``ongoing``, severity high, flagged
    ``gap`` as the outage's score is when data returns), except those that became outages longer
    than ``policy.max_age`` ago: not news (a dataset loaded from an old file, say)."""
    found = store.ongoing_outages(bind, now, policy.outage_after_intervals)
    return [
        Anomaly(kpi=row.kpi, ts=row.start, severity="high", flagged_by=store.OUTAGE_FLAG, ongoing=True)
        for row in found.itertuples(index=False)
        if now - row.outage_since <= policy.max_age
    ]


def enqueue(
    bind: sa.Engine | sa.Connection,
    anomalies: Sequence[Anomaly],
    *,
    batch: str,
    channels: Mapping[str, AlertChannel],
    policy: AlertPolicy,
    routing: Routing | None = None,
    now: pd.Timestamp | None = None,
    silent_reason: str | None = None,
) -> Enqueued:
    """Record an outbox row for each (anomaly, channel, recipient) its routes name.

    ``silent_reason``: record every row as suppressed for this reason (a run that alerts
    nothing, ``news.silent_run_reason``), so no later evaluation alerts them either.

    ``bind``: an engine, or the connection of an evaluation in progress. ``batch`` names the
    check evaluation (its run id) the anomalies come from; when it gives one recipient more
    than ``policy.digest_threshold`` alerts, they share one digest message.
    """
    result = Enqueued()
    if not anomalies:
        return result
    now = now if now is not None else pd.Timestamp.now("UTC")
    routing = routing if routing is not None else policy.routing()
    on = {name: ch.default_recipients() for name, ch in channels.items() if ch.is_configured}
    cooldown = policy.cooldown
    recent = store.load_recent_deliveries(bind, {a.kpi for a in anomalies}, min(a.ts for a in anomalies) - cooldown)
    recorded = set(zip(recent["kpi"], recent["ts"], recent["channel"], recent["recipient"]))
    # Per (kpi, channel, recipient): (ts, severity rank) of alerts that did or will go out.
    alerted: dict[tuple[str, str, str], list[tuple[pd.Timestamp, int]]] = defaultdict(list)
    for row in recent[recent["status"].isin(["pending", "sent"])].itertuples(index=False):
        alerted[(row.kpi, row.channel, row.recipient)].append((row.ts, severity_rank(row.severity)))
    rows, suppressed = [], Counter()
    for anomaly in sorted(anomalies, key=lambda a: (a.ts, a.kpi)):
        for channel, recipient in sorted(routing.targets(anomaly, on)):
            if (anomaly.kpi, anomaly.ts, channel, recipient) in recorded:
                result.already_recorded += 1
                continue
            history = alerted[(anomaly.kpi, channel, recipient)]
            reason = silent_reason if silent_reason is not None else _suppression(anomaly, history, now, policy)
            if reason is None:
                history.append((anomaly.ts, anomaly.rank))
            else:
                suppressed[reason] += 1
            rows.append(_outbox_row(anomaly, channel, recipient, batch, reason))
    _assign_digests(rows, batch, policy.digest_threshold)
    store.record_deliveries(bind, rows)
    result.pending = sum(row["status"] == "pending" for row in rows)
    result.suppressed = dict(suppressed)
    return result


def _suppression(
    anomaly: Anomaly,
    history: list[tuple[pd.Timestamp, int]],
    now: pd.Timestamp,
    policy: AlertPolicy,
) -> str | None:
    """Why ``anomaly`` should not be sent to a recipient with this alert history, or None."""
    # An ongoing outage's age counts from when it became one (``ongoing_outages`` judged that).
    if not anomaly.ongoing and now - anomaly.ts > policy.max_age:
        return f"older than {policy.max_age_hours:g} h when first seen"
    near = [rank for ts, rank in history if ts != anomaly.ts and abs(ts - anomaly.ts) <= policy.cooldown]
    if near and anomaly.rank <= max(near):
        minutes = policy.cooldown_minutes
        return f"cooldown: {anomaly.kpi} alerted as severe or worse within {minutes} min"
    return None


def _outbox_row(anomaly: Anomaly, channel: str, recipient: str, batch: str, reason: str | None) -> dict:
    return {
        "kpi": anomaly.kpi,
        "ts": anomaly.ts,
        "event_id": anomaly.event_id,
        "severity": anomaly.severity,
        "channel": channel,
        "recipient": recipient,
        "batch": batch,
        "message_key": f"{anomaly.kpi}@{anomaly.ts.isoformat()}",
        "payload": anomaly.to_json(),
        "status": "pending" if reason is None else "suppressed",
        "last_error": reason,
    }


def _assign_digests(rows: list[dict], batch: str, threshold: int) -> None:
    """Pending rows of one recipient beyond ``threshold`` in one batch share a digest key."""
    pending = Counter((r["channel"], r["recipient"]) for r in rows if r["status"] == "pending")
    for row in rows:
        if row["status"] == "pending" and pending[(row["channel"], row["recipient"])] > threshold:
            row["message_key"] = f"digest:{batch}"


def deliver(
    engine: sa.Engine,
    channels: Mapping[str, AlertChannel],
    policy: AlertPolicy,
    *,
    log: Log | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Delivered:
    """Send every due pending alert once; see the module docstring for what happens on errors."""
    log = log or logging.getLogger(__name__)
    result = Delivered(suppressed=store.suppress_false_positive_alerts(engine))
    token = uuid.uuid4().hex
    lease = pd.Timedelta(seconds=policy.claim_lease_seconds)
    claimed = store.claim_due_deliveries(engine, token, pd.Timestamp.now("UTC"), lease)
    deadline = clock() + policy.send_budget_seconds
    links = policy.links()
    groups = claimed.groupby(["channel", "recipient", "message_key"], sort=False)
    for (channel_name, recipient, key), group in groups:
        ids = group["id"].tolist()
        channel = channels.get(channel_name)
        if channel is None or not channel.is_configured:
            # Configured when the alert was recorded, off now: keep it for when it is back.
            later = _after(policy.retry_max_seconds)
            store.mark_retry(engine, ids, token, 0, f"{channel_name} channel is off", later)
            result.waiting += len(ids)
            continue
        if clock() >= deadline:
            store.mark_retry(engine, ids, token, 0, None, _after(0))
            result.waiting += len(ids)
            continue
        anomalies = [Anomaly.from_json(payload) for payload in group["payload"]]
        message = render(anomalies, links, policy.timezone, key=key)
        prior = int(group["attempts"].max())
        outcome = _send(channel, recipient, message, policy, prior, deadline, sleep, clock)
        where = f"{channel_name} alert to {recipient} ({key})"
        if outcome.status == "sent":
            store.mark_sent(engine, ids, token, outcome.tries)
            result.sent += len(ids)
            result.messages += 1
        elif outcome.status == "failed":
            store.mark_failed(engine, ids, token, outcome.tries, outcome.error)
            result.failed += len(ids)
            result.errors.append(f"{where} failed for good: {outcome.error}")
            log.error(f"{where} failed for good, not retried: {outcome.error}")
        else:
            store.mark_retry(engine, ids, token, outcome.tries, outcome.error, _after(outcome.wait))
            result.waiting += len(ids)
            result.errors.append(f"{where} will be retried: {outcome.error}")
            log.info(f"{where} not delivered yet, next try in {outcome.wait:.0f} s: {outcome.error}")
    return result


@dataclass(frozen=True)
class _Outcome:
    status: str  # sent | failed | retry
    tries: int
    error: str | None = None
    wait: float = 0.0


def _send(
    channel: AlertChannel,
    recipient: str,
    message: Message,
    policy: AlertPolicy,
    prior_attempts: int,
    deadline: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> _Outcome:
    """Try to send, retrying transient errors in place while the waits are short."""
    tries = 0
    while True:
        tries += 1
        try:
            channel.send(recipient, message)
            return _Outcome("sent", tries)
        except DeliveryError as error:
            if not error.retryable:
                return _Outcome("failed", tries, str(error))
            wait = error.retry_after
            if wait is None:
                wait = policy.backoff(prior_attempts + tries)
            out_of_tries = tries >= policy.send_attempts
            if out_of_tries or wait > policy.max_inline_wait_seconds or clock() + wait >= deadline:
                return _Outcome("retry", tries, str(error), wait)
            sleep(wait)


def _after(seconds: float) -> pd.Timestamp:
    return pd.Timestamp.now("UTC") + pd.Timedelta(seconds=seconds)
