"""Feedback-adaptive thresholds through the product path on PostgreSQL: a false positive
labelled in the store raises the threshold the next scoring run judges new points against; a
true positive raises nothing; ``kpi-pipeline thresholds reset`` undoes the raise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline.detection.calibration import surprise_from_score
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline.detection.feedback import threshold_raise
from kpi_pipeline_tests.detection.synthetic import daily_sine

pytestmark = pytest.mark.postgres

DAY = 24
TRAIN = 14 * DAY
SPIKE = 15 * DAY + 5  # gross: flagged, then marked false positive on "a", confirmed on "b"
PHASES = (16 * DAY, 18 * DAY, 20 * DAY)  # points observed before each scoring run


def series() -> tuple[pd.DatetimeIndex, np.ndarray]:
    ts, values = daily_sine(PHASES[-1], seed=11)
    values[SPIKE] += 40.0
    values[17 * DAY + 3] += 3.3  # moderate spikes: judged against the raised threshold
    values[19 * DAY + 7] += 4.5
    return ts, values


def register(engine, kpi: str, detector: EnsembleDetector, train_end: pd.Timestamp) -> None:
    store.save_models(
        engine,
        [
            dict(
                kpi=kpi,
                kind=kind,
                version="v1",
                trained_at=pd.Timestamp.now("UTC"),
                train_start=detector.train_start_,
                train_end=train_end,
                n_points=detector.n_train_points_,
                params=detector.config.to_dict(),
                metrics=detector.metrics_,
                artifact=artifact,
            )
            for kind, artifact in detector.to_artifacts().items()
        ],
    )


def observe_until(engine, ts, values, end: int) -> None:
    frame = pd.DataFrame({"ts": ts[:end], "value": values[:end]})
    store.upsert_observations(engine, pd.concat([frame.assign(kpi="a"), frame.assign(kpi="b")]), "test")


def scores_of(engine, kpi: str, since: pd.Timestamp) -> pd.DataFrame:
    return store.load_scores(engine, [kpi], since=since).set_index("ts")


def test_false_positives_raise_the_next_scoring_run_and_a_reset_undoes_it(migrated_pg_engine, pg_url):
    engine = migrated_pg_engine
    ts, values = series()
    # One false positive raises by up to the whole cap here, so a moderate spike falls silent.
    config = DetectorConfig(feedback_threshold_step=1.0)
    detector = EnsembleDetector(config).fit(ts[:TRAIN], values[:TRAIN])
    for kpi in ("a", "b"):
        register(engine, kpi, detector, ts[TRAIN - 1])
    observe_until(engine, ts, values, PHASES[0])
    pipeline.score_latest(engine)
    for kpi in ("a", "b"):
        assert scores_of(engine, kpi, ts[SPIKE]).loc[ts[SPIKE], "is_anomaly"]
    store.set_feedback(engine, "a", ts[SPIKE], "false_positive", "expected promotion")
    store.set_feedback(engine, "b", ts[SPIKE], "true_positive")

    limits = pipeline.kpi_thresholds(engine)
    assert limits["b"].raised_by == 0.0 and limits["b"].false_positives == 0
    assert 0 < limits["a"].raised_by <= config.feedback_threshold_cap
    assert limits["a"].false_positives == 1
    assert limits["a"].effective == pytest.approx(detector.threshold_ + limits["a"].raised_by)

    # The next run judges a's new points against the raised threshold, b's against the model's.
    observe_until(engine, ts, values, PHASES[1])
    pipeline.score_latest(engine)
    a, b = scores_of(engine, "a", ts[PHASES[0]]), scores_of(engine, "b", ts[PHASES[0]])
    assert len(a) == len(b) == PHASES[1] - PHASES[0]
    surprise = surprise_from_score(b["score"].to_numpy(), detector.threshold_)
    raised = threshold_raise(pd.DatetimeIndex([ts[SPIKE]]), pd.DatetimeIndex(a.index), config)
    assert (raised > 0).all()
    np.testing.assert_allclose(a["score"].to_numpy(), surprise / (surprise + detector.threshold_ + raised), rtol=1e-9)
    np.testing.assert_array_equal(a["is_anomaly"].to_numpy(), surprise >= detector.threshold_ + raised)
    assert b["is_anomaly"].any() and a["is_anomaly"].sum() < b["is_anomaly"].sum()

    # Reversible: after a reset, a's new points are judged exactly as b's (whose true positive
    # raised nothing).
    result = CliRunner().invoke(app, ["--database-url", pg_url, "thresholds", "reset", "a"])
    assert result.exit_code == 0, result.output
    assert pipeline.kpi_thresholds(engine, ["a"])["a"].raised_by == 0.0
    observe_until(engine, ts, values, PHASES[2])
    pipeline.score_latest(engine)
    a, b = scores_of(engine, "a", ts[PHASES[1]]), scores_of(engine, "b", ts[PHASES[1]])
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    np.testing.assert_array_equal(a["is_anomaly"].to_numpy(), b["is_anomaly"].to_numpy())

    # A false positive labelled after the reset raises it again.
    flagged = scores_of(engine, "a", ts[PHASES[1]]).query("is_anomaly").index
    store.set_feedback(engine, "a", flagged[0], "false_positive")
    assert pipeline.kpi_thresholds(engine, ["a"])["a"].false_positives == 1
    shown = CliRunner().invoke(app, ["--database-url", pg_url, "thresholds", "show"])
    assert shown.exit_code == 0 and "a" in shown.output


def test_labels_on_several_points_of_one_event_count_once(migrated_pg_engine):
    engine = migrated_pg_engine
    ts = pd.date_range("2025-01-01", periods=4, freq="h", tz="UTC")
    store.upsert_scores(
        engine,
        pd.DataFrame({"kpi": "k", "ts": ts, "is_anomaly": True, "event_id": ["e1", "e1", "e2", "e2"], "score": 0.6}),
    )
    for stamp in ts:
        store.set_feedback(engine, "k", stamp, "false_positive")
    assert store.load_false_positives(engine)["k"].tolist() == [ts[0], ts[2]]
    store.reset_threshold(engine, "k")
    assert store.load_false_positives(engine, ["k"]) == {}
