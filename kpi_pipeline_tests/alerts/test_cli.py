"""``kpi-pipeline backfill``, ``silence`` (kpi_pipeline/alerts/cli.py) and what
``feedback --false-positive`` does to pending alerts."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis

HOUR = pd.Timedelta(hours=1)
SPIKE = START + 170 * HOUR


@pytest.fixture
def engine(sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def invoke(sqlite_url):
    def run(*args: str):
        return CliRunner().invoke(app, ["--database-url", sqlite_url, *map(str, args)])

    return run


def _pending_alert(engine, kpi: str, ts: pd.Timestamp) -> None:
    store.upsert_scores(engine, pd.DataFrame({"kpi": [kpi], "ts": [ts], "is_anomaly": [True],
                                              "severity": ["high"]}))
    store.record_deliveries(engine, [{
        "kpi": kpi, "ts": ts, "event_id": None, "severity": "high", "channel": "email",
        "recipient": "oncall@example.com", "batch": "run", "message_key": "k",
        "payload": {"kpi": kpi, "ts": ts.isoformat(), "severity": "high"}, "status": "pending",
    }])


@pytest.mark.parametrize("command", ["backfill", "silence"])
def test_new_commands_have_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_backfill_scores_only_its_range_without_look_ahead_and_silences_it(invoke, engine):
    observations = hourly_kpis(days=10, spike_at=SPIKE)
    store.upsert_observations(engine, observations[observations["kpi"] == "orders"], "history")
    since, until = START + 120 * HOUR, START + 191 * HOUR

    result = invoke("backfill", "--since", since.isoformat(), "--until", until.isoformat(),
                    "--retrain-every", "1d")

    assert result.exit_code == 0, result.output
    summary = "backfill 2025-03-08 00:00 .. 2025-03-10 23:00 UTC: 1 KPIs, 72 points scored"
    assert summary in result.output
    assert "(recorded without alerts)" in result.output
    scores = store.load_scores(engine)
    assert (scores["ts"].min(), scores["ts"].max(), len(scores)) == (since, until, 72)
    versions = pd.to_datetime(scores["model_version"], format=pipeline.VERSION_FORMAT, utc=True)
    assert (versions < scores["ts"]).all()  # each point scored by a model trained before it
    assert len(set(scores["model_version"])) >= 3  # retrained along the way, once a day
    assert SPIKE in set(store.load_anomalies(engine, min_severity="high")["ts"])
    [silence] = store.load_silences(engine).itertuples()
    assert (silence.kpi_pattern, silence.since, silence.until, silence.reason) == (
        "*", since, until, "backfill")

    again = invoke("backfill", "--since", since.isoformat(), "--until", until.isoformat())
    assert "0 points scored" in again.output


def test_backfill_until_defaults_to_the_newest_point_and_bad_ranges_are_one_line(invoke, engine):
    store.upsert_observations(engine, hourly_kpis(days=3), "history")

    assert "error: --until" in invoke("backfill", "--since", "2025-03-05", "--until",
                                      "2025-03-04").stderr
    assert "error: no observations of nope" in invoke("backfill", "--since", "2025-03-03",
                                                      "--kpi", "nope").stderr
    result = invoke("backfill", "--since", "2025-03-04", "--kpi", "sessions", "--alert")
    assert result.exit_code == 0, result.output
    assert ".. 2025-03-05 23:00 UTC" in result.output and "without alerts" not in result.output
    assert store.load_silences(engine).empty


def test_marking_a_false_positive_suppresses_its_pending_alerts(invoke, engine):
    _pending_alert(engine, "orders", SPIKE)
    _pending_alert(engine, "orders", SPIKE + HOUR)

    result = invoke("feedback", "orders", SPIKE.isoformat(), "--false-positive")

    assert result.exit_code == 0, result.output
    assert "suppressed 1 pending alerts of false positives" in result.output
    statuses = store.load_deliveries(engine).set_index("ts")["status"]
    assert statuses.to_dict() == {SPIKE: "suppressed", SPIKE + HOUR: "pending"}


def test_silence_mutes_matching_kpis_for_a_while(invoke, engine):
    now = pd.Timestamp.now("UTC")
    _pending_alert(engine, "orders", now.floor("h") + HOUR)
    _pending_alert(engine, "revenue", now.floor("h") + HOUR)

    result = invoke("silence", "ord*", "--until", "2h", "--reason", "deploy")

    assert result.exit_code == 0, result.output
    assert "(1 pending alerts suppressed)" in result.output
    [silence] = store.load_silences(engine).itertuples()
    assert silence.kpi_pattern == "ord*" and silence.reason == "deploy"
    assert abs(silence.until - (now + 2 * HOUR)) < pd.Timedelta(minutes=1)
    assert store.load_deliveries(engine, status="pending")["kpi"].tolist() == ["revenue"]
