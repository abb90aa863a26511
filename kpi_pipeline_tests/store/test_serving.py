"""The API's read queries (kpi_pipeline/store/serving.py), on Postgres and SQLite."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.store import (
    load_latest_models,
    save_model,
    set_feedback,
    upsert_observations,
    upsert_scores,
)
from kpi_pipeline.store import serving
from kpi_pipeline.store.database import write_transaction
from kpi_pipeline.store.schema import anomaly_scores

T0 = pd.Timestamp("2025-05-01", tz="UTC")
HOUR = pd.Timedelta(hours=1)


def at(hour: int) -> pd.Timestamp:
    return T0 + hour * HOUR


def observe(engine, kpi: str, hours: range, value: float = 1.0) -> None:
    frame = pd.DataFrame({"kpi": kpi, "ts": [at(h) for h in hours], "value": value})
    upsert_observations(engine, frame, "test")


def score(engine, kpi: str, rows: list[tuple[int, bool, str | None]]) -> None:
    """Scores from (hour, is_anomaly, severity); the value is the hour."""
    upsert_scores(
        engine,
        pd.DataFrame(
            {
                "kpi": kpi,
                "ts": [at(hour) for hour, _, _ in rows],
                "value": [float(hour) for hour, _, _ in rows],
                "expected": 1.0,
                "score": [0.9 if anomalous else 0.1 for _, anomalous, _ in rows],
                "is_anomaly": [anomalous for _, anomalous, _ in rows],
                "severity": [severity for *_, severity in rows],
                "model_version": "v1",
            }
        ),
    )


def model(engine, kpi: str, kind: str, version: str, train_end: int | None, trained_at: str = "2025-06-01") -> None:
    save_model(
        engine,
        kpi=kpi,
        kind=kind,
        version=version,
        trained_at=trained_at,
        train_start=None,
        train_end=None if train_end is None else at(train_end),
        n_points=10,
        params={},
        metrics={},
        artifact=f"{kind}:{version}".encode(),
    )


def test_latest_scores_are_each_kpis_newest_point(migrated_engine):
    score(migrated_engine, "sales", [(0, False, None), (5, True, "high"), (3, False, None)])
    score(migrated_engine, "orders", [(1, False, None)])

    everything = serving.latest_scores(migrated_engine)
    some = serving.latest_scores(migrated_engine, ["sales", "unknown"])

    assert [(row["kpi"], row["ts"], row["value"]) for row in everything] == [
        ("orders", at(1), 1.0),
        ("sales", at(5), 5.0),
    ]
    assert set(everything[1]) == {"kpi", *serving.SERVED_SCORE_COLUMNS, "scored_at"}
    assert everything[1]["is_anomaly"] is True and everything[1]["severity"] == "high"
    assert [row["kpi"] for row in some] == ["sales"]
    assert serving.latest_scores(migrated_engine, []) == []


def test_score_freshness_of_an_empty_and_a_scored_database(migrated_engine):
    assert serving.score_freshness(migrated_engine) == serving.ScoreFreshness(0, None, None)

    score(migrated_engine, "sales", [(0, False, None), (7, False, None)])
    score(migrated_engine, "orders", [(2, False, None)])
    freshness = serving.score_freshness(migrated_engine)

    assert (freshness.kpis, freshness.latest_ts) == (2, at(7))
    assert freshness.latest_scored_at is not None
    assert freshness.latest_scored_at.tzinfo is not None


def test_kpi_overview_joins_newest_observation_score_and_model(migrated_engine):
    observe(migrated_engine, "sales", range(0, 10), value=3.0)
    observe(migrated_engine, "orders", range(0, 4))
    score(migrated_engine, "sales", [(6, False, None), (8, True, "critical")])
    model(migrated_engine, "sales", "ensemble", "late", train_end=5, trained_at="2025-06-01")
    model(migrated_engine, "sales", "ensemble", "early", train_end=2, trained_at="2025-06-02")
    model(migrated_engine, "sales", "prophet", "other-kind", train_end=9)

    sales, orders = sorted(serving.kpi_overview(migrated_engine), key=lambda r: r["kpi"], reverse=True)

    assert (sales["kpi"], sales["observed_ts"], sales["observed_value"]) == ("sales", at(9), 3.0)
    assert (sales["score_ts"], sales["score_value"], sales["is_anomaly"]) == (at(8), 8.0, True)
    assert sales["severity"] == "critical"
    # Newest by training cutoff, like load_latest_models, and only ensemble rows.
    assert (sales["model_version"], sales["train_end"]) == ("late", at(5))
    assert orders["observed_ts"] == at(3)
    assert orders["score_ts"] is orders["model_version"] is orders["is_anomaly"] is None


def test_score_series_window_limit_and_truncation(migrated_engine):
    score(migrated_engine, "sales", [(hour, False, None) for hour in range(10)])
    score(migrated_engine, "orders", [(4, False, None)])

    everything, cut = serving.score_series(migrated_engine, "sales")
    window, window_cut = serving.score_series(migrated_engine, "sales", at(2), at(5))
    newest, newest_cut = serving.score_series(migrated_engine, "sales", at(2), at(5), limit=3)
    exact, exact_cut = serving.score_series(migrated_engine, "sales", at(2), at(5), limit=4)

    assert [row["ts"] for row in everything] == [at(h) for h in range(10)] and not cut
    assert [row["value"] for row in window] == [2.0, 3.0, 4.0, 5.0] and not window_cut
    assert [row["value"] for row in newest] == [3.0, 4.0, 5.0] and newest_cut
    assert len(exact) == 4 and not exact_cut
    assert serving.score_series(migrated_engine, "nope") == ([], False)


def test_anomaly_pages_are_newest_first_with_stable_ties(migrated_engine):
    # Three KPIs anomalous at the same hour: the key (ts, kpi) orders them.
    for kpi in ("a", "b", "c"):
        score(migrated_engine, kpi, [(1, True, "low"), (2, False, None), (3, True, "high")])
    set_feedback(migrated_engine, "b", at(3), "false_positive", note="known")

    pages, after = [], None
    while True:
        rows, after = serving.anomaly_page(migrated_engine, limit=4, after=after)
        pages.append([(row["kpi"], row["ts"]) for row in rows])
        if after is None:
            break

    assert pages == [
        [("c", at(3)), ("b", at(3)), ("a", at(3)), ("c", at(1))],
        [("b", at(1)), ("a", at(1))],
    ]
    first, _ = serving.anomaly_page(migrated_engine, limit=2)
    assert (first[1]["feedback"], first[1]["feedback_note"]) == ("false_positive", "known")
    assert set(first[0]) == set(serving.ANOMALY_COLUMNS)


def test_anomaly_page_filters(migrated_engine):
    score(migrated_engine, "a", [(1, True, "low"), (2, True, "medium"), (3, True, None)])
    score(migrated_engine, "b", [(2, True, "critical")])

    def keys(**filters):
        rows, _ = serving.anomaly_page(migrated_engine, **filters)
        return [(row["kpi"], row["ts"]) for row in rows]

    assert keys(kpis=["a"]) == [("a", at(3)), ("a", at(2)), ("a", at(1))]
    assert keys(min_severity="medium") == [("b", at(2)), ("a", at(2))]
    assert keys(since=at(2), until=at(2)) == [("b", at(2)), ("a", at(2))]
    assert keys(kpis=["a"], after=(at(2), "a")) == [("a", at(1))]
    with pytest.raises(ValueError, match="min_severity"):
        serving.anomaly_page(migrated_engine, min_severity="severe")


def test_the_observation_watermark_moves_with_every_new_or_changed_row_from_since_on(
    migrated_engine,
):
    observe(migrated_engine, "sales", range(0, 10))
    observe(migrated_engine, "orders", range(0, 20))

    def watermark(since=None) -> serving.ObservationWatermark:
        return serving.observation_watermark(migrated_engine, "sales", since)

    whole, recent = watermark(), watermark(at(6))
    assert (whole.first_ts, whole.rows, whole.last_ts) == (at(0), 10, at(9))
    assert (recent.first_ts, recent.rows, recent.last_ts) == (at(0), 4, at(9))
    assert recent.last_ingested_at is not None
    empty = serving.observation_watermark(migrated_engine, "nope")
    assert (empty.first_ts, empty.rows, empty.last_ts, empty.last_ingested_at) == (None, 0, None, None)

    observe(migrated_engine, "sales", range(2, 3), value=5.0)  # before since: not seen
    assert watermark(at(6)) == recent
    observe(migrated_engine, "sales", range(7, 8), value=5.0)  # a corrected value
    corrected = watermark(at(6))
    assert corrected.rows == 4 and corrected.last_ingested_at > recent.last_ingested_at
    observe(migrated_engine, "sales", range(10, 11))  # a new point
    assert watermark(at(6)).last_ts == at(10)
    observe(migrated_engine, "sales", range(-1, 0))  # older history moves the grid origin
    assert watermark(at(6)).first_ts == at(-1)


def test_a_kpi_exists_once_it_has_an_observation_a_score_or_a_model(migrated_engine):
    observe(migrated_engine, "observed", range(2))
    score(migrated_engine, "scored", [(0, False, None)])
    model(migrated_engine, "modelled", "ensemble", "v1", train_end=1)

    assert all(serving.kpi_exists(migrated_engine, kpi) for kpi in ("observed", "scored", "modelled"))
    assert not serving.kpi_exists(migrated_engine, "nope")


def test_ping_reaches_the_database(migrated_engine):
    serving.ping(migrated_engine)


def test_the_per_request_reads_match_sqlalchemys_and_leave_connections_transactional(
    migrated_engine,
):
    score(migrated_engine, "sales", [(hour, hour == 3, "high" if hour == 3 else None) for hour in range(6)])
    observe(migrated_engine, "sales", range(6))

    fast = serving.score_series(migrated_engine, "sales", limit=4)[0][::-1]
    plain = serving._rows(migrated_engine, serving._SCORE_SERIES, kpi="sales", start=at(-100), end=at(100), limit=4)
    assert fast == plain and fast[0]["ts"].utcoffset() == pd.Timedelta(0)
    assert serving.latest_scores(migrated_engine) == serving._rows(migrated_engine, serving._LATEST_SCORES)

    # The connection the fast path used goes back to the pool as it came: in a transaction
    # that a failure rolls back, not in autocommit mode. (An empty pool, so that the write
    # gets the connection of the read.)
    migrated_engine.dispose()
    serving.score_series(migrated_engine, "sales")
    with pytest.raises(RuntimeError):
        with write_transaction(migrated_engine) as connection:
            connection.execute(sa.delete(anomaly_scores))
            raise RuntimeError("abort")
    assert len(serving.score_series(migrated_engine, "sales")[0]) == 6


def test_the_newest_model_version_is_the_one_load_latest_models_loads(migrated_engine):
    model(migrated_engine, "sales", "ensemble", "late", train_end=5, trained_at="2025-06-01")
    model(migrated_engine, "sales", "ensemble", "early", train_end=2, trained_at="2025-06-02")
    model(migrated_engine, "sales", "ensemble", "undated", train_end=None, trained_at="2025-07-01")
    model(migrated_engine, "sales", "prophet", "other-kind", train_end=9)
    model(migrated_engine, "orders", "ensemble", "b", train_end=5, trained_at="2025-06-01")
    model(migrated_engine, "orders", "ensemble", "a", train_end=5, trained_at="2025-06-02")

    loaded = load_latest_models(migrated_engine, "ensemble")
    assert serving.newest_model_version(migrated_engine, "sales") == loaded["sales"].version
    assert loaded["sales"].version == "late"
    assert serving.newest_model_version(migrated_engine, "orders") == loaded["orders"].version
    assert loaded["orders"].version == "a"
    assert serving.newest_model_version(migrated_engine, "nope") is None
