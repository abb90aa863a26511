"""Training and scoring steps on a real database with small synthetic series."""

import pandas as pd
import pytest

from kpi_pipeline import pipeline, store
from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis

CONFIG = DetectorConfig()
HOUR = pd.Timedelta(hours=1)


@pytest.fixture
def engine(pg_url):
    engine = pipeline.open_store(pg_url)
    yield engine
    engine.dispose()


def _train_and_score(engine):
    cleaned, _ = pipeline.load_cleaned(engine)
    trained = pipeline.train_models(engine, cleaned, CONFIG)
    return trained, pipeline.score_new_points(engine, cleaned)


def _version(ts: pd.Timestamp) -> str:
    return ts.strftime(pipeline.VERSION_FORMAT)


def test_new_kpi_gets_walk_forward_versions(engine):
    # 1000 hourly points: the first model learns 150 (15%), then one more every 288 points.
    store.upsert_observations(engine, hourly_kpis(days=1000 // 24 + 1).head(1000), "test")
    cleaned, _ = pipeline.load_cleaned(engine)

    trained = pipeline.train_models(engine, cleaned, CONFIG)

    expected = tuple(_version(START + (end - 1) * HOUR) for end in (150, 438, 726))
    assert [(r.kpi, r.status, r.versions) for r in trained] == [("orders", "trained", expected)]
    for kind in ("prophet", "iforest", "ensemble"):
        versions = store.load_model_versions(engine, "orders", kind)
        assert [m.version for m in versions] == list(expected)
        assert all(m.artifact for m in versions)
    assert [m.n_points for m in versions] == [150, 438, 726]


def test_retraining_waits_for_new_scored_points_and_is_idempotent(engine):
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    cleaned, _ = pipeline.load_cleaned(engine)
    walk_forward = pipeline.train_models(engine, cleaned, CONFIG)
    assert {r.versions for r in walk_forward} == {(_version(START + 47 * HOUR),)}
    counts = store.table_counts(engine)

    # Nothing scored yet beyond the first model: nothing to retrain on.
    assert {r.status for r in pipeline.train_models(engine, cleaned, CONFIG)} == {"up to date"}
    assert store.table_counts(engine) == counts

    pipeline.score_new_points(engine, cleaned)
    nightly = pipeline.train_models(engine, cleaned, CONFIG)
    assert {r.versions for r in nightly} == {(_version(START + 239 * HOUR),)}
    counts = store.table_counts(engine)
    assert {r.status for r in pipeline.train_models(engine, cleaned, CONFIG)} == {"up to date"}
    assert store.table_counts(engine) == counts


def test_short_kpi_is_reported_as_insufficient_history_and_others_still_train(engine):
    short = pd.DataFrame(
        {"kpi": "signups", "ts": pd.date_range(START, periods=10, freq="h"), "value": 1.0}
    )
    store.upsert_observations(engine, pd.concat([hourly_kpis(days=3), short]), "test")

    trained, scored = _train_and_score(engine)

    status = {r.kpi: r.status for r in trained}
    assert status == {"orders": "trained", "sessions": "trained", "signups": "insufficient history"}
    signups = next(r for r in scored if r.kpi == "signups")
    assert (signups.scored, signups.unscored) == (0, 10)


def test_points_are_scored_only_by_models_trained_before_them(engine):
    spike = START + 200 * HOUR
    store.upsert_observations(engine, hourly_kpis(days=10, spike_at=spike), "test")

    _, scored = _train_and_score(engine)

    assert [(r.kpi, r.scored, r.unscored) for r in scored] == [
        ("orders", 192, 48),
        ("sessions", 192, 48),
    ]
    scores = store.load_scores(engine, ["orders"])
    models = store.load_model_versions(engine, "orders", "ensemble")
    train_end = {m.version: m.train_end for m in models}
    assert (scores["model_version"].map(train_end) < scores["ts"]).all()
    assert scores["ts"].min() == START + 48 * HOUR
    flagged = scores.loc[scores["score"].idxmax()]
    assert flagged["ts"] == spike and flagged["is_anomaly"]
    assert flagged["event_id"] == f"orders@{spike.isoformat()}"


def test_rescoring_without_new_points_writes_nothing(engine):
    store.upsert_observations(engine, hourly_kpis(days=4), "test")
    _train_and_score(engine)
    before = store.load_scores(engine)

    cleaned, _ = pipeline.load_cleaned(engine)
    again = pipeline.score_new_points(engine, cleaned)

    assert [(r.scored, r.unscored) for r in again] == [(0, 0), (0, 0)]
    pd.testing.assert_frame_equal(store.load_scores(engine), before)


def test_an_event_open_at_the_end_of_a_batch_continues_into_the_next(engine):
    last_of_batch = START + 239 * HOUR
    first_batch = hourly_kpis(days=10, spike_at=last_of_batch)
    store.upsert_observations(engine, first_batch, "test")
    _train_and_score(engine)
    opened = store.load_scores(engine, ["orders"], since=last_of_batch)
    assert opened["is_anomaly"].tolist() == [True]

    next_hour = last_of_batch + HOUR
    extended = hourly_kpis(days=11, spike_at=next_hour)
    store.upsert_observations(engine, extended[extended["ts"] > last_of_batch], "test")
    trained, scored = _train_and_score(engine)

    # The retrain learnt from the first batch without its flagged spike, so it still sees the
    # second one as an anomaly.
    assert {r.versions for r in trained} == {(_version(last_of_batch),)}
    assert [r.scored for r in scored] == [24, 24]
    continued = store.load_scores(engine, ["orders"], since=next_hour, until=next_hour)
    assert continued["is_anomaly"].tolist() == [True]
    assert continued["event_id"].tolist() == opened["event_id"].tolist()
    assert continued["model_version"].tolist() == [_version(last_of_batch)]


def test_training_skips_confident_anomalies_and_confirmed_incidents(migrated_engine):
    ts = pd.date_range(START, periods=5, freq="h")
    store.upsert_scores(
        migrated_engine,
        pd.DataFrame(
            {
                "kpi": "orders",
                "ts": ts,
                "is_anomaly": True,
                "severity": ["low", "medium", "high", "critical", "high"],
            }
        ),
    )
    store.set_feedback(migrated_engine, "orders", ts[0], "true_positive")
    store.set_feedback(migrated_engine, "orders", ts[4], "false_positive")

    excluded = pipeline.training_exclusions(migrated_engine)

    assert list(excluded) == ["orders"]
    assert sorted(excluded["orders"]) == [ts[0], ts[2], ts[3]]
