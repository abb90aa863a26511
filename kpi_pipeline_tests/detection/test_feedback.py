"""Feedback-adaptive thresholds: the raise rule, scoring against a raised threshold, and the
walk-forward replay of an analyst's labels (``evaluate --simulate-feedback``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.calibration import surprise_from_score
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline.detection.feedback import threshold_raise
from kpi_pipeline.detection.walkforward import (
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    Review,
    score_segment,
    training_cutoffs,
    walk_forward,
)
from kpi_pipeline_tests.detection.synthetic import daily_sine

CONFIG = DetectorConfig()
DAY = pd.Timedelta(days=1)


def stamps(*days: float) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([pd.Timestamp("2025-01-01", tz="UTC") + d * DAY for d in days])


def test_a_false_positive_raises_the_threshold_of_later_points_by_one_step_fading_with_age():
    fp = stamps(0)
    raised = threshold_raise(fp, stamps(-1, 0, 1e-6, 30, 60), CONFIG)
    step = CONFIG.feedback_threshold_step
    assert raised[:2].tolist() == [0.0, 0.0]  # not before it, nor at the point itself
    assert raised[2] == pytest.approx(step)
    assert raised[3] == pytest.approx(step / 2)  # one half-life later
    assert raised[4] == pytest.approx(step / 4)


def test_many_false_positives_raise_the_threshold_no_further_than_the_cap():
    fp = stamps(*range(50))
    raised = threshold_raise(fp, stamps(50), CONFIG)
    assert raised[0] == CONFIG.feedback_threshold_cap
    few = threshold_raise(stamps(0, 1), stamps(2), CONFIG)[0]
    assert 0 < few < CONFIG.feedback_threshold_cap


def test_a_label_counts_only_from_when_it_was_given():
    raised = threshold_raise(stamps(0), stamps(0.5, 1, 2), CONFIG, known_from=stamps(1))
    assert raised[0] == 0.0
    assert raised[1] > 0 and raised[2] > 0


def test_no_false_positives_raise_nothing():
    assert threshold_raise(pd.DatetimeIndex([], tz="UTC"), stamps(0, 1), CONFIG).tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def fitted() -> tuple[EnsembleDetector, pd.DatetimeIndex, np.ndarray]:
    ts, values = daily_sine(24 * 20, seed=3)
    detector = EnsembleDetector(CONFIG).fit(ts[: 24 * 14], values[: 24 * 14])
    return detector, ts, values


def test_scores_are_judged_against_the_raised_threshold(fitted):
    detector, ts, values = fitted
    values = values.copy()
    values[24 * 15] += 6.0  # a moderate spike
    values[24 * 17] += 60.0  # a gross one
    gap = np.zeros(len(values), dtype=bool)
    start, end = 24 * 14, len(values)
    plain = score_segment(detector, ts, values, gap, start, end)
    cap = CONFIG.feedback_threshold_cap
    raised = score_segment(detector, ts, values, gap, start, end, cap)
    surprise = surprise_from_score(plain["score"].to_numpy(), detector.threshold_)
    # Same evidence, judged against the higher threshold: 0.5 exactly at the raised threshold.
    expected = surprise / (surprise + detector.threshold_ + cap)
    np.testing.assert_allclose(raised["score"].to_numpy(), expected, rtol=1e-9)
    assert (raised["is_anomaly"].to_numpy() == (surprise >= detector.threshold_ + cap)).all()
    moderate, gross = 24 * 15 - start, 24 * 17 - start
    assert detector.threshold_ <= surprise[moderate] < detector.threshold_ + cap  # the case that matters
    assert plain["is_anomaly"].iloc[moderate] and not raised["is_anomaly"].iloc[moderate]
    assert raised["is_anomaly"].iloc[gross]  # a gross spike still alerts at the cap
    # A raise per point: only the points given one are judged higher.
    per_point = np.zeros(end - start)
    per_point[gross:] = cap
    mixed = score_segment(detector, ts, values, gap, start, end, per_point)
    np.testing.assert_allclose(mixed["score"].to_numpy()[:gross], plain["score"].to_numpy()[:gross])
    np.testing.assert_allclose(mixed["score"].to_numpy()[gross:], raised["score"].to_numpy()[gross:])


def test_incremental_scoring_takes_the_same_raise(fitted):
    detector, ts, values = fitted
    n = 24 * 16
    state = detector.prepare(ts[:n], values[:n])
    one = detector.score_after(state, ts[n : n + 1], values[n : n + 1] + 5.0, threshold_raise=0.5)
    whole = values[: n + 1].copy()
    whole[n] += 5.0
    gap = np.zeros(n + 1, dtype=bool)
    reference = score_segment(detector, ts, whole, gap, n, n + 1, 0.5)
    assert one["score"][0] == pytest.approx(reference["score"].iloc[0], rel=1e-9)


def moderate_spikes() -> tuple[pd.DatetimeIndex, np.ndarray, list[int]]:
    """Six weeks of an hourly KPI with the same moderate spike every third day after the
    second week (repeated in training, such spikes become normal; feedback gets there sooner)."""
    ts, values = daily_sine(24 * 42, seed=5)
    spikes = list(range(24 * 15 + 11, len(values), 24 * 3))
    values[spikes] += 6.0
    return ts, values, spikes


def test_replayed_false_positives_silence_later_spikes_of_the_same_kind_and_true_positives_do_not():
    ts, values, spikes = moderate_spikes()
    cutoffs = training_cutoffs(len(values), 24 * 14, 24 * 7)
    plain = walk_forward(ts, values, cutoffs, CONFIG)
    flagged = plain.scores["is_anomaly"].to_numpy()
    assert flagged[spikes].sum() >= 2, "the spikes must alert without feedback"

    false_alarms = walk_forward(ts, values, cutoffs, CONFIG, review=Review(lambda _: FALSE_POSITIVE))
    quiet = false_alarms.scores["is_anomaly"].to_numpy()
    assert quiet[spikes].sum() < flagged[spikes].sum()
    assert {label for _, label in false_alarms.labels} == {FALSE_POSITIVE}
    # No look-ahead: everything up to the day after the first false alarm scores as without feedback.
    first = false_alarms.labels[0][0]
    until = int(ts.searchsorted(ts[first] + DAY))
    np.testing.assert_array_equal(
        false_alarms.scores["score"].to_numpy()[:until], plain.scores["score"].to_numpy()[:until]
    )

    confirmed = walk_forward(ts, values, cutoffs, CONFIG, review=Review(lambda _: TRUE_POSITIVE))
    kept = confirmed.scores["is_anomaly"].to_numpy()
    assert kept[spikes].sum() >= flagged[spikes].sum()
