"""Real-time scoring (kpi_pipeline/api/scoring.py): the newest model, cached per version.

Tests that register models get their own database (``seeded``); the others share one."""

from __future__ import annotations

import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline.api import scoring
from kpi_pipeline_tests.api.conftest import VERSION, register

HOUR = pd.Timedelta(hours=1)
MAX_POINTS = 100


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


def test_detectors_are_built_once_per_version_and_a_retrain_is_picked_up(seeded, detector,
                                                                         loads):
    cache = scoring.DetectorCache(size=4)
    after = seeded.ts[-1] + HOUR
    request = points((after, 100.0))

    first = scoring.score_points(seeded.engine, cache, "sales", request, MAX_POINTS)
    again = scoring.score_points(seeded.engine, cache, "sales", request, MAX_POINTS)
    register(seeded.engine, "sales", detector, "v-test-2", seeded.ts[-1])
    retrained = scoring.score_points(seeded.engine, cache, "sales", request, MAX_POINTS)

    assert (first.model_version, again.model_version, retrained.model_version) == (
        VERSION, VERSION, "v-test-2"
    )
    assert loads == [("sales", VERSION), ("sales", "v-test-2")]
    pd.testing.assert_frame_equal(first.scores, again.scores)
    assert len(cache) == 2


def test_the_least_recently_used_detector_is_dropped_first(seeded, detector, loads):
    register(seeded.engine, "orders", detector, "v-orders", seeded.ts[-1])
    cache = scoring.DetectorCache(size=1)
    request = points((seeded.ts[-1] + HOUR, 100.0))

    for kpi in ("sales", "orders", "orders", "sales"):
        scoring.score_points(seeded.engine, cache, kpi, request, MAX_POINTS)

    assert loads == [("sales", VERSION), ("orders", "v-orders"), ("sales", VERSION)]
    assert len(cache) == 1


def test_an_off_grid_point_gets_the_score_of_the_grid_point_it_falls_on(module_seeded):
    cache = scoring.DetectorCache(size=1)
    on_grid = module_seeded.ts[-1] + HOUR

    exact = scoring.score_points(module_seeded.engine, cache, "sales", points((on_grid, 150.0)), 10)
    off_grid = on_grid + pd.Timedelta(minutes=20)
    late = scoring.score_points(module_seeded.engine, cache, "sales", points((off_grid, 150.0)), 10)

    assert late.scores["ts"].tolist() == [off_grid]
    for name in ("expected", "lower", "upper", "score"):
        assert late.scores[name].iloc[0] == pytest.approx(exact.scores[name].iloc[0])


def test_points_after_a_long_silence_and_before_any_history_are_scored(module_seeded):
    cache = scoring.DetectorCache(size=1)
    later = module_seeded.ts[-1] + 72 * HOUR
    earlier = module_seeded.ts[0] - 24 * HOUR

    engine = module_seeded.engine
    after_gap = scoring.score_points(engine, cache, "sales", points((later, 100.0)), 10)
    before = scoring.score_points(engine, cache, "sales", points((earlier, 100.0)), 10)

    for result in (after_gap, before):
        assert len(result.scores) == 1
        assert result.scores["score"].between(0, 1).all()
        assert result.scores["expected"].notna().all()


def test_points_spread_over_a_huge_grid_are_refused(module_seeded):
    cache = scoring.DetectorCache(size=1)
    start = module_seeded.ts[-1] + HOUR
    spread = points((start, 1.0), (start + HOUR, 1.0), (start + 5000 * HOUR, 1.0))

    with pytest.raises(scoring.PointsTooSpread, match="send points closer together"):
        scoring.score_points(module_seeded.engine, cache, "sales", spread, max_points=10)


def test_unknown_kpis_kpis_without_models_and_incomplete_models_are_told_apart(seeded):
    cache = scoring.DetectorCache(size=1)
    request = points((seeded.ts[-1] + HOUR, 1.0))
    store.save_model(
        seeded.engine, kpi="signups", kind="ensemble", version="half", trained_at="2025-03-01",
        train_start=None, train_end="2025-03-01", n_points=10, params={}, metrics={},
        artifact=b"not used",
    )

    with pytest.raises(scoring.UnknownKpi, match="'nope'"):
        scoring.score_points(seeded.engine, cache, "nope", request, 10)
    with pytest.raises(scoring.NoModel, match="no trained model for 'orders'"):
        scoring.score_points(seeded.engine, cache, "orders", request, 10)
    with pytest.raises(scoring.NoModel, match="incomplete"):
        scoring.score_points(seeded.engine, cache, "signups", request, 10)
