"""The optional autoencoder component: a shape anomaly the point-wise components miss, stored as
data and scored exactly as before, the same one point at a time."""

from __future__ import annotations

import numpy as np
import pytest

from kpi_pipeline.detection.artifacts import unpack
from kpi_pipeline.detection.autoencoder import AutoencoderDetector, sliding_windows
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline.detection.walkforward import score_segment
from kpi_pipeline_tests.detection.synthetic import daily_sine

TRAIN = 24 * 20
SHAPE_START = 24 * 21


@pytest.fixture(scope="module")
def series() -> tuple:
    ts, values = daily_sine(24 * 24, seed=3)
    shaped = values.copy()
    # Twelve hours flickering 2.5 sigma up and down: no point is far off, the shape is wrong.
    shaped[SHAPE_START : SHAPE_START + 12] += 2.5 * np.array([1, -1] * 6)
    return ts, values, shaped


@pytest.fixture(scope="module")
def with_autoencoder(series) -> EnsembleDetector:
    ts, values, _ = series
    return EnsembleDetector(DetectorConfig(autoencoder=True)).fit(ts[:TRAIN], values[:TRAIN])


def score(detector, ts, values):
    return score_segment(detector, ts, values, np.zeros(len(values), dtype=bool), TRAIN, len(values))


def test_the_autoencoder_flags_a_shape_anomaly_the_point_wise_components_miss(series, with_autoencoder):
    ts, values, shaped = series
    without = EnsembleDetector(DetectorConfig()).fit(ts[:TRAIN], values[:TRAIN])
    assert not score(without, ts, shaped)["is_anomaly"].any()
    scored = score(with_autoencoder, ts, shaped)
    flagged = scored[scored["is_anomaly"]]
    assert len(flagged) >= 3
    assert set(flagged["flagged_by"]) == {"autoencoder"}
    # Only windows holding part of the flicker (it lasts 12 points, a window holds 12).
    assert (flagged["ts"] >= ts[SHAPE_START]).all() and (flagged["ts"] < ts[SHAPE_START + 12 + 11]).all()
    # The same normal days stay quiet.
    assert not score(with_autoencoder, ts, values)["is_anomaly"].any()


def test_the_autoencoder_round_trips_through_its_artifact_exactly(series, with_autoencoder):
    ts, _, shaped = series
    artifacts = with_autoencoder.to_artifacts()
    assert set(artifacts) == {"prophet", "iforest", "autoencoder", "ensemble"}
    assert unpack(artifacts["autoencoder"], "autoencoder")["params"]["window"] == 12
    restored = EnsembleDetector.from_artifacts(artifacts)
    before, after = score(with_autoencoder, ts, shaped), score(restored, ts, shaped)
    np.testing.assert_array_equal(after["score"].to_numpy(), before["score"].to_numpy())
    assert after["flagged_by"].fillna("").tolist() == before["flagged_by"].fillna("").tolist()
    assert "autoencoder" in set(after["flagged_by"].dropna())


def test_a_model_without_its_autoencoder_artifact_is_refused(with_autoencoder):
    artifacts = with_autoencoder.to_artifacts()
    del artifacts["autoencoder"]
    with pytest.raises(ValueError, match="no autoencoder artifact"):
        EnsembleDetector.from_artifacts(artifacts)


def test_scoring_point_by_point_matches_scoring_the_window(series, with_autoencoder):
    ts, _, shaped = series
    detector = with_autoencoder
    start = SHAPE_START + 2
    state = detector.prepare(ts[:start], shaped[:start])
    incremental = detector.score_after(state, ts[start : start + 8], shaped[start : start + 8])
    whole = score_segment(detector, ts, shaped, np.zeros(len(shaped), dtype=bool), start, start + 8)
    np.testing.assert_allclose(incremental["score"], whole["score"].to_numpy(), rtol=1e-9)
    assert [f or "" for f in incremental["flagged_by"]] == whole["flagged_by"].fillna("").tolist()
    assert "autoencoder" in set(incremental["flagged_by"])


def test_windows_end_at_each_point():
    windows = sliding_windows(np.arange(5.0), 3)
    assert np.isnan(windows[1, 0]) and windows[4].tolist() == [2.0, 3.0, 4.0]


def test_too_few_windows_are_refused():
    with pytest.raises(ValueError, match="complete windows"):
        AutoencoderDetector(window=12).fit(sliding_windows(np.zeros(20), 12))
