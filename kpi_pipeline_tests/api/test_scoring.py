"""Real-time scoring as the API runs it (``realtime.score_points`` with a ``ScoringCache``,
routes.py): the newest model, cached per version with its KPI's newest
observations. That the scores equal the pipeline's is tested in test_routes.py and
kpi_pipeline_tests/test_pipeline.py.

Tests that register models get their own database (``seeded``); the others share one."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.api import realtime
from kpi_pipeline import pipeline, store
from kpi_pipeline.store import serving
from kpi_pipeline.store.notifications import ANY_KPI
from kpi_pipeline_tests.api.conftest import VERSION, make_client, register

HOUR = pd.Timedelta(hours=1)
MAX_POINTS = 100


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.01)


def points(*pairs: tuple[pd.Timestamp, float]) -> pd.DataFrame:
    return pd.DataFrame({"ts": [ts for ts, _ in pairs], "value": [value for _, value in pairs]})


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, str]]:
    """Every (kpi, version) whose artifacts are read."""
    calls, read = [], store.model_artifacts

    def spy(engine, kpi, version):
        calls.append((kpi, version))
        return read(engine, kpi, version)

    monkeypatch.setattr(store, "model_artifacts", spy)
    return calls


def test_detectors_are_built_once_per_version_and_a_retrain_is_picked_up(seeded, detector, loads):
    cache = realtime.ScoringCache(size=4)
    after = seeded.ts[-1] + HOUR
    request = points((after, 100.0))

    first = realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache)
    again = realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache)
    register(seeded.engine, "sales", detector, "v-test-2", seeded.ts[-1])
    retrained = realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache)

    assert (first.model_version, again.model_version, retrained.model_version) == (VERSION, VERSION, "v-test-2")
    assert loads == [("sales", VERSION), ("sales", "v-test-2")]
    pd.testing.assert_frame_equal(first.scores, again.scores)
    assert len(cache) == 2


def test_the_least_recently_used_detector_is_dropped_first(seeded, detector, loads):
    register(seeded.engine, "orders", detector, "v-orders", seeded.ts[-1])
    cache = realtime.ScoringCache(size=1)
    request = points((seeded.ts[-1] + HOUR, 100.0))

    for kpi in ("sales", "orders", "orders", "sales"):
        realtime.score_points(seeded.engine, kpi, request, MAX_POINTS, cache)

    assert loads == [("sales", VERSION), ("orders", "v-orders"), ("sales", VERSION)]
    assert len(cache) == 1


def test_an_off_grid_point_gets_the_score_of_the_grid_point_it_falls_on(module_seeded):
    cache = realtime.ScoringCache(size=1)
    on_grid = module_seeded.ts[-1] + HOUR

    engine = module_seeded.engine
    exact = realtime.score_points(engine, "sales", points((on_grid, 150.0)), 10, cache)
    off_grid = on_grid + pd.Timedelta(minutes=20)
    late = realtime.score_points(engine, "sales", points((off_grid, 150.0)), 10, cache)

    assert late.scores["ts"].tolist() == [off_grid]
    for name in ("expected", "lower", "upper", "score"):
        assert late.scores[name].iloc[0] == pytest.approx(exact.scores[name].iloc[0])


def test_points_after_a_long_silence_and_before_any_history_are_scored(module_seeded):
    cache = realtime.ScoringCache(size=1)
    later = module_seeded.ts[-1] + 72 * HOUR
    earlier = module_seeded.ts[0] - 24 * HOUR

    engine = module_seeded.engine
    after_gap = realtime.score_points(engine, "sales", points((later, 100.0)), 10, cache)
    before = realtime.score_points(engine, "sales", points((earlier, 100.0)), 10, cache)

    for result in (after_gap, before):
        assert len(result.scores) == 1
        assert result.scores["score"].between(0, 1).all()
        assert result.scores["expected"].notna().all()


def test_points_spread_over_a_huge_grid_are_refused(module_seeded):
    cache = realtime.ScoringCache(size=1)
    start = module_seeded.ts[-1] + HOUR
    spread = points((start, 1.0), (start + HOUR, 1.0), (start + 5000 * HOUR, 1.0))

    with pytest.raises(realtime.PointsTooSpread, match="send points closer together"):
        realtime.score_points(module_seeded.engine, "sales", spread, 10, cache)


def test_unknown_kpis_kpis_without_models_and_incomplete_models_are_told_apart(seeded):
    cache = realtime.ScoringCache(size=1)
    request = points((seeded.ts[-1] + HOUR, 1.0))
    store.save_model(
        seeded.engine,
        kpi="signups",
        kind="ensemble",
        version="half",
        trained_at="2025-03-01",
        train_start=None,
        train_end="2025-03-01",
        n_points=10,
        params={},
        metrics={},
        artifact=b"not used",
    )

    with pytest.raises(realtime.UnknownKpi, match="'nope'"):
        realtime.score_points(seeded.engine, "nope", request, 10, cache)
    with pytest.raises(realtime.NoModel, match="no trained model for 'orders'"):
        realtime.score_points(seeded.engine, "orders", request, 10, cache)
    with pytest.raises(realtime.NoModel, match="incomplete"):
        realtime.score_points(seeded.engine, "signups", request, 10, cache)


def test_cached_observations_are_read_again_once_new_or_corrected_ones_land(seeded):
    cache = realtime.ScoringCache(size=1)
    request = points((seeded.ts[-1] + 2 * HOUR, 120.0))

    def cached_and_fresh() -> tuple[pd.DataFrame, pd.DataFrame]:
        cached = realtime.score_points(seeded.engine, "sales", request, 10, cache).scores
        fresh = realtime.score_points(seeded.engine, "sales", request, 10).scores
        pd.testing.assert_frame_equal(cached, fresh, check_exact=True)
        return cached, fresh

    before, _ = cached_and_fresh()
    # Twelve new hourly points at twice the usual level, then corrected to the usual level.
    hours = seeded.ts[-1] + HOUR * pd.RangeIndex(1, 13).to_numpy()
    later = pd.DataFrame({"kpi": "sales", "ts": hours, "value": 2 * seeded.values[-12:]})
    store.upsert_observations(seeded.engine, later, "test")
    request = points((hours[-1] + HOUR, 120.0))
    with_new_points, _ = cached_and_fresh()
    store.upsert_observations(seeded.engine, later.assign(value=seeded.values[-12:]), "test")
    with_corrected_point, _ = cached_and_fresh()

    scores = [frame["score"].iloc[0] for frame in (before, with_new_points, with_corrected_point)]
    assert len(set(scores)) == 3


def test_records_have_plain_values_and_none_for_missing_ones():
    ts = pd.Timestamp("2025-01-01", tz="UTC")
    columns = {name: [None, None] for name in realtime.SCORE_COLUMNS}
    columns.update(
        ts=pd.DatetimeIndex([ts, ts + HOUR]).to_numpy(),
        value=[1.5, 2.0],
        score=[0.25, float("nan")],
        severity=[None, "high"],
        is_anomaly=[False, True],
    )
    columns = {name: np.asarray(value) for name, value in columns.items()}

    records = realtime.RealtimeScores("sales", VERSION, columns).records()

    assert [list(record) for record in records] == [realtime.SCORE_COLUMNS] * 2
    assert records[0]["ts"] == ts.to_pydatetime() and records[1]["ts"] == (ts + HOUR).to_pydatetime()
    assert [r["score"] for r in records] == [0.25, None]
    assert [r["severity"] for r in records] == [None, "high"]
    assert [r["is_anomaly"] for r in records] == [False, True]
    assert all(type(r["value"]) is float and type(r["is_anomaly"]) is bool for r in records)


NEXT_POINT_SHAPES = {
    "the next slot": [(1, 0.0)],
    "a few slots on": [(3, 0.0)],
    "after a long gap": [(9, 0.0)],
    "a run with gaps": [(1, 0.0), (2, 0.0), (4, 0.0), (9, 0.0), (10, 0.0)],
    "off the grid": [(1, 20.0), (2, -25.0)],
    "a spike after a gap": [(2, 0.0), (3, 0.0)],
}


@pytest.mark.parametrize("shape", NEXT_POINT_SHAPES)
def test_points_after_the_newest_observation_score_as_the_general_path_does(module_seeded, monkeypatch, shape):
    """Points after the newest observation are scored from the cached tail's judged state
    (``_KpiScorer._next_points``): every number equals what cleaning the tail again with the
    points and scoring the whole window gives."""
    engine, last = module_seeded.engine, module_seeded.ts[-1]
    offsets = NEXT_POINT_SHAPES[shape]
    values = [130.0 if shape == "a spike after a gap" and i == 1 else 100.0 + 3 * i for i in range(len(offsets))]
    request = points(
        *[
            (last + hours * HOUR + pd.Timedelta(minutes=minutes), value)
            for (hours, minutes), value in zip(offsets, values)
        ]
    )
    quick_calls = []
    quick = realtime._KpiScorer._next_points

    def spy(self, tail, ns, values):
        quick_calls.append(result := quick(self, tail, ns, values))
        return result

    monkeypatch.setattr(realtime._KpiScorer, "_next_points", spy)
    fast = realtime.score_points(engine, "sales", request, MAX_POINTS, realtime.ScoringCache(1))
    monkeypatch.setattr(realtime._KpiScorer, "_next_points", lambda *_: None)
    general = realtime.score_points(engine, "sales", request, MAX_POINTS, realtime.ScoringCache(1))

    assert quick_calls and quick_calls[0] is not None  # the fast path answered
    pd.testing.assert_frame_equal(fast.scores, general.scores, check_exact=True)
    if shape == "a spike after a gap":
        assert fast.scores["is_anomaly"].tolist() == [False, True]


def test_points_the_fast_path_cannot_take_go_the_general_way(module_seeded, monkeypatch):
    """Two points on one slot, a point further ahead than the incremental path judges, and
    points among the stored ones: cleaned with the tail again."""
    engine, last = module_seeded.engine, module_seeded.ts[-1]
    answers = []
    quick = realtime._KpiScorer._next_points
    monkeypatch.setattr(
        realtime._KpiScorer, "_next_points", lambda self, *a: answers.append(quick(self, *a)) or answers[-1]
    )
    cache = realtime.ScoringCache(1)
    same_slot = points((last + HOUR, 100.0), (last + HOUR + pd.Timedelta(minutes=10), 104.0))
    far = points((last + (pipeline.INCREMENTAL_MAX_SLOTS + 1) * HOUR, 100.0))
    shared = realtime.score_points(engine, "sales", same_slot, MAX_POINTS, cache)
    far_ahead = realtime.score_points(engine, "sales", far, MAX_POINTS, cache)
    among = realtime.score_points(engine, "sales", points((last - 5 * HOUR, 100.0)), 10, cache)

    assert answers == [None, None]  # asked for the points after the newest one, declined
    assert shared.scores["expected"].nunique() == 1  # one slot, one expectation
    assert len(far_ahead.scores) == 1 and far_ahead.scores["expected"].notna().all()
    assert len(among.scores) == 1


# -- trusted while listening: no database per call --------------------------------------------


class Probes:
    """Counts the per-call checks of the database (newest model, observations unchanged)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, during=None) -> None:
        self.calls = 0
        for name in ("newest_model_version", "observation_watermark"):
            probe = getattr(serving, name)

            def counted(*args, _probe=probe, **kwargs):
                self.calls += 1
                if during is not None:
                    during()
                return _probe(*args, **kwargs)

            monkeypatch.setattr(serving, name, counted)


