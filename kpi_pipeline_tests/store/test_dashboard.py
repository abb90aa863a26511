"""The dashboard's read queries (kpi_pipeline/store/dashboard.py), on both databases."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.store import dashboard as store_dashboard

END = pd.Timestamp("2025-06-30 23:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)


def hourly(kpi: str, hours: int, anomalies: dict[int, str] | None = None, end: pd.Timestamp = END) -> pd.DataFrame:
    """``hours`` hourly scores of ``kpi`` ending at ``end``; ``anomalies`` maps hours before
    ``end`` to a severity."""
    ts = pd.date_range(end=end, periods=hours, freq="h")
    frame = pd.DataFrame(
        {
            "kpi": kpi,
            "ts": ts,
            "value": np.arange(hours, dtype=float) + 1,
            "expected": 10.0,
            "lower": 8.0,
            "upper": 12.0,
            "score": 0.1,
            "is_anomaly": False,
            "severity": None,
            "model_version": "v1",
        }
    )
    for before, severity in (anomalies or {}).items():
        at = hours - 1 - before
        frame.loc[at, ["is_anomaly", "severity", "score"]] = [True, severity, 0.75]
    return frame


@pytest.fixture
def engine(migrated_engine):
    """sales: critical now; orders: high 30 h ago; refunds: low 10 days ago; quiet: none;
    fresh: observed, never scored."""
    store.upsert_scores(
        migrated_engine,
        pd.concat(
            [
                hourly("sales", 24 * 14, {0: "critical", 23: "low"}),
                hourly("orders", 24 * 14, {30: "high", 24 * 6: "medium"}),
                hourly("refunds", 24 * 14, {24 * 10: "low"}),
                hourly("quiet", 24 * 14),
            ]
        ),
    )
    store.upsert_observations(migrated_engine, pd.DataFrame({"kpi": "fresh", "ts": [END - HOUR], "value": [1.0]}), "t")
    return migrated_engine


def test_kpi_names_cover_scored_and_observed_kpis(engine):
    assert store.list_kpi_names(engine) == ["fresh", "orders", "quiet", "refunds", "sales"]
    assert store.list_kpi_names(engine, "OR") == ["orders"]


def test_search_matches_wildcard_characters_literally(migrated_engine):
    store.upsert_scores(
        migrated_engine, pd.concat([hourly("conv_rate", 2), hourly("convXrate", 2), hourly("100%_ok", 2)])
    )
    assert store.list_kpi_names(migrated_engine, "v_r") == ["conv_rate"]
    assert store.list_kpi_names(migrated_engine, "%") == ["100%_ok"]
    assert store.kpi_overview(migrated_engine, search="v_r").total == 1


def test_overview_reads_each_kpis_newest_point_and_recent_counts(engine):
    page = store.kpi_overview(engine)

    assert page.as_of == END and page.total == 5
    rows = page.rows.set_index("kpi")
    assert rows.loc["sales", ["is_anomaly", "severity"]].tolist() == [True, "critical"]
    assert rows.loc["sales", "value"] == 24 * 14 and rows.loc["sales", "ts"] == END
    assert rows.loc["sales", ["anomalies_24h", "anomalies_7d"]].tolist() == [2, 2]
    assert rows.loc["orders", ["anomalies_24h", "anomalies_7d"]].tolist() == [0, 2]
    assert rows.loc["orders", "last_anomaly"] == END - 30 * HOUR
    assert rows.loc["refunds", ["anomalies_24h", "anomalies_7d"]].tolist() == [0, 0]
    assert pd.isna(rows.loc["refunds", "last_anomaly"])  # older than the 7-day window
    assert not rows.loc["quiet", "is_anomaly"] and pd.isna(rows.loc["quiet", "severity"])
    assert pd.isna(rows.loc["fresh", "ts"]) and rows.loc["fresh", "anomalies_7d"] == 0


def test_windows_end_at_as_of_and_exclude_their_start(engine):
    # Exactly 24 h before as_of is outside the last 24 h; a point after as_of is not counted.
    page = store.kpi_overview(engine, as_of=END - HOUR)
    rows = page.rows.set_index("kpi")
    assert rows.loc["sales", "anomalies_24h"] == 1  # 23 h before END is 22 h before as_of
    assert rows.loc["orders", "anomalies_24h"] == 0
    assert store.kpi_overview(engine, as_of=END + 23 * HOUR).rows.set_index("kpi").loc["sales", "anomalies_24h"] == 1


def test_overview_sorts(engine):
    orders = {sort: store.kpi_overview(engine, sort=sort).rows["kpi"].tolist() for sort in store.OVERVIEW_SORTS}
    assert orders == {
        # Anomalous now first (worst first), then by anomalies in 24 h and 7 d; unscored last.
        "severity": ["sales", "orders", "quiet", "refunds", "fresh"],
        # Newest anomaly in the last 7 days first; the rest by name.
        "recency": ["sales", "orders", "fresh", "quiet", "refunds"],
        "name": ["fresh", "orders", "quiet", "refunds", "sales"],
    }


def test_overview_pages_do_not_overlap(engine):
    pages = [store.kpi_overview(engine, page=n, page_size=2).rows["kpi"].tolist() for n in (1, 2, 3, 4)]
    assert pages == [["sales", "orders"], ["quiet", "refunds"], ["fresh"], []]
    with pytest.raises(ValueError, match="sort"):
        store.kpi_overview(engine, sort="size")


def test_overview_of_an_empty_database(migrated_engine):
    page = store.kpi_overview(migrated_engine)
    assert page.total == 0 and page.rows.empty and page.as_of is None
    assert store.data_as_of(migrated_engine) is None


def test_overview_of_a_thousand_kpis_stays_fast(migrated_engine):
    store.upsert_scores(
        migrated_engine,
        pd.concat([hourly(f"kpi_{n:04d}", 24, {0: "high"} if n % 10 == 0 else None) for n in range(1000)]),
    )
    started = time.perf_counter()
    page = store.kpi_overview(migrated_engine, page=3, page_size=50)
    lines = store.sparklines(migrated_engine, page.rows["kpi"].tolist(), END - 24 * HOUR, END)
    elapsed = time.perf_counter() - started

    assert page.total == 1000 and len(page.rows) == 50
    # Severity order: the 100 KPIs alerting now fill pages 1 and 2.
    assert page.rows["kpi"].iloc[0] == "kpi_0001" and not page.rows["is_anomaly"].any()
    assert all(len(line) == 24 for line in lines.values())
    assert elapsed < 5, f"overview page took {elapsed:.1f} s"


def test_sparklines_average_down_to_max_points(engine):
    lines = store.sparklines(engine, ["sales", "missing"], END - 9 * HOUR, END, max_points=5)
    # The last 10 values 327..336 in five buckets of two.
    assert lines["sales"] == [327.5, 329.5, 331.5, 333.5, 335.5]
    assert lines["missing"] == []


def test_series_joins_feedback_and_keeps_unscored_observations(engine):
    store.set_feedback(engine, "orders", END - 30 * HOUR, "false_positive")
    store.upsert_observations(
        engine,
        pd.DataFrame({"kpi": "orders", "ts": [END + HOUR], "value": [99.0]}),
        "late",
    )
    series = store.kpi_series(engine, "orders", since=END - 31 * HOUR)

    assert series["ts"].tolist() == list(pd.date_range(END - 31 * HOUR, END + HOUR, freq="h"))
    assert series.set_index("ts").loc[END - 30 * HOUR, "feedback"] == "false_positive"
    newest = series.iloc[-1]
    assert newest["value"] == 99.0 and pd.isna(newest["expected"]) and not newest["is_anomaly"]
    assert store.kpi_series(engine, "fresh")["value"].tolist() == [1.0]
    assert store.kpi_series(engine, "nobody").empty


def test_time_range_spans_observations_and_scores(engine):
    store.upsert_observations(engine, pd.DataFrame({"kpi": "sales", "ts": [END + HOUR], "value": [1.0]}), "late")
    assert store.kpi_time_range(engine, "sales") == (END - (24 * 14 - 1) * HOUR, END + HOUR)
    assert store.kpi_time_range(engine, "fresh") == (END - HOUR, END - HOUR)
    assert store.kpi_time_range(engine, "nobody") is None


def test_severity_counts_by_window_and_by_write_time(engine):
    assert store.severity_counts(engine) == {"low": 2, "medium": 1, "high": 1, "critical": 1}
    assert store.severity_counts(engine, since=END - 24 * HOUR, until=END) == {
        "low": 1,
        "medium": 0,
        "high": 0,
        "critical": 1,
    }
    later = pd.Timestamp.now("UTC") + pd.Timedelta(minutes=1)
    store.upsert_scores(engine, hourly("late", 2, {0: "high"}).assign(scored_at=later))
    assert store.severity_counts(engine, scored_since=later) == {"low": 0, "medium": 0, "high": 1, "critical": 0}


def test_newest_anomalies(engine):
    newest = store.newest_anomalies(engine, limit=2)
    assert newest[["kpi", "ts"]].values.tolist() == [["sales", END], ["sales", END - 23 * HOUR]]
    assert "feedback" in newest


def test_relative_deviation():
    off = store_dashboard.relative_deviation(pd.Series([15.0, -5.0, 1.0, np.nan]), pd.Series([10.0, -10.0, 0.0, 1.0]))
    assert off.tolist()[:2] == [0.5, 0.5]
    assert off.isna().tolist()[2:] == [True, True]


def test_model_versions_and_artifacts(migrated_engine):
    for version, end, scale in (("v1", "2025-01-10", 0.5), ("v2", "2025-01-20", 0.4)):
        for kind in ("prophet", "ensemble"):
            store.save_model(
                migrated_engine,
                kpi="sales",
                kind=kind,
                version=version,
                trained_at=pd.Timestamp("2025-02-01", tz="UTC"),
                train_start="2025-01-01",
                train_end=end,
                n_points=100,
                params={},
                metrics={"n_points": 100, "residual_scale": scale},
                artifact=kind.encode(),
            )

    versions = store.model_versions(migrated_engine, "sales")
    assert versions["version"].tolist() == ["v2", "v1"]  # newest training cutoff first
    assert versions["residual_scale"].tolist() == [0.4, 0.5]
    assert "artifact" not in versions and versions["n_points"].tolist() == [100, 100]
    assert store.model_versions(migrated_engine, "orders").empty
    assert store.model_artifacts(migrated_engine, "sales", "v1") == {"prophet": b"prophet", "ensemble": b"ensemble"}
    assert store.model_artifacts(migrated_engine, "sales", "v9") == {}
