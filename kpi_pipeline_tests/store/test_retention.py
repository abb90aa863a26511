"""Retention of observations and scores (kpi_pipeline/store/retention.py), Postgres and SQLite."""

from __future__ import annotations

import pandas as pd

from kpi_pipeline import store
from kpi_pipeline.store.retention import delete_old_observations, delete_old_scores

START = pd.Timestamp("2025-01-01", tz="UTC")
DAY = pd.Timedelta(days=1)
CUTOFF = START + 50 * DAY  # every row of the 60 days before this is old enough to go


def _seed(engine) -> None:
    ts = pd.date_range(START, periods=60, freq="D")
    for kpi in ("orders", "sessions"):
        store.upsert_observations(engine, pd.DataFrame({"kpi": kpi, "ts": ts, "value": 1.0}), "test")
    scores = pd.DataFrame({"kpi": "orders", "ts": ts, "is_anomaly": False, "event_id": None})
    # An anomaly event at days 5..6 and the newest one, at days 30..31, which may still be open.
    for first in (5, 30):
        scores.loc[first : first + 1, ["is_anomaly", "event_id"]] = [True, f"orders-{first}"]
    store.upsert_scores(engine, scores)
    # Two versions of orders' models; the older one was trained from day 40.
    for version, start, end in (("v1", 40, 45), ("v2", 42, 55)):
        store.save_model(
            engine,
            kpi="orders",
            kind="ensemble",
            version=version,
            trained_at=START,
            train_start=START + start * DAY,
            train_end=START + end * DAY,
            n_points=1,
            params={},
            metrics={},
            artifact=b"",
        )


def _days(frame: pd.DataFrame) -> list[int]:
    return sorted(int((ts - START) / DAY) for ts in frame["ts"])


def test_old_rows_go_but_training_windows_and_the_newest_event_stay(migrated_engine):
    _seed(migrated_engine)

    # Orders' newest event starts at day 30, before its oldest training window (day 40).
    assert delete_old_observations(migrated_engine, CUTOFF) == 30
    assert delete_old_scores(migrated_engine, CUTOFF) == 30

    observations = store.load_observations(migrated_engine)
    assert _days(observations[observations["kpi"] == "orders"]) == list(range(30, 60))
    # A KPI without models keeps everything: its history is about to be walked forward.
    assert _days(observations[observations["kpi"] == "sessions"]) == list(range(60))
    assert _days(store.load_scores(migrated_engine, ["orders"])) == list(range(30, 60))
    # Idempotent.
    assert delete_old_observations(migrated_engine, CUTOFF) == 0
    assert delete_old_scores(migrated_engine, CUTOFF) == 0


def test_a_recent_cutoff_is_applied_as_it_is(migrated_engine):
    _seed(migrated_engine)
    assert delete_old_scores(migrated_engine, START + 10 * DAY) == 10
    assert _days(store.load_scores(migrated_engine, ["orders"]))[0] == 10


def test_deleted_observations_take_their_cleaned_rows_and_features_along_without_a_rebuild(
    migrated_engine,
):
    from kpi_pipeline import derived

    _seed(migrated_engine)
    derived.clean_new_observations(migrated_engine)
    derived.build_new_features(migrated_engine, "US")

    assert delete_old_observations(migrated_engine, CUTOFF) == 30

    for rows in (
        store.load_cleaned_rows(migrated_engine, ["orders"]),
        store.load_features(migrated_engine, ["orders"]),
    ):
        assert _days(rows) == list(range(30, 60))
    assert store.load_series(migrated_engine)["orders"].observations == 30
    # New data lands: orders is appended to, not rebuilt from its remaining observations.
    new = pd.DataFrame({"kpi": "orders", "ts": [START + 60 * DAY], "value": [1.0]})
    store.upsert_observations(migrated_engine, new, "test")
    run = derived.clean_new_observations(migrated_engine)
    assert run.kpis == ["orders"] and run.rebuilt == {}
    assert _days(store.load_cleaned_rows(migrated_engine, ["orders"])) == list(range(30, 61))