def test_a_live_cache_trusts_a_checked_kpi_until_a_write_of_it_is_heard(seeded, monkeypatch):
    cache = realtime.ScoringCache(size=2)
    request = points((seeded.ts[-1] + HOUR, 100.0))
    ns = pd.DatetimeIndex(request["ts"]).as_unit("ns").asi8
    values, stamps = request["value"].to_numpy(), list(request["ts"])

    def score() -> pd.DataFrame:
        return realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache).scores

    probes = Probes(monkeypatch)
    first = score()
    probes.calls = 0
    score()
    assert cache.trusted("sales") is None and probes.calls == 2  # dark: checked every time
    cache.go_live()
    score()
    assert cache.trusted("sales") is not None
    probes.calls = 0
    trusted = score()
    answered = cache.score_current("sales", ns, values, stamps, MAX_POINTS)
    assert probes.calls == 0  # neither call reached the database
    pd.testing.assert_frame_equal(trusted, first, check_exact=True)
    pd.testing.assert_frame_equal(answered.scores, first, check_exact=True)

    cache.written(["orders"])
    assert cache.trusted("sales") is not None  # another KPI's write
    cache.written(["sales"])
    assert cache.trusted("sales") is None
    assert cache.score_current("sales", ns, values, stamps, MAX_POINTS) is None
    score()
    assert probes.calls == 2 and cache.trusted("sales") is not None
    cache.written([ANY_KPI])
    assert cache.trusted("sales") is None
    score()
    cache.go_dark()
    assert cache.trusted("sales") is None and cache.token("sales") is None


