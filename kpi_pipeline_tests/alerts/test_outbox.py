"""The delivery outbox (kpi_pipeline/alerts/outbox.py) on Postgres, sending to a local Slack API.

Judging (``queue_news``): each scored anomaly once, from where the store's last evaluation
stopped, atomically, one evaluation at a time. Deciding (``enqueue``) and sending (``deliver``):
each alert once, suppressed by cooldown, age or feedback, grouped into digests, retried with
backoff and ``Retry-After`` while the channel is down, and given up on configuration errors.
"""

import threading

import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.alerts.channels import SlackChannel
from kpi_pipeline.alerts.news import HISTORY
from kpi_pipeline.alerts.outbox import deliver, enqueue, queue_news
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.alerts.routing import Routing
from kpi_pipeline_tests.alerts.samples import anomaly
from kpi_pipeline_tests.alerts.servers import Response

NOW = pd.Timestamp.now("UTC").floor("h")
HOUR = pd.Timedelta(hours=1)
POLICY = AlertPolicy(cooldown_minutes=180, digest_threshold=3, retry_base_seconds=30, max_inline_wait_seconds=1)


@pytest.fixture
def engine(pg_engine):
    return pg_engine


class Sleeps(list):
    """A ``sleep`` that records how long it was asked to wait (and does not wait)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _enqueue(engine, channels, anomalies, batch="run-1", policy=POLICY, **options):
    return enqueue(engine, anomalies, batch=batch, channels=channels, policy=policy, **options)


def _deliver(engine, channels, policy=POLICY, sleeps=None):
    return deliver(engine, channels, policy, sleep=sleeps if sleeps is not None else Sleeps())


def _statuses(engine) -> list[tuple[str, str]]:
    rows = store.load_deliveries(engine)
    return list(zip(rows["ts"].dt.strftime("%H"), rows["status"]))


def test_each_alert_is_sent_once_however_often_it_is_enqueued(engine, channels, slack_api):
    spike = anomaly(ts=NOW - 2 * HOUR)

    first = _enqueue(engine, channels, [spike])
    again = _enqueue(engine, channels, [spike], batch="rerun")
    sent = _deliver(engine, channels)
    repeat = _deliver(engine, channels)

    assert (first.pending, again.pending, again.already_recorded) == (1, 0, 1)
    assert (sent.sent, sent.messages, repeat.sent) == (1, 1, 0)
    assert len(slack_api.messages()) == 1
    assert store.load_deliveries(engine)["status"].tolist() == ["sent"]


def test_cooldown_holds_back_repeats_unless_severity_rises(engine, channels, slack_api):
    anomalies = [
        anomaly(ts=NOW - 10 * HOUR, severity="high"),
        anomaly(ts=NOW - 9 * HOUR, severity="high"),  # within 3 h, not worse: held back
        anomaly(ts=NOW - 8 * HOUR, severity="critical"),  # worse: sent
        anomaly(ts=NOW - 4 * HOUR, severity="high"),  # 4 h after the last alert: sent
    ]
    result = _enqueue(engine, channels, anomalies)
    _deliver(engine, channels)

    assert result.pending == 3 and sum(result.suppressed.values()) == 1
    hours = [f"{(NOW - h * HOUR):%H}" for h in (10, 9, 8, 4)]
    assert _statuses(engine) == list(zip(hours, ["sent", "suppressed", "sent", "sent"]))
    assert len(slack_api.messages()) == 3
    # A later batch is held back by the alerts already sent.
    assert _enqueue(engine, channels, [anomaly(ts=NOW - 3 * HOUR)], batch="run-2").pending == 0


def test_anomalies_too_old_when_first_seen_are_only_recorded(engine, channels):
    result = _enqueue(engine, channels, [anomaly(ts=NOW - 100 * HOUR)])

    assert result.pending == 0 and list(result.suppressed) == ["older than 72 h when first seen"]


def test_more_anomalies_than_the_threshold_in_one_run_make_one_digest(engine, channels, slack_api):
    many = [anomaly(kpi=f"kpi_{i}", ts=NOW - HOUR) for i in range(4)]
    few = [anomaly(kpi="solo", ts=NOW - HOUR)]

    _enqueue(engine, channels, many, batch="big-run")
    _enqueue(engine, channels, few, batch="small-run")
    result = _deliver(engine, channels)

    assert (result.sent, result.messages) == (5, 2)
    texts = sorted(message["text"] for message in slack_api.messages())
    assert texts[0] == "4 anomalies in 4 KPIs (worst: high)"
    assert texts[1].startswith("HIGH anomaly: solo")


def test_a_channel_that_is_down_keeps_alerts_pending_with_backoff(engine, channels, slack_api):
    _enqueue(engine, channels, [anomaly(ts=NOW - HOUR)])
    slack_api.fail_next(*[Response(503, {"ok": False, "error": "service_unavailable"})] * 3)
    sleeps = Sleeps()

    down = _deliver(engine, channels, sleeps=sleeps)

    # Waits beyond max_inline_wait are left to a later evaluation, not slept through.
    assert (down.sent, down.waiting, sleeps) == (0, 1, [])
    [row] = store.load_deliveries(engine).itertuples()
    assert row.status == "pending" and row.attempts == 1 and "503" in row.last_error
    wait = (row.next_attempt_at - pd.Timestamp.now("UTC")).total_seconds()
    assert 25 < wait <= 30
    assert _deliver(engine, channels).sent == 0  # not due yet
    assert len(slack_api.requests) == 1


def test_retry_after_is_honoured_short_waits_in_place_long_ones_later(engine, channels, slack_api):
    policy = POLICY.model_copy(update={"max_inline_wait_seconds": 5.0})
    limited = Response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "2"})
    _enqueue(engine, channels, [anomaly(ts=NOW - HOUR)])
    slack_api.fail_next(limited)
    sleeps = Sleeps()

    assert _deliver(engine, channels, policy=policy, sleeps=sleeps).sent == 1
    assert sleeps == [2.0] and store.load_deliveries(engine)["attempts"].tolist() == [2]

    _enqueue(engine, channels, [anomaly(kpi="revenue", ts=NOW - HOUR)])
    slack_api.fail_next(Response(429, limited.body, {"Retry-After": "600"}))
    assert _deliver(engine, channels, policy=policy, sleeps=sleeps).waiting == 1
    assert sleeps == [2.0]
    waiting = store.load_deliveries(engine, status="pending")
    wait = (waiting["next_attempt_at"].iloc[0] - pd.Timestamp.now("UTC")).total_seconds()
    assert 590 < wait <= 600


def test_configuration_errors_fail_for_good_and_are_reported(engine, slack_api):
    wrong = {"slack": SlackChannel(token="xoxb-wrong", channel="#kpi", base_url=slack_api.base_url)}
    _enqueue(engine, wrong, [anomaly(ts=NOW - HOUR)])

    result = _deliver(engine, wrong)
    again = _deliver(engine, wrong)

    assert (result.failed, again.failed) == (1, 0)
    assert "invalid_auth" in result.errors[0]
    [row] = store.load_deliveries(engine).itertuples()
    assert row.status == "failed" and "invalid_auth" in row.last_error


def test_a_false_positive_is_never_sent(engine, channels, slack_api):
    spike = anomaly(ts=NOW - HOUR)
    scored = pd.DataFrame({"kpi": [spike.kpi], "ts": [spike.ts], "is_anomaly": [True]})
    store.upsert_scores(engine, scored)
    _enqueue(engine, channels, [spike])

    store.set_feedback(engine, spike.kpi, spike.ts, "false_positive")
    result = _deliver(engine, channels)

    assert (result.sent, result.suppressed) == (0, 1)
    assert slack_api.messages() == []


def test_two_senders_at_once_send_each_alert_once(engine, channels, slack_api):
    _enqueue(
        engine,
        channels,
        [anomaly(kpi=f"kpi_{i}", ts=NOW - HOUR) for i in range(3)],
        policy=POLICY.model_copy(update={"digest_threshold": 10}),
    )
    results = []
    senders = [threading.Thread(target=lambda: results.append(_deliver(engine, channels))) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()

    assert sum(r.sent for r in results) == 3 and len(slack_api.messages()) == 3


def test_routes_decide_who_hears_and_channels_that_are_off_get_nothing(engine, channels):
    routing = Routing.model_validate(
        {
            "default_route": False,
            "routes": [
                {
                    "kpis": ["orders"],
                    "min_severity": "low",
                    "channels": {"slack": ["#orders", "#ops"], "email": ["x@example.com"]},
                }
            ],
        }
    )

    result = _enqueue(
        engine,
        channels,
        [anomaly(ts=NOW - HOUR, severity="low"), anomaly(kpi="revenue", ts=NOW - HOUR)],
        routing=routing,
    )

    rows = store.load_deliveries(engine)
    assert result.pending == 2
    assert sorted(zip(rows["kpi"], rows["channel"], rows["recipient"])) == [
        ("orders", "slack", "#ops"),
        ("orders", "slack", "#orders"),
    ]


# -- queue_news -----------------------------------------------------------------------------


def _score(engine, hours_ago: dict[int, str | None], scored_at: pd.Timestamp) -> None:
    """Scores of ``orders`` at ``NOW - h`` for each h, anomalous where a severity is given."""
    severity = list(hours_ago.values())
    store.upsert_scores(
        engine,
        pd.DataFrame(
            {
                "kpi": "orders",
                "ts": [NOW - h * HOUR for h in hours_ago],
                "value": 412.0,
                "expected": 101.0,
                "score": [0.8 if s else 0.1 for s in severity],
                "is_anomaly": [s is not None for s in severity],
                "severity": severity,
                "scored_at": scored_at,
            }
        ),
    )


def _queue(engine, channels, batch="run-1"):
    return queue_news(engine, batch=batch, channels=channels, policy=POLICY)


def _history_then_news(engine) -> None:
    """The first scoring of ``orders`` (an anomaly 30 h ago), judged; then news 2 h ago."""
    _score(engine, {h: ("high" if h == 30 else None) for h in range(40, 10, -1)}, NOW - 10 * HOUR)
    _queue(engine, {}, batch="history")
    _score(engine, {3: None, 2: "critical"}, NOW - HOUR)


def test_each_scored_anomaly_is_judged_once_from_where_the_store_says(engine, channels):
    first_scoring = NOW - 10 * HOUR
    _score(engine, {h: ("high" if h == 30 else None) for h in range(40, 10, -1)}, first_scoring)
    history = _queue(engine, channels, batch="run-1")
    assert (history.scored_after, history.scored_until) == (None, first_scoring)
    assert history.news.alert == [] and history.news.silent == {HISTORY: 1}

    _score(engine, {3: None, 2: "critical"}, NOW - HOUR)
    news = _queue(engine, channels, batch="run-2")
    assert [(a.kpi, a.ts) for a in news.news.alert] == [("orders", NOW - 2 * HOUR)]
    assert (news.scored_after, news.scored_until) == (first_scoring, NOW - HOUR)
    assert news.enqueued.pending == 1

    again = _queue(engine, channels, batch="run-3")
    assert again.news.alert == [] and again.enqueued.pending == 0
    assert again.scored_after == again.scored_until == NOW - HOUR

    evaluations = store.load_alert_evaluations(engine)
    assert evaluations["batch"].tolist() == ["run-1", "run-2"]  # run-3 judged nothing new
    assert evaluations["alerted"].tolist() == [0, 1]
    assert evaluations["recorded_silently"].tolist() == [{HISTORY: 1}, {}]
    assert store.load_deliveries(engine)[["ts", "batch"]].values.tolist() == [[NOW - 2 * HOUR, "run-2"]]


def test_a_failed_evaluation_leaves_nothing_behind_and_its_retry_queues_once(engine, channels, monkeypatch):
    _history_then_news(engine)

    def crash(*_args, **_kwargs):
        raise RuntimeError("the run worker died")

    with monkeypatch.context() as patched:
        patched.setattr(store, "record_alert_evaluation", crash)
        with pytest.raises(RuntimeError):
            _queue(engine, channels, batch="run-1")
    assert store.load_deliveries(engine).empty
    assert store.load_alert_evaluations(engine)["batch"].tolist() == ["history"]

    retried = _queue(engine, channels, batch="run-1-retry")
    assert [a.ts for a in retried.news.alert] == [NOW - 2 * HOUR]
    assert _queue(engine, channels, batch="run-1-retry").news.alert == []
    assert store.load_deliveries(engine)["batch"].tolist() == ["run-1-retry"]


def test_overlapping_evaluations_take_turns_and_judge_each_anomaly_once(engine, channels):
    _history_then_news(engine)
    results = []
    evaluations = [
        threading.Thread(target=lambda batch=batch: results.append(_queue(engine, channels, batch)))
        for batch in ("run-a", "run-b")
    ]
    with store.alert_evaluation(engine):
        # Another evaluation is under way: both wait for it, whatever they read meanwhile.
        for evaluation in evaluations:
            evaluation.start()
        for evaluation in evaluations:
            evaluation.join(timeout=1)
        assert all(evaluation.is_alive() for evaluation in evaluations)
    for evaluation in evaluations:
        evaluation.join()

    assert sorted(len(r.news.alert) for r in results) == [0, 1]
    assert len(store.load_deliveries(engine)) == 1
    assert len(store.load_alert_evaluations(engine)) == 2  # the history one and one of the two
