"""The ``kpi-pipeline`` commands, run through typer's CliRunner against real databases."""

import json

import dagster as dg
import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline.config import PROJECT_ROOT
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis, to_wide_csv

HOUR = pd.Timedelta(hours=1)
BACKFILL_SPIKE = START + 170 * HOUR


@pytest.fixture
def invoke(sqlite_url):
    """Run ``kpi-pipeline --database-url <a fresh SQLite file> ARGS``."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["--database-url", sqlite_url, *map(str, args)])

    return run


@pytest.fixture
def engine(sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    yield engine
    engine.dispose()


def _assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["init"], ["ingest"], ["run"], ["backfill"], ["anomalies"], ["evaluate"], ["feedback"]],
)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_init_migrates_once_and_is_idempotent(invoke):
    first, second = invoke("init"), invoke("init")

    assert first.exit_code == second.exit_code == 0
    assert "applied migrations: 0001" in first.output
    assert "schema already up to date" in second.output


def test_init_masks_the_password_and_reports_an_unreachable_database_in_one_line():
    url = "postgresql://kpi:s3cret@127.0.0.1:1/kpi"
    result = CliRunner().invoke(app, ["--database-url", url, "init"])

    assert "postgresql://kpi:***@127.0.0.1:1/kpi" in result.output
    assert "s3cret" not in result.output
    _assert_one_line_error(result, "127.0.0.1")


def test_ingest_counts_new_then_unchanged_rows(invoke, tmp_path):
    data = tmp_path / "kpis.csv"
    data.write_text(to_wide_csv(hourly_kpis(days=2)))

    first, second = invoke("ingest", data), invoke("ingest", data)

    assert first.exit_code == second.exit_code == 0
    assert "accepted 96, updated 0, unchanged 0, rejected 0" in first.output
    assert "accepted 0, updated 0, unchanged 96, rejected 0" in second.output


def test_ingest_keeps_good_rows_and_stores_bad_ones(invoke, engine, tmp_path):
    data = tmp_path / "mixed.csv"
    data.write_text(
        "kpi,timestamp,value\n"
        "orders,2025-03-03T00:00:00Z,10\n"
        "orders,2025-03-03T01:00:00Z,abc\n"
        "orders,not a time,12\n"
        "orders,2025-03-03T02:00:00Z,13\n"
    )

    result = invoke("ingest", data, "--source", "shop")

    assert result.exit_code == 0
    assert "accepted 2, updated 0, unchanged 0, rejected 2" in result.output
    assert "line 3: non-numeric value 'abc'" in result.output
    assert "line 4: unparsable timestamp 'not a time'" in result.output
    assert store.table_counts(engine)["rejected_observations"] == 2
    assert store.load_observations(engine)["value"].tolist() == [10.0, 13.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is a binary file, not CSV text"),
        (b"kpi,value\norders,1\n", "no timestamp column"),
        (b"timestamp,orders\n2025-03-03T00:00:00Z,abc\n", "no valid observations"),
    ],
    ids=["binary", "no-timestamp-column", "only-bad-rows"],
)
def test_ingest_of_an_unusable_file_fails_in_one_line(invoke, tmp_path, content, message):
    data = tmp_path / "input.csv"
    data.write_bytes(content)

    _assert_one_line_error(invoke("ingest", data), message)


def test_ingest_of_a_missing_file_fails_in_one_line(invoke, tmp_path):
    _assert_one_line_error(invoke("ingest", tmp_path / "absent.csv"), "file not found")


@pytest.fixture
def scored(engine):
    """Four observed and scored points, three of them anomalies of rising severity."""
    ts = START + pd.Series([1, 2, 3, 4]) * HOUR
    points = pd.DataFrame({"kpi": ["orders", "orders", "sessions", "orders"], "ts": ts, "value": [1.0, 50, 70, 90]})
    store.upsert_observations(engine, points, "test")
    store.upsert_scores(
        engine,
        points.assign(
            score=[0.1, 0.55, 0.75, 0.9],
            is_anomaly=[False, True, True, True],
            severity=[None, "low", "high", "critical"],
        ),
    )
    return ts


def test_anomalies_as_json_csv_and_table(invoke, scored):
    as_json = json.loads(invoke("anomalies", "--format", "json").output)
    as_csv = pd.read_csv(pd.io.common.StringIO(invoke("anomalies", "--format", "csv").output))
    table = invoke("anomalies").output

    assert [(row["kpi"], row["severity"]) for row in as_json] == [
        ("orders", "critical"),
        ("sessions", "high"),
        ("orders", "low"),
    ]
    assert as_csv["value"].tolist() == [90.0, 70.0, 50.0]
    assert "2025-03-03 04:00" in table and "critical" in table and "sessions" in table


@pytest.mark.parametrize(
    ("options", "values"),
    [
        (["--kpi", "sessions"], [70.0]),
        (["--kpi", "sessions", "--kpi", "orders"], [90.0, 70.0, 50.0]),
        (["--severity", "high"], [90.0, 70.0]),
        (["--since", "2025-03-03T03:00:00Z"], [90.0, 70.0]),
        (["--limit", "1"], [90.0]),
    ],
)
def test_anomalies_filters(invoke, scored, options, values):
    result = invoke("anomalies", "--format", "json", *options)
    assert [row["value"] for row in json.loads(result.stdout)] == values


def test_anomalies_says_when_it_shows_fewer_than_it_found(invoke, scored):
    for output in ("table", "json", "csv"):
        result = invoke("anomalies", "--format", output, "--limit", "2")
        assert "showing the newest 2 of 3 anomalies; pass --limit 3" in result.stderr
    assert invoke("anomalies", "--limit", "3").stderr == ""
    # The notice stays off stdout, so the JSON still parses.
    assert len(json.loads(invoke("anomalies", "--format", "json", "--limit", "2").stdout)) == 2


@pytest.mark.parametrize("command", [["anomalies"], ["backfill", "--since", "2025-03-03"]])
def test_an_unknown_kpi_is_an_error_naming_the_close_ones(invoke, scored, command):
    result = invoke(*command, "--kpi", "order", "--kpi", "sessions")
    _assert_one_line_error(result, "unknown KPI 'order'; close names: orders")
    _assert_one_line_error(invoke(*command, "--kpi", "zzz"), "known KPIs: orders, sessions")


def test_anomaly_table_keeps_every_column_whatever_the_values(invoke, engine):
    ts = START + HOUR
    long_name = "checkout_conversion_rate_" * 8
    for kpi, value in [("sales", 1e308), ("refunds", -1e308), (long_name, 5.0)]:
        points = pd.DataFrame({"kpi": [kpi], "ts": [ts], "value": [value]})
        store.upsert_observations(engine, points, "test")
        store.upsert_scores(
            engine,
            points.assign(expected=12.0, lower=1.0, upper=1e300, score=0.9, is_anomaly=True, severity="critical"),
        )

    table = invoke("anomalies").stdout

    header, *rows = table.splitlines()
    for column in (
        "kpi",
        "time (UTC)",
        "value",
        "expected",
        "deviation",
        "band",
        "score",
        "severity",
        "flagged by",
        "feedback",
    ):
        assert column in header
    assert "1e+308" in table and "-1e+308" in table and "1..1e+300" in table
    sales = next(row for row in rows if row.lstrip().startswith("sales"))
    assert "2025-03-03 01:00" in sales and "critical" in sales
    assert "".join(row.split()[0] for row in rows).count(long_name) == 1  # folded, not cut


def test_anomalies_on_an_empty_database(invoke):
    result = invoke("anomalies")
    assert result.exit_code == 0
    assert "no anomalies found" in result.output


def test_feedback_labels_a_scored_point(invoke, engine, scored):
    point = scored[3].isoformat()
    result = invoke("feedback", "orders", point, "--false-positive", "--note", "promo")

    assert result.exit_code == 0
    labelled = store.load_anomalies(engine, kpi="orders", since=scored[3])
    assert labelled[["feedback", "feedback_note"]].values.tolist() == [["false_positive", "promo"]]


def test_feedback_on_an_unscored_point_or_without_a_label_fails(invoke, scored):
    _assert_one_line_error(invoke("feedback", "orders", "2030-01-01", "--true-positive"), "no scored point")
    _assert_one_line_error(invoke("feedback", "orders", scored[3].isoformat()), "exactly one")


def test_feedback_on_a_point_that_is_not_an_anomaly_fails_as_the_api_does(invoke, engine, scored):
    _assert_one_line_error(
        invoke("feedback", "orders", scored[0].isoformat(), "--false-positive"),
        "is not an anomaly (score 0.10)",
    )
    assert store.load_anomalies(engine, kpi="orders")["feedback"].isna().all()


def test_run_trains_scores_and_summarises(invoke, engine, tmp_path, monkeypatch):
    spike = START + 200 * HOUR
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=spike), "test")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    result = invoke("run")

    assert result.exit_code == 0, result.output
    assert f"run recorded in the Dagster instance at {home}" in result.output
    with dg.DagsterInstance.get() as instance:  # what `dagster dev` on that home shows
        for asset in ("cleaned_kpis", "kpi_models", "anomaly_scores"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None
    assert "kpi_models: orders: trained version" in result.output
    assert "anomaly_scores: orders: scored 192 points" in result.output
    assert "KPIs scored: 2, points scored: 384" in result.output
    assert "insufficient history: none" in result.output
    assert "DEBUG" not in result.output and "STEP_SUCCESS" not in result.output
    found = json.loads(invoke("anomalies", "--kpi", "orders", "--format", "json").output)
    assert pd.Timestamp(max(found, key=lambda row: row["score"])["ts"]) == spike


def test_run_reports_a_failing_asset_in_one_line(invoke, engine, monkeypatch):
    store.upsert_observations(engine, hourly_kpis(days=3), "test")

    def broken_training(*args, **kwargs):
        raise RuntimeError("prophet exploded\nwith details")

    monkeypatch.setattr(pipeline, "train_models", broken_training)

    _assert_one_line_error(invoke("run"), "kpi_models failed: RuntimeError: prophet exploded")


def test_backfill_scores_only_its_range_without_look_ahead_and_silences_it(invoke, engine):
    observations = hourly_kpis(days=10, spike_at=BACKFILL_SPIKE)
    store.upsert_observations(engine, observations[observations["kpi"] == "orders"], "history")
    since, until = START + 120 * HOUR, START + 191 * HOUR

    result = invoke("backfill", "--since", since.isoformat(), "--until", until.isoformat(), "--retrain-every", "1d")

    assert result.exit_code == 0, result.output
    summary = "backfill 2025-03-08 00:00 .. 2025-03-10 23:00 UTC: 1 KPIs, 72 points scored"
    assert summary in result.output
    assert "(recorded without alerts)" in result.output
    scores = store.load_scores(engine)
    assert (scores["ts"].min(), scores["ts"].max(), len(scores)) == (since, until, 72)
    versions = pd.to_datetime(scores["model_version"], format=pipeline.VERSION_FORMAT, utc=True)
    assert (versions < scores["ts"]).all()  # each point scored by a model trained before it
    assert len(set(scores["model_version"])) >= 3  # retrained along the way, once a day
    assert BACKFILL_SPIKE in set(store.load_anomalies(engine, min_severity="high")["ts"])
    [silence] = store.load_silences(engine).itertuples()
    assert (silence.kpi_pattern, silence.since, silence.until, silence.reason) == ("*", since, until, "backfill")

    again = invoke("backfill", "--since", since.isoformat(), "--until", until.isoformat())
    assert "0 points scored" in again.output


def test_backfill_until_defaults_to_the_newest_point_and_bad_ranges_are_one_line(invoke, engine):
    store.upsert_observations(engine, hourly_kpis(days=3), "history")

    assert "error: --until" in invoke("backfill", "--since", "2025-03-05", "--until", "2025-03-04").stderr
    result = invoke("backfill", "--since", "2025-03-04", "--kpi", "sessions", "--alert")
    assert result.exit_code == 0, result.output
    assert ".. 2025-03-05 23:00 UTC" in result.output and "without alerts" not in result.output
    assert store.load_silences(engine).empty


def test_evaluate_a_labelled_kpi_file(invoke, tmp_path):
    data, labels, out = tmp_path / "kpis.csv", tmp_path / "labels.csv", tmp_path / "out"
    # 20 days: NAB's probation (15%) leaves the first model 72 points to learn from.
    spike = START + 400 * HOUR
    data.write_text(to_wide_csv(hourly_kpis(days=20, spike_at=spike)))
    labels.write_text(f"kpi,start,end\norders,{spike.isoformat()},{spike.isoformat()}\n")

    result = invoke("evaluate", "--data", data, "--labels", labels, "--out", out, "--workers", 1)

    assert result.exit_code == 0, result.output
    assert "# Evaluation" in result.output and "recall 1.000" in result.output
    assert (out / "summary.json").is_file()


def test_evaluate_a_kpi_file_needs_labels(invoke, tmp_path):
    data = tmp_path / "kpis.csv"
    data.write_text(to_wide_csv(hourly_kpis(days=1)))

    _assert_one_line_error(invoke("evaluate", "--data", data, "--out", tmp_path), "--labels")