def test_a_write_heard_while_a_call_reads_withholds_the_trust(seeded, monkeypatch):
    cache = realtime.ScoringCache(size=2)
    cache.go_live()
    Probes(monkeypatch, during=lambda: cache.written(["sales"]))

    realtime.score_points(seeded.engine, "sales", points((seeded.ts[-1] + HOUR, 1.0)), MAX_POINTS, cache)

    assert cache.trusted("sales") is None


def test_the_api_scores_without_the_database_until_a_loader_writes_the_kpi(seeded):
    """End to end, with the app's listener on kpi_inputs_written: an observation inserted by
    plain SQL is in the context of the next real-time score."""
    last, engine = seeded.ts[-1], seeded.engine
    body = {"kpi": "sales", "points": [{"timestamp": (last + 2 * HOUR).isoformat(), "value": 100.0}]}
    with make_client(engine) as client:
        scorers = client.app.state.api.scorers
        wait_until(lambda: scorers.token("sales") is not None, "the scoring cache listens")
        before = client.post("/v1/score", json=body).json()
        assert scorers.trusted("sales") is not None
        assert client.post("/v1/score", json=body).json() == before

        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO kpi_observations (kpi, ts, value, ingested_at, source) "
                    "VALUES ('sales', :ts, 400, now(), 'loader')"
                ),
                {"ts": last + HOUR},
            )
        wait_until(lambda: scorers.trusted("sales") is None, "the write is heard")
        after = client.post("/v1/score", json=body).json()

    fresh = realtime.score_points(engine, "sales", points((last + 2 * HOUR, 100.0)), MAX_POINTS)
    (expected,) = fresh.records()
    for name in ("expected", "lower", "upper", "score"):
        assert after["points"][0][name] == pytest.approx(expected[name], rel=1e-12), name
    assert after["points"][0]["score"] != pytest.approx(before["points"][0]["score"])


