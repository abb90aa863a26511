"""One KPI can never stop the others: its failure is recorded with its reason and every other KPI
completes, in training, scoring, backfill, a Dagster materialisation, ``run`` and ``evaluate``;
and a minute-level KPI with a multi-day outage is trained on its usable points, its later spike
is caught, and the outage is one event."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline.defs.assets import ASSETS, every_shard_tags
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline.evaluation import runner
from kpi_pipeline.ingestion import read_observations_csv
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis, to_wide_csv

HOUR = pd.Timedelta(hours=1)
CONFIG = DetectorConfig(scale_window=96)


def fail_for(monkeypatch, name: str, kpi: str, kpi_at: int = 1) -> None:
    """Make ``pipeline.<name>`` raise for ``kpi`` (its argument at ``kpi_at``) only."""
    real = getattr(pipeline, name)

    def broken(*args, **kwargs):
        if args[kpi_at] == kpi:
            raise RuntimeError(f"{kpi} is broken")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, name, broken)


@pytest.fixture
def engine(sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    yield engine
    engine.dispose()


def scored_kpis(engine) -> set[str]:
    return set(store.load_scores(engine)["kpi"])


def test_a_kpi_whose_training_fails_is_reported_and_the_others_train_and_score(engine, monkeypatch):
    fail_for(monkeypatch, "_train_history", "orders")
    cleaned, _ = pipeline.load_cleaned(engine)

    results = {r.kpi: r for r in pipeline.train_models(engine, cleaned, CONFIG)}
    pipeline.score_new_points(engine, pipeline.load_scoring_window(engine))

    assert results["orders"].status == "failed"
    assert results["orders"].detail == "RuntimeError: orders is broken"
    assert results["sessions"].status == "trained" and scored_kpis(engine) == {"sessions"}

    monkeypatch.undo()  # the next run tries it again
    retried = {r.kpi: r for r in pipeline.train_models(engine, cleaned, CONFIG)}
    assert retried["orders"].status == "trained"


def test_a_kpi_whose_scoring_fails_keeps_its_points_for_the_next_run(engine, monkeypatch):
    cleaned, _ = pipeline.load_cleaned(engine)
    pipeline.train_models(engine, cleaned, CONFIG)
    fail_for(monkeypatch, "detector_from_artifacts", "sessions", kpi_at=0)

    results = {r.kpi: r for r in pipeline.score_new_points(engine, pipeline.load_scoring_window(engine))}

    assert results["sessions"].error == "RuntimeError: sessions is broken"
    assert results["sessions"].unscored == 240 and scored_kpis(engine) == {"orders"}
    monkeypatch.undo()
    pipeline.score_new_points(engine, pipeline.load_scoring_window(engine))
    assert scored_kpis(engine) == {"orders", "sessions"}


def test_backfill_goes_on_past_a_failing_kpi(engine, monkeypatch):
    fail_for(monkeypatch, "detector_from_artifacts", "orders", kpi_at=0)
    results = {r.kpi: r for r in pipeline.backfill(engine, CONFIG, START + 150 * HOUR, START + 239 * HOUR)}
    assert results["orders"].error and results["sessions"].scored == 90
    assert scored_kpis(engine) == {"sessions"}


def test_a_materialisation_succeeds_and_a_per_kpi_check_names_the_failure(engine, sqlite_url, monkeypatch):
    fail_for(monkeypatch, "_train_history", "orders")
    result = dg.materialize(ASSETS, resources={"store": KpiStore(database_url=sqlite_url)}, tags=every_shard_tags())

    assert result.success
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_kpi_trained_without_error"]
    assert not check.passed
    assert check.metadata["failures"].value == {"orders": "RuntimeError: orders is broken"}
    scoring = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_kpi_scored_without_error"]
    assert scoring[0].passed and scored_kpis(engine) == {"sessions"}


def test_run_completes_the_other_kpis_and_names_the_failed_one(engine, sqlite_url, monkeypatch):
    fail_for(monkeypatch, "_train_history", "sessions")
    result = CliRunner().invoke(app, ["--database-url", sqlite_url, "run"])
    assert result.exit_code == 0, result.output
    assert "failed: sessions: RuntimeError: sessions is broken" in result.output
    assert scored_kpis(engine) == {"orders"}


def test_status_shows_a_failing_kpi_with_its_reason_until_it_succeeds(engine, sqlite_url, monkeypatch):
    runner_ = CliRunner()
    with monkeypatch.context() as patch:
        fail_for(patch, "_train_history", "sessions")
        assert runner_.invoke(app, ["--database-url", sqlite_url, "run"]).exit_code == 0

    failing = runner_.invoke(app, ["--database-url", sqlite_url, "status", "--check"])
    assert failing.exit_code == 2, failing.output
    assert "sessions" in failing.output and "RuntimeError: sessions is broken" in failing.output
    assert "1 ok, 0 behind, 0 no model, 1 failing of 2 KPIs" in failing.output
    [row] = store.load_kpi_failures(engine).itertuples(index=False)
    assert (row.kpi, row.stage, row.attempts) == ("sessions", "training", 1)

    # The fit works again: the next run trains it and the failure is gone.
    assert runner_.invoke(app, ["--database-url", sqlite_url, "run"]).exit_code == 0
    healthy = runner_.invoke(app, ["--database-url", sqlite_url, "status", "--check", "--format", "json"])
    assert healthy.exit_code == 0, healthy.output
    states = {row["kpi"]: row["state"] for row in json.loads(healthy.output)}
    assert states == {"orders": "ok", "sessions": "ok"}
    assert store.load_kpi_failures(engine).empty


def test_kpi_outcomes_count_attempts_keep_the_first_failure_and_clear_on_success(engine):
    first, second = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-02", tz="UTC")
    store.record_kpi_outcomes(engine, "scoring", {"orders": "boom"}, ["orders", "sessions"], at=first)
    store.record_kpi_outcomes(engine, "scoring", {"orders": "boom"}, ["orders"], at=first)
    store.record_kpi_outcomes(engine, "scoring", {"orders": "bang"}, ["orders"], at=second)
    [row] = store.load_kpi_failures(engine).itertuples(index=False)
    assert (row.reason, row.attempts, row.failing_since, row.last_failed_at) == ("bang", 2, first, second)

    store.record_kpi_outcomes(engine, "training", {}, ["orders"])  # another stage: no effect
    assert len(store.load_kpi_failures(engine)) == 1
    store.record_kpi_outcomes(engine, "scoring", {}, ["orders"])
    assert store.load_kpi_failures(engine).empty
    with pytest.raises(ValueError, match="unknown stage"):
        store.record_kpi_outcomes(engine, "cleaning", {}, [])


def test_evaluate_reports_a_failed_series_and_writes_its_summary(tmp_path, monkeypatch):
    observations = hourly_kpis(days=12)
    (tmp_path / "kpis.csv").write_text(to_wide_csv(observations))
    pd.DataFrame(
        {"kpi": ["orders"], "start": [(START + 250 * HOUR).isoformat()], "end": [(START + 251 * HOUR).isoformat()]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    real = runner.stream_scores

    def broken(ts, values, **kwargs):
        if kwargs["kpi"] == "orders":
            raise ValueError("zero-size array")
        return real(ts, values, **kwargs)

    monkeypatch.setattr(runner, "stream_scores", broken)  # forked workers inherit it
    summary = runner.evaluate_dataset(
        tmp_path / "kpis.csv", tmp_path / "labels.csv", tmp_path / "out", workers=1, progress=lambda _: None
    )

    assert summary["failed"] == {"orders": "ValueError: zero-size array"}
    assert summary["events"]["fn_events"] == 1  # its window counts as missed
    assert (tmp_path / "out" / "sessions.csv").is_file()
    assert "FAILED: orders" in (tmp_path / "out" / "summary.md").read_text()


# -- a minute-level KPI with a multi-day outage ------------------------------------------------

MINUTE = pd.Timedelta(minutes=1)
DAY = pd.Timedelta(days=1)
OUTAGE = (START + 3 * DAY, START + 5.5 * DAY)  # no rows at all
SPIKE_AT = START + 6.25 * DAY


def rpm(kpi: str, days: float, seed: int) -> pd.DataFrame:
    ts = pd.date_range(START, START + days * DAY, freq="min", inclusive="left")
    minutes = (ts - START) / MINUTE
    rng = np.random.default_rng(seed)
    rate = 200 * (1 + 0.4 * np.sin(2 * np.pi * minutes / 1440))
    return pd.DataFrame({"kpi": kpi, "ts": ts, "value": rng.poisson(rate).astype(float)})


@pytest.fixture(scope="module")
def minute_csv(tmp_path_factory):
    checkout = rpm("checkout_rpm", 7, seed=2)
    checkout = checkout[(checkout["ts"] < OUTAGE[0]) | (checkout["ts"] >= OUTAGE[1])].copy()
    checkout.loc[checkout["ts"] == SPIKE_AT, "value"] *= 4
    rows = pd.concat([rpm("healthy_rpm", 7, seed=1), checkout])
    path = tmp_path_factory.mktemp("minute") / "kpi.csv"
    rows.assign(timestamp=rows["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))[["kpi", "timestamp", "value"]].to_csv(
        path, index=False
    )
    return path


def assert_outage_is_one_event_and_the_spike_is_caught(engine) -> None:
    scores = store.load_scores(engine)
    healthy = scores[scores["kpi"] == "healthy_rpm"]
    assert len(healthy) > 0.85 * 7 * 1440  # all but the first model's training points
    checkout = scores[scores["kpi"] == "checkout_rpm"].set_index("ts")
    spike = checkout.loc[SPIKE_AT]
    assert spike["is_anomaly"] and spike["severity"] in ("high", "critical")
    during = checkout[(checkout.index >= OUTAGE[0]) & (checkout.index < OUTAGE[1])]
    assert len(during) == (OUTAGE[1] - OUTAGE[0]) / MINUTE  # every missing slot accounted for
    flagged = during[during["is_anomaly"]]
    assert list(flagged.index) == [OUTAGE[0]] and flagged["flagged_by"].iloc[0] == "gap"
    assert flagged["severity"].iloc[0] == "high"


def test_a_minute_level_outage_through_the_cli(minute_csv, sqlite_url):
    runner_ = CliRunner()
    for command in (["init"], ["ingest", str(minute_csv)], ["run"]):
        result = runner_.invoke(app, ["--database-url", sqlite_url, *command])
        assert result.exit_code == 0, result.output
    assert "outages (data missing): 1" in result.output
    engine = pipeline.open_store(sqlite_url)
    try:
        assert_outage_is_one_event_and_the_spike_is_caught(engine)
    finally:
        engine.dispose()
    # The outage as one event with its start, end and missing points; the healthy KPI has none.
    # Judged when the data ends (the default, now, is long after: see below).
    last = (START + 7 * DAY - MINUTE).isoformat()
    listed = runner_.invoke(app, ["--database-url", sqlite_url, "outages", "--format", "json", "--as-of", last])
    assert listed.exit_code == 0, listed.output
    [outage] = json.loads(listed.output)
    missing = int((OUTAGE[1] - OUTAGE[0]) / MINUTE)
    assert (outage["kpi"], outage["missing_points"], outage["ongoing"]) == ("checkout_rpm", missing, False)
    assert pd.Timestamp(outage["start"]) == OUTAGE[0]
    assert pd.Timestamp(outage["end"]) == OUTAGE[1] - MINUTE
    table = runner_.invoke(app, ["--database-url", sqlite_url, "outages", "--kpi", "healthy_rpm", "--as-of", last])
    assert table.exit_code == 0 and "no outages found" in table.output
    # Four minutes without a point make an ongoing outage, counted up to the time judged.
    later = (START + 7 * DAY + 3 * MINUTE).isoformat()
    ongoing = runner_.invoke(app, ["--database-url", sqlite_url, "outages", "--kpi", "healthy_rpm", "--as-of", later])
    assert ongoing.exit_code == 0 and "ongoing" in ongoing.output and "4 so far" in ongoing.output, ongoing.output
    now = runner_.invoke(app, ["--database-url", sqlite_url, "outages", "--format", "json"])
    by_kpi = {row["kpi"]: row for row in json.loads(now.output) if row["ongoing"]}
    assert sorted(by_kpi) == ["checkout_rpm", "healthy_rpm"]  # neither has reported since
    assert by_kpi["healthy_rpm"]["end"] is None
    assert pd.Timestamp(by_kpi["healthy_rpm"]["start"]) == START + 7 * DAY


def test_a_minute_level_outage_through_a_materialisation(minute_csv, sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    try:
        pipeline.store_ingested(engine, read_observations_csv(minute_csv), source="test")
        result = dg.materialize(ASSETS, resources={"store": KpiStore(database_url=sqlite_url)}, tags=every_shard_tags())
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
        assert_outage_is_one_event_and_the_spike_is_caught(engine)
    finally:
        engine.dispose()
