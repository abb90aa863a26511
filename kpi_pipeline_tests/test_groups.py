"""KPI groups (kpi_pipeline/groups.py): the groups file, and a group trained and scored on the
product path on Postgres."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline import groups, pipeline, store
from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline.detection.multivariate import GroupConfig
from kpi_pipeline.evaluation.groups import group_event_metrics, kpi_event_metrics
from kpi_pipeline.store import groups as group_store

# -- the groups file ----------------------------------------------------------------------------


def test_a_groups_file_declares_named_groups_of_members():
    text = "groups:\n  checkout:\n    members: [orders, revenue]\n  traffic:\n    members: [sessions, signups, views]\n"
    assert groups.parse_groups(text) == [
        groups.KpiGroup("checkout", ("orders", "revenue")),
        groups.KpiGroup("traffic", ("sessions", "signups", "views")),
    ]
    assert groups.parse_groups(groups.groups_yaml(groups.parse_groups(text))) == groups.parse_groups(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("groups:\n  solo:\n    members: [orders]\n", "group 'solo' has 1 member; a group needs at least 2"),
        (
            "groups:\n  a:\n    members: [orders, revenue]\n  b:\n    members: [revenue, sessions]\n",
            "KPI 'revenue' is in groups 'a' and 'b'",
        ),
        ("groups:\n  a:\n    members: [orders, orders]\n", "group 'a' lists a KPI twice"),
        ("groups:\n  a:\n    kpis: [orders, revenue]\n", "Extra inputs are not permitted"),
        ("groups: [", "groups file"),
    ],
)
def test_a_bad_groups_file_is_rejected_with_its_reason(text, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        groups.parse_groups(text)


def test_members_must_be_known_kpis():
    declared = [groups.KpiGroup("checkout", ("orders", "refunds"))]
    with pytest.raises(ValueError, match=r"unknown KPIs: 'refunds' \(group 'checkout'\)"):
        groups.check_members_known(declared, {"orders", "sessions"})
    groups.check_members_known(declared, {"orders", "refunds"})


def test_no_groups_file_means_no_groups(tmp_path):
    assert groups.load_groups(None) == []
    with pytest.raises(ValueError, match="missing.yaml"):
        groups.load_groups(tmp_path / "missing.yaml")


def test_a_member_gets_the_group_score_only_where_it_and_another_member_moved():
    score = np.array([0.9, 0.9, 0.3])
    moved = np.array([[True, True, False], [True, False, False], [True, True, True]])
    component = groups.group_component(score, moved)
    np.testing.assert_array_equal(component, [[0.9, 0.9, 0.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3]])


def test_suggest_links_kpis_whose_residuals_correlate():
    rng = np.random.default_rng(0)
    ts = pd.date_range("2025-01-01", periods=500, freq="h", tz="UTC")
    common = rng.standard_normal(len(ts))
    rows = []
    for kpi, shared in [("orders", 0.8), ("revenue", 0.8), ("tickets", 0.0)]:
        r = 0.05 * (np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.standard_normal(len(ts)))
        rows.append(pd.DataFrame({"kpi": kpi, "ts": ts, "value": 100 * np.exp(r), "expected": 100.0}))
    scores = pd.concat(rows, ignore_index=True)
    assert groups.suggest_groups(scores, threshold=0.5) == [groups.KpiGroup("orders", ("orders", "revenue"))]
    assert groups.suggest_groups(scores, threshold=0.95) == []


# -- evaluation from stored events ------------------------------------------------------------------


def test_group_events_are_judged_against_the_labels_of_their_own_group():
    t = pd.Timestamp("2025-01-10", tz="UTC")
    hour = pd.Timedelta(hours=1)
    labels = pd.DataFrame(
        {
            "group": ["a", "a", "b", "a"],
            "start": [t, t + 10 * hour, t, t - 90 * hour],
            "end": [t + 2 * hour] * 2 + [t, t - 89 * hour],
        }
    )
    events = pd.DataFrame(
        {
            "group_name": ["a", "a", "b"],
            "start": [t + hour, t + 50 * hour, t + 5 * hour],
            "end": [t + hour, t + 50 * hour, t + 5 * hour],
        }
    )
    # Group a: its first label is caught, its second (whose end precedes its start) is not, its
    # last ends before a was judged; one event of a overlaps nothing. Group b's event misses.
    result = group_event_metrics(events, labels, {"a": t - 24 * hour, "b": t - 24 * hour})
    assert (result.tp_events, result.fn_events, result.fp_events) == (1, 2, 2)


def test_per_kpi_events_with_groups_count_the_group_component():
    ts = pd.date_range("2025-01-01", periods=6, freq="h", tz="UTC")
    scores = pd.DataFrame(
        {
            "kpi": "orders",
            "ts": ts,
            "is_anomaly": [False, False, False, False, True, False],
            "multivariate_score": [np.nan, 0.2, 0.7, 0.1, np.nan, 0.0],
        }
    )
    labels = pd.DataFrame({"kpi": ["orders"], "start": [ts[2]], "end": [ts[3]]})
    off = kpi_event_metrics(scores, labels, with_groups=False)
    on = kpi_event_metrics(scores, labels, with_groups=True)
    assert (off.tp_events, off.fn_events, off.fp_events) == (0, 1, 1)
    assert (on.tp_events, on.fn_events, on.fp_events) == (1, 0, 1)


# -- the product path on Postgres ------------------------------------------------------------------

START = pd.Timestamp("2025-03-03", tz="UTC")
HOUR = pd.Timedelta(hours=1)
DAYS = 24
INCIDENT = START + pd.Timedelta(days=21, hours=10)
MEMBERS = ("orders", "revenue", "sessions")


def observations() -> pd.DataFrame:
    """Hourly orders, revenue and sessions with shared noise, and refunds on their own; at
    ``INCIDENT`` for three hours orders fall and revenue rises by about 7.5% each (5 spreads)."""
    rng = np.random.default_rng(7)
    ts = pd.date_range(START, periods=24 * DAYS, freq="h")
    daily = 0.3 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)
    common = rng.standard_normal(len(ts))
    frames = []
    for kpi, level in [("orders", 100.0), ("revenue", 7000.0), ("sessions", 2000.0), ("refunds", 10.0)]:
        shared = 0.5 if kpi in MEMBERS else 0.0
        noise = 0.015 * (np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.standard_normal(len(ts)))
        log_value = np.log(level) + daily + noise
        during = (ts >= INCIDENT) & (ts < INCIDENT + pd.Timedelta(hours=3))
        log_value[during] += {"orders": -0.075, "revenue": 0.075}.get(kpi, 0.0)
        frames.append(pd.DataFrame({"kpi": kpi, "ts": ts, "value": np.exp(log_value)}))
    return pd.concat(frames, ignore_index=True)


PER_KPI_COLUMNS = ["kpi", "ts", "value", "expected", "score", "is_anomaly", "severity", "event_id", "model_version"]


@pytest.mark.postgres
def test_a_group_is_trained_and_scored_on_the_product_path(pg_url):
    engine = pipeline.open_store(pg_url)
    try:
        store.upsert_observations(engine, observations(), "test")
        cleaned, _ = pipeline.load_cleaned(engine)
        pipeline.train_models(engine, cleaned, DetectorConfig())
        pipeline.score_latest(engine)
        per_kpi = store.load_scores(engine)[PER_KPI_COLUMNS]
        group = groups.KpiGroup("checkout", MEMBERS)
        config = GroupConfig(min_train_points=120)

        [result] = groups.update_groups(engine, [group], config)

        assert result.status == "judged" and result.versions
        models = group_store.load_group_models(engine, "checkout")
        assert [m.version for m in models] == list(result.versions)
        assert all(m.members == MEMBERS for m in models)
        # Every member point after the first version has its component; other KPIs none.
        scores = store.load_scores(engine)
        mv = group_store.load_member_scores(engine, [*MEMBERS, "refunds"])
        after = mv["ts"] > models[0].train_end
        assert mv.loc[after & mv["kpi"].isin(MEMBERS), "multivariate_score"].notna().all()
        assert mv.loc[mv["kpi"] == "refunds", "multivariate_score"].isna().all()
        assert mv.loc[~after, "multivariate_score"].isna().all()
        # The per-KPI path is untouched: its columns are as scoring wrote them.
        pd.testing.assert_frame_equal(scores[PER_KPI_COLUMNS], per_kpi)
        # One group event covers the incident and names the two members that moved.
        events = group_store.load_group_events(engine, "checkout")
        hit = events[(events["start"] <= INCIDENT + pd.Timedelta(hours=2)) & (events["end"] >= INCIDENT)]
        assert len(hit) == 1
        named = {m["kpi"]: m for m in json.loads(hit["members"].iloc[0])}
        assert set(named) == {"orders", "revenue"}
        assert named["orders"]["z"] < 0 < named["revenue"]["z"]
        assert named["orders"]["relative"] == pytest.approx(-0.075, abs=0.03)
        assert hit["peak_score"].iloc[0] == events["peak_score"].max()
        # A rerun without new points writes nothing.
        [again] = groups.update_groups(engine, [group], config)
        assert again.status == "up to date"
        pd.testing.assert_frame_equal(
            group_store.load_group_events(engine, "checkout").drop(columns="updated_at"),
            events.drop(columns="updated_at"),
        )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_changing_a_groups_members_starts_it_again(pg_url):
    engine = pipeline.open_store(pg_url)
    try:
        store.upsert_observations(engine, observations(), "test")
        cleaned, _ = pipeline.load_cleaned(engine)
        pipeline.train_models(engine, cleaned, DetectorConfig())
        pipeline.score_latest(engine)
        config = GroupConfig(min_train_points=120)
        groups.update_groups(engine, [groups.KpiGroup("checkout", MEMBERS)], config)
        [result] = groups.update_groups(engine, [groups.KpiGroup("checkout", ("orders", "revenue"))], config)
        assert result.status == "judged"
        assert all(m.members == ("orders", "revenue") for m in group_store.load_group_models(engine, "checkout"))
        sessions = group_store.load_member_scores(engine, ["sessions"])
        assert sessions["multivariate_score"].isna().all()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_new_points_are_judged_incrementally_by_the_stored_versions(pg_url):
    engine = pipeline.open_store(pg_url)
    try:
        everything = observations()
        first = everything[everything["ts"] < START + pd.Timedelta(days=20)]
        store.upsert_observations(engine, first, "test")
        cleaned, _ = pipeline.load_cleaned(engine)
        pipeline.train_models(engine, cleaned, DetectorConfig())
        pipeline.score_latest(engine)
        group, config = groups.KpiGroup("checkout", MEMBERS), GroupConfig(min_train_points=120)
        [walked] = groups.update_groups(engine, [group], config)
        versions = group_store.load_group_models(engine, "checkout")

        store.upsert_observations(engine, everything, "test")
        pipeline.score_latest(engine)
        [later] = groups.update_groups(engine, [group], config)

        assert walked.status == later.status == "judged"
        assert later.judged == 4 * 24  # the new timestamps, each once
        assert later.versions == ()  # less than a retrain period (12 days hourly) since the newest
        assert [m.version for m in group_store.load_group_models(engine, "checkout")] == [m.version for m in versions]
        new = group_store.load_member_scores(engine, MEMBERS, since=START + pd.Timedelta(days=20) - HOUR)
        assert new["multivariate_score"].notna().all()
        events = group_store.load_group_events(engine, "checkout")
        assert ((events["start"] <= INCIDENT + pd.Timedelta(hours=2)) & (events["end"] >= INCIDENT)).sum() == 1
    finally:
        engine.dispose()
