"""New rows with a spike land in Postgres; the sensors, the scoring run and the alerting path turn
them into exactly one email, one Slack message and one SMS, against local stand-in servers."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.config import Settings
from kpi_pipeline.defs.resources import KpiStore, alert_resources
from kpi_pipeline_tests.alerts.servers import SlackApi, SmtpServer, TwilioApi
from kpi_pipeline_tests.defs.harness import HOUR, Automation, orders

HISTORY_HOURS = 21 * 24  # enough for two walk-forward models, so the spikes are clear-cut
NOW = pd.Timestamp.now("UTC").floor("h")
START = NOW - (HISTORY_HOURS + 48) * HOUR
FIRST_SPIKE = START + (HISTORY_HOURS + 10) * HOUR
SECOND_SPIKE = START + (HISTORY_HOURS + 28) * HOUR


@pytest.fixture
def servers():
    smtp = SmtpServer().start()
    slack = SlackApi("xoxb-test").start()
    twilio = TwilioApi("AC123", "twilio-secret").start()
    yield smtp, slack, twilio
    smtp.stop()
    slack.stop()
    twilio.stop()


@contextmanager
def automate(pg_url, servers, **policy) -> Iterator[Automation]:
    smtp, slack, twilio = servers
    settings = Settings(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_starttls=False,
        alert_email_from="kpi@example.com",
        alert_email_to="oncall@example.com",
        slack_token="xoxb-test",
        slack_channel="#kpi-alerts",
        slack_base_url=slack.base_url,
        twilio_account_sid="AC123",
        twilio_auth_token="twilio-secret",
        twilio_from="+15550000000",
        alert_sms_to="+15551234567",
        twilio_base_url=twilio.url,
    )
    resources = {
        "store": KpiStore(database_url=pg_url),
        **alert_resources(settings),
        # Short waits so a channel outage is retried within the test.
        "alert_policy": AlertPolicy(
            cooldown_minutes=60,
            retry_base_seconds=0.05,
            retry_max_seconds=0.2,
            dagster_url="http://dagster.test",
            api_url="http://api.test",
            **policy,
        ),
    }
    with dg.instance_for_test() as instance:
        yield Automation(instance, resources, settings)


@pytest.fixture
def automation(pg_url, servers):
    # The rows land a day behind the clock, so the KPI would be an ongoing outage (and alerted
    # as one, see the last test): spikes alone here.
    with automate(pg_url, servers, outage_after_intervals=1000) as automation:
        yield automation


def _land(engine, hours: int, spikes=()) -> None:
    store.upsert_observations(engine, orders(START, hours, spikes), "test")


def _score_new_rows(automation: Automation) -> dg.ExecuteInProcessResult:
    """One tick of the new-data sensor and the runs it requests (with the scoring run that
    follows a training run); returns the last run."""
    tick = automation.tick("new_kpi_data_sensor")
    return automation.run_all(tick.run_requests)[-1]


def _counts(servers) -> tuple[int, int, int]:
    smtp, slack, twilio = servers
    return len(smtp.received), len(slack.messages()), len(twilio.sent)


def test_a_spike_is_alerted_once_per_channel_and_an_outage_only_delays_email(automation, servers, pg_url):
    smtp, slack, twilio = servers
    engine = KpiStore(database_url=pg_url).engine()

    # History lands: trained and scored in one run, and nothing is alerted.
    _land(engine, HISTORY_HOURS)
    bootstrap = _score_new_rows(automation)
    assert bootstrap.dagster_run.tags["kpi/after_training_run"]  # scored once trained
    assert automation.check_result(bootstrap, "no_new_anomalies").passed
    automation.tick("anomaly_check_sensor")
    assert _counts(servers) == (0, 0, 0)

    # New rows with a spike: scored, flagged, alerted once on each channel.
    _land(engine, HISTORY_HOURS + 24, spikes=(FIRST_SPIKE,))
    scoring = _score_new_rows(automation)
    assert scoring.dagster_run.job_name == "scoring_job"
    check = automation.check_result(scoring, "no_new_anomalies")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    flagged = store.load_anomalies(engine, kpi="orders", since=START + HISTORY_HOURS * HOUR, min_severity="high")
    assert list(flagged["ts"]) == [FIRST_SPIKE]
    automation.tick("anomaly_check_sensor")
    assert _counts(servers) == (1, 1, 1)
    spike = flagged.iloc[0]
    [mail] = smtp.received
    assert mail.recipients == ["oncall@example.com"]
    subject = mail.message["Subject"]
    assert "orders" in subject and spike["severity"].upper() in subject
    text = mail.message.get_body(("plain",)).get_content()
    assert f"{spike['value']:.4g}" in text and f"{spike['expected']:.4g}" in text
    assert FIRST_SPIKE.strftime("%Y-%m-%d %H:%M UTC") in text
    assert slack.messages()[0]["channel"] == "#kpi-alerts"
    assert twilio.sent[0]["To"] == "+15551234567" and len(twilio.sent[0]["Body"]) <= 160

    # A second pass (the same scoring run again, more sensor ticks) sends nothing new.
    automation.run_job("scoring_job")
    automation.tick("anomaly_check_sensor")
    assert automation.tick("new_kpi_data_sensor").run_requests == []
    assert _counts(servers) == (1, 1, 1)

    # SMTP goes down; another spike lands. Slack and SMS go out, the email waits.
    smtp.stop()
    _land(engine, HISTORY_HOURS + 36, spikes=(FIRST_SPIKE, SECOND_SPIKE))
    _score_new_rows(automation)
    automation.tick("anomaly_check_sensor")
    automation.tick("anomaly_check_sensor")
    assert _counts(servers) == (1, 2, 2)
    [waiting] = store.load_deliveries(engine, status="pending").itertuples()
    assert (waiting.channel, waiting.ts) == ("email", SECOND_SPIKE)
    assert waiting.attempts >= 2 and "Connection refused" in waiting.last_error

    # SMTP is back: the next tick delivers it, once.
    smtp.start()
    _wait_until_due(engine)  # at most retry_max_seconds
    automation.tick("anomaly_check_sensor")
    automation.tick("anomaly_check_sensor")
    assert _counts(servers) == (2, 2, 2)
    assert smtp.received[-1].message["Subject"].count("orders") == 1
    deliveries = store.load_deliveries(engine)
    assert set(deliveries["status"]) == {"sent"} and len(deliveries) == 6


def test_a_gross_spike_is_critical_and_alerted_on_every_channel_under_the_default_routing(automation, servers, pg_url):
    engine = KpiStore(database_url=pg_url).engine()
    _land(engine, HISTORY_HOURS)
    _score_new_rows(automation)

    # 574 times the usual value: however the calibration judges it, its size makes it critical.
    rows = orders(START, HISTORY_HOURS + 24)
    rows.loc[rows["ts"] == FIRST_SPIKE, "value"] *= 574
    store.upsert_observations(engine, rows, "test")
    _score_new_rows(automation)
    automation.tick("anomaly_check_sensor")

    flagged = store.load_anomalies(engine, kpi="orders", since=START + HISTORY_HOURS * HOUR)
    assert list(flagged["ts"]) == [FIRST_SPIKE]
    assert flagged["severity"].iloc[0] == "critical"
    assert _counts(servers) == (1, 1, 1)


def test_a_kpi_that_stops_reporting_is_alerted_once_on_every_channel(pg_url, servers):
    """Nothing is scored for a silent KPI: the hourly scoring run's anomaly check finds the
    ongoing outage itself (7 hours without a point, the limit is 4) and alerts it once, severity
    high, under the default routing; later evaluations send nothing more."""
    with automate(pg_url, servers) as automation:
        engine = KpiStore(database_url=pg_url).engine()
        store.upsert_observations(engine, orders(NOW - (HISTORY_HOURS + 6) * HOUR, HISTORY_HOURS), "test")
        _score_new_rows(automation)  # the KPI's history: trained, scored, nothing alerted
        automation.tick("anomaly_check_sensor")
        assert _counts(servers) == (0, 0, 0)

        hourly = automation.run_job("scoring_job")  # no new point: the schedule's run
        check = automation.check_result(hourly, "no_new_anomalies")
        assert not check.passed
        automation.tick("anomaly_check_sensor")
        assert _counts(servers) == (1, 1, 1)
        smtp, slack, _ = servers
        assert "orders" in smtp.received[0].message["Subject"]
        deliveries = store.load_deliveries(engine)
        assert set(deliveries["channel"]) == {"email", "slack", "sms"}
        assert set(deliveries["ts"]) == {NOW - 6 * HOUR} and set(deliveries["severity"]) == {"high"}

        automation.run_job("scoring_job")
        automation.tick("anomaly_check_sensor")
        assert _counts(servers) == (1, 1, 1)


def _wait_until_due(engine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = store.load_deliveries(engine, status="pending")
        if (pending["next_attempt_at"] <= pd.Timestamp.now("UTC")).all():
            return
        time.sleep(0.05)
    raise AssertionError("pending alerts never became due")
