"""Asset checks (kpi_pipeline/defs/checks.py): data quality of ``cleaned_kpis``, and
``no_new_anomalies`` on ``anomaly_scores``, which fails only for news."""

import dagster as dg
import pandas as pd
import pytest

from kpi_pipeline import pipeline, store
from kpi_pipeline.alerts.policy import AlertPolicy
from kpi_pipeline.alerts.news import HISTORY
from kpi_pipeline.config import Settings
from kpi_pipeline.defs.assets import cleaned_kpis
from kpi_pipeline.defs.checks import DataQualityConfig, cleaned_kpis_quality
from kpi_pipeline.defs.resources import KpiStore, alert_resources
from kpi_pipeline_tests.alerts.databases import module_pg_engine, pg_engine  # noqa: F401
from kpi_pipeline_tests.defs.harness import Automation

HOUR = pd.Timedelta(hours=1)
NOW = pd.Timestamp.now("UTC").floor("h")


def _quality(url: str, observations: pd.DataFrame, **config) -> dict[str, dg.AssetCheckResult]:
    """Ingest ``observations``, materialize ``cleaned_kpis``, then evaluate its checks."""
    store.upsert_observations(pipeline.open_store(url), observations, "test")
    kpi_store = KpiStore(database_url=url)
    cleaned_kpis(store=kpi_store)
    results = cleaned_kpis_quality(store=kpi_store, config=DataQualityConfig(**config))
    return {result.check_name: result for result in results}


def _hourly(kpi: str, end: pd.Timestamp, hours: int = 48) -> pd.DataFrame:
    ts = pd.date_range(end=end, periods=hours, freq="h")
    return pd.DataFrame({"kpi": kpi, "ts": ts, "value": 100.0})


def test_fresh_complete_data_passes_every_quality_check(sqlite_url):
    observations = pd.concat([_hourly("orders", NOW), _hourly("sales", NOW - HOUR)])
    results = _quality(sqlite_url, observations)

    assert {name: r.passed for name, r in results.items()} == {
        "kpis_are_fresh": True,
        "kpis_have_no_duplicate_timestamps": True,
        "kpis_have_values": True,
    }
    assert results["kpis_have_values"].metadata["threshold"].value == 0.05


def test_a_kpi_silent_for_more_than_n_intervals_is_stale(sqlite_url):
    observations = pd.concat([_hourly("orders", NOW), _hourly("sales", NOW - 5 * HOUR)])
    results = _quality(sqlite_url, observations, stale_after_intervals=4)

    fresh = results["kpis_are_fresh"]
    assert not fresh.passed and fresh.severity == dg.AssetCheckSeverity.WARN
    assert fresh.metadata["stale_kpis"].value == ["sales"]
    assert fresh.metadata["threshold_intervals"].value == 4
    assert fresh.metadata["per_kpi"].value["sales"]["limit_hours"] == 4.0
    assert fresh.metadata["oldest_age_hours"].value >= 5


def test_two_observations_in_one_time_slot_are_duplicates(sqlite_url):
    observations = _hourly("orders", NOW)
    late_copy = observations.iloc[[10]].assign(ts=lambda f: f["ts"] + pd.Timedelta(seconds=30))

    results = _quality(sqlite_url, pd.concat([observations, late_copy]))
    result = results["kpis_have_no_duplicate_timestamps"]

    assert not result.passed
    assert result.metadata["duplicate_timestamps"].value == 1
    assert result.metadata["per_kpi"].value == {"orders": 1}


def test_recent_points_without_values_fail_values_present(sqlite_url):
    observations = _hourly("orders", NOW, hours=100)
    with_gap = observations.drop(index=range(80, 90))  # 10 of the last 20 points missing

    results = _quality(sqlite_url, with_gap, recent_points=20, max_missing_share=0.2)
    result = results["kpis_have_values"]

    assert not result.passed
    assert result.metadata["worst_missing_share"].value == 0.5
    assert result.metadata["kpis_failing"].value == ["orders"]


def test_missing_values_are_judged_for_the_kpis_the_run_cleaned(sqlite_url):
    with_gap = _hourly("orders", NOW - 2 * HOUR, hours=100).drop(index=range(80, 90))
    _quality(sqlite_url, pd.concat([with_gap, _hourly("sales", NOW - 2 * HOUR)]))

    # Only sales gets new points: orders' rows are as they were, and only sales is judged; the
    # freshness and duplicates of every KPI come from kpi_series.
    results = _quality(sqlite_url, _hourly("sales", NOW, hours=2), recent_points=20, max_missing_share=0.2)

    values = results["kpis_have_values"]
    assert values.passed and values.metadata["per_kpi"].value == {"sales": 0.0}
    assert results["kpis_are_fresh"].metadata["per_kpi"].value.keys() == {"orders", "sales"}
    assert results["kpis_have_no_duplicate_timestamps"].passed


def test_duplicates_are_counted_over_the_whole_history_from_kpi_series(sqlite_url):
    observations = _hourly("orders", NOW - HOUR)
    late_copy = observations.iloc[[3]].assign(ts=lambda f: f["ts"] + pd.Timedelta(seconds=30))
    _quality(sqlite_url, pd.concat([observations, late_copy]))

    results = _quality(sqlite_url, _hourly("orders", NOW, hours=1))  # a new point, no duplicate
    assert results["kpis_have_no_duplicate_timestamps"].metadata["per_kpi"].value == {"orders": 1}


# -- no_new_anomalies ---------------------------------------------------------------------


