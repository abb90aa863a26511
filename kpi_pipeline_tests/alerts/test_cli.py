"""``kpi-pipeline silence`` (kpi_pipeline/alerts/cli.py) and what ``feedback --false-positive``
does to pending alerts."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline_tests.defs.synthetic import START

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
    store.upsert_scores(engine, pd.DataFrame({"kpi": [kpi], "ts": [ts], "is_anomaly": [True], "severity": ["high"]}))
    store.record_deliveries(
        engine,
        [
            {
                "kpi": kpi,
                "ts": ts,
                "event_id": None,
                "severity": "high",
                "channel": "email",
                "recipient": "oncall@example.com",
                "batch": "run",
                "message_key": "k",
                "payload": {"kpi": kpi, "ts": ts.isoformat(), "severity": "high"},
                "status": "pending",
            }
        ],
    )


def test_silence_has_help():
    result = CliRunner().invoke(app, ["silence", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


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