def test_trusted_calls_use_the_observations_the_trusting_call_checked(seeded, monkeypatch):
    """A slower read finishing after the trust cannot put older observations under it."""
    cache = realtime.ScoringCache(size=2)
    cache.go_live()
    request = points((seeded.ts[-1] + 2 * HOUR, 100.0))  # the slot between is interpolated
    checked = realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache).scores
    trusted = cache.trusted("sales")
    y = trusted.tail.judged.y.copy()
    y[-1] += 500.0  # the newest observation's value, as an older read had it
    older = dataclasses.replace(trusted.tail, judged=dataclasses.replace(trusted.tail.judged, y=y))
    trusted.scorer._tail = older  # as a read begun before the last write would leave it
    ns = pd.DatetimeIndex(request["ts"]).as_unit("ns").asi8

    again = realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache).scores
    inline = cache.score_current("sales", ns, request["value"].to_numpy(), list(request["ts"]), MAX_POINTS).scores

    pd.testing.assert_frame_equal(again, checked, check_exact=True)
    pd.testing.assert_frame_equal(inline, checked, check_exact=True)


def test_a_heard_write_drops_the_kpis_model_and_trust_expires(seeded, loads, monkeypatch):
    cache = realtime.ScoringCache(size=4)
    cache.go_live()
    request = points((seeded.ts[-1] + HOUR, 100.0))
    for _ in range(2):
        realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache)
    assert loads == [("sales", VERSION)]

    cache.written(["sales"])  # a retrain may rewrite the same version: read it again
    realtime.score_points(seeded.engine, "sales", request, MAX_POINTS, cache)
    assert loads == [("sales", VERSION)] * 2 and cache.trusted("sales") is not None

    monkeypatch.setattr(realtime, "TRUST_MAX_AGE_S", 0.0)
    assert cache.trusted("sales") is None  # checked again after at most TRUST_MAX_AGE_S