class AnomalyCheck:
    """Evaluates ``no_new_anomalies`` on scores the test writes, on a test instance."""

    def __init__(self, engine, instance: dg.DagsterInstance, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.engine = engine
        url = engine.url.render_as_string(hide_password=False)
        resources = {
            "store": KpiStore(database_url=url),
            **alert_resources(settings),
            "alert_policy": AlertPolicy(),
        }
        self.automation = Automation(instance, resources, settings)

    def score(self, kpi: str, hours: range, scored_at: pd.Timestamp, anomalies: dict[int, str]):
        """Scores of ``kpi`` at ``NOW - h`` for each h, anomalous with the given severities."""
        ts = [NOW - h * HOUR for h in hours]
        severity = [anomalies.get(h) for h in hours]
        store.upsert_scores(
            self.engine,
            pd.DataFrame(
                {
                    "kpi": kpi,
                    "ts": ts,
                    "value": 400.0,
                    "expected": 100.0,
                    "lower": 90.0,
                    "upper": 110.0,
                    "score": [0.8 if s else 0.1 for s in severity],
                    "is_anomaly": [s is not None for s in severity],
                    "severity": severity,
                    "flagged_by": "prophet",
                    "scored_at": scored_at,
                }
            ),
        )

    def run(self, tags: dict | None = None) -> dg.AssetCheckEvaluation:
        result = self.automation.run_job("anomaly_check_job", tags)
        return self.automation.check_result(result, "no_new_anomalies")

    @staticmethod
    def meta(evaluation: dg.AssetCheckEvaluation, key: str):
        return evaluation.metadata[key].value


@pytest.fixture
def check(pg_engine):
    with dg.instance_for_test() as instance:
        yield AnomalyCheck(pg_engine, instance)


def test_only_anomalies_scored_since_the_last_evaluation_fail_the_check(check):
    t1, t2, t3 = (NOW - HOUR * h for h in (30, 20, 10))
    # First scoring of the history: recorded, not news.
    check.score("orders", range(100, 40, -1), t1, {90: "critical", 60: "high"})
    first = check.run()
    assert first.passed and check.meta(first, "recorded_without_alert") == {HISTORY: 2}
    assert check.meta(first, "scored_until") == t1.isoformat()

    # New points of orders (news) and the first scoring of revenue (history).
    check.score("orders", range(40, 30, -1), t2, {35: "high", 33: "low"})
    check.score("revenue", range(40, 30, -1), t2, {34: "critical"})
    second = check.run()
    assert not second.passed and second.severity == dg.AssetCheckSeverity.ERROR
    assert check.meta(second, "new_anomalies") == 2 and check.meta(second, "threshold") == 0
    listed = check.meta(second, "anomalies")
    assert [(a["kpi"], a["ts"], a["severity"]) for a in listed] == [
        ("orders", (NOW - 35 * HOUR).isoformat(), "high"),
        ("orders", (NOW - 33 * HOUR).isoformat(), "low"),
    ]
    assert {
        "value": 400.0,
        "expected": 100.0,
        "lower": 90.0,
        "upper": 110.0,
        "score": 0.8,
        "flagged_by": "prophet",
    }.items() <= listed[0].items()
    assert check.meta(second, "recorded_without_alert") == {HISTORY: 1}
    assert "orders" in check.meta(second, "preview")

    # Nothing scored since: the check passes again.
    assert check.run().passed

    # Only low/medium news: a warning.
    check.score("orders", range(30, 25, -1), t3, {28: "medium"})
    warning = check.run()
    assert not warning.passed and warning.severity == dg.AssetCheckSeverity.WARN


def test_silent_runs_and_silences_record_anomalies_without_failing(check):
    check.score("orders", range(100, 40, -1), NOW - 30 * HOUR, {})
    check.run()
    check.score("orders", range(40, 30, -1), NOW - 20 * HOUR, {35: "high"})
    silent = check.run(tags={"kpi/alerts": "off"})
    assert silent.passed
    assert check.meta(silent, "recorded_without_alert") == {"run tagged kpi/alerts=off": 1}

    store.add_silence(check.engine, "ord*", NOW - 30 * HOUR, NOW, "maintenance")
    check.score("orders", range(30, 25, -1), NOW - 10 * HOUR, {28: "critical"})
    silenced = check.run()
    assert silenced.passed
    assert check.meta(silenced, "recorded_without_alert") == {"silenced: maintenance": 1}


def test_a_new_dagster_instance_alerts_news_once_and_history_never(pg_engine):
    """The previous evaluation is found in the store: a redeploy with fresh Dagster storage
    neither loses what was scored since nor alerts again what was judged before."""
    settings = Settings(slack_token="xoxb-test", slack_channel="#kpi")  # queued, never sent here
    t1, t2, t3 = (NOW - HOUR * h for h in (30, 20, 10))
    with dg.instance_for_test() as instance:
        check = AnomalyCheck(pg_engine, instance, settings)
        check.score("orders", range(100, 40, -1), t1, {90: "critical"})
        assert check.run().passed  # history
        check.score("orders", range(40, 30, -1), t2, {35: "high"})
        assert check.meta(check.run(), "new_anomalies") == 1
        check.score("orders", range(30, 20, -1), t3, {25: "critical"})  # not evaluated yet

    with dg.instance_for_test() as new_instance:
        check = AnomalyCheck(pg_engine, new_instance, settings)
        first = check.run()
        assert [a["ts"] for a in check.meta(first, "anomalies")] == [(NOW - 25 * HOUR).isoformat()]
        assert check.meta(first, "scored_after") == t2.isoformat()
        assert check.meta(first, "alerts_queued") == 1
        again = check.run()  # a retried or repeated evaluation
        assert again.passed and check.meta(again, "alerts_queued") == 0

    deliveries = store.load_deliveries(pg_engine)
    assert deliveries["ts"].tolist() == [NOW - 35 * HOUR, NOW - 25 * HOUR]
    assert set(deliveries["status"]) == {"pending"}
