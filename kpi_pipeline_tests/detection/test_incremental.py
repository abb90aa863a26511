"""``EnsembleDetector.prepare`` + ``score_after`` (real-time scoring's incremental path) must
give the numbers ``score`` gives the same points with the same context."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.ensemble import SCORE_COLUMNS, DetectorConfig, EnsembleDetector
from kpi_pipeline_tests.detection.synthetic import NOISE_SIGMA, daily_sine

TRAIN = 28 * 24  # enough for the sustained component
SCORED = 5 * 24
CONFIG = DetectorConfig(scale_window=96)
NUMERIC = ["value", "expected", "lower", "upper", "prophet_score", "iforest_score", "score"]


def incidents(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scored part with one of everything: a spike, missing values, a marked gap, a stuck
    sensor, a lasting level shift and a subtle sustained dip."""
    y = y.copy()
    gap = np.zeros(len(y), dtype=bool)
    at = TRAIN
    y[at + 5] += 9 * NOISE_SIGMA
    y[at + 12] = np.nan
    y[at + 20 : at + 26] = np.nan
    gap[at + 20 : at + 26] = True
    y[at + 30 : at + 42] = y[at + 30]
    y[at + 50 : at + 70] += 6 * NOISE_SIGMA
    y[at + 80 : at + 95] -= 2.5 * NOISE_SIGMA
    return y, gap


@pytest.fixture(scope="module", params=["log space", "linear", "no sustained"])
def case(request):
    ts, y = daily_sine(TRAIN + SCORED, seed=3)
    config = CONFIG
    if request.param == "linear":
        y = y - 105.0  # values below zero: modelled as they are
    if request.param == "no sustained":
        config = dataclasses.replace(CONFIG, sustained_window=0)
    detector = EnsembleDetector(config, random_state=0).fit(ts[:TRAIN], y[:TRAIN])
    assert detector.log_space_ == (request.param != "linear")
    assert hasattr(detector, "sustained_tail_") == (request.param != "no sustained")
    y, gap = incidents(y)
    return detector, ts, y, gap


def reference(detector, ts, y, gap, start: int, end: int) -> pd.DataFrame:
    context = min(start, detector.context_points)
    window = slice(start - context, end)
    return detector.score(ts[window], y[window], n_context=context, gap=gap[window])


def assert_same(incremental: dict, expected: pd.DataFrame) -> None:
    got = pd.DataFrame(incremental)[SCORE_COLUMNS]
    assert list(got.columns) == SCORE_COLUMNS
    assert (got["ts"].to_numpy() == expected["ts"].to_numpy()).all()
    for name in NUMERIC:
        np.testing.assert_allclose(
            got[name].to_numpy(float),
            expected[name].to_numpy(float),
            rtol=1e-9,
            atol=1e-12,
            err_msg=name,
        )
    for name in ["is_anomaly", "severity", "flagged_by"]:
        assert got[name].tolist() == expected[name].tolist(), name


def test_scoring_after_a_prepared_context_matches_scoring_with_it(case):
    detector, ts, y, gap = case
    context = detector.context_points
    flagged = 0
    for split in range(TRAIN - 2, TRAIN + SCORED - 3, 3):
        state = detector.prepare(ts[split - context : split], y[split - context : split])
        got = detector.score_after(state, ts[split : split + 3], y[split : split + 3], gap[split : split + 3])
        expected = reference(detector, ts, y, gap, split, split + 3)
        assert_same(got, expected)
        flagged += int(expected["is_anomaly"].sum())
    assert flagged >= 10  # the incidents were judged, not only quiet points


def test_only_the_kept_points_of_a_state_are_read(case):
    """The points after ``keep`` are replaced by the new ones (re-cleaned rows), whatever the
    state held for them."""
    detector, ts, y, gap = case
    context = detector.context_points
    for split in (TRAIN + 8, TRAIN + 33, TRAIN + 55, TRAIN + 85):
        stale = y[split - context : split + 4].copy()
        stale[-6:] += 50 * NOISE_SIGMA
        state = detector.prepare(ts[split - context : split + 4], stale)
        got = detector.score_after(
            state, ts[split - 2 : split + 2], y[split - 2 : split + 2], gap[split - 2 : split + 2], keep=context - 2
        )
        assert_same(got, reference(detector, ts, y, gap, split - 2, split + 2))


def test_smoothing_reads_the_states_last_combined_surprises(case):
    detector, ts, y, gap = case
    smoothed = EnsembleDetector(dataclasses.replace(detector.config, smoothing_window=4))
    smoothed.__dict__.update({k: v for k, v in detector.__dict__.items() if k.endswith("_")})
    context = smoothed.context_points
    for split in (TRAIN + 6, TRAIN + 52, TRAIN + 81):
        state = smoothed.prepare(ts[split - context : split], y[split - context : split])
        got = smoothed.score_after(state, ts[split : split + 2], y[split : split + 2], gap[split : split + 2])
        assert_same(got, reference(smoothed, ts, y, gap, split, split + 2))


def test_an_empty_state_scores_points_with_no_context(case):
    detector, ts, y, gap = case
    state = detector.prepare(ts[:0], y[:0])
    at = slice(TRAIN, TRAIN + 30)
    got = detector.score_after(state, ts[at], y[at], gap[at])
    assert_same(got, detector.score(ts[at], y[at], gap=gap[at]))


def test_one_state_scores_request_after_request_alike(case):
    """What a state memoises on the first request (windows within it, forecasts) serves later
    ones with other values, other slots and fewer kept points."""
    detector, ts, y, gap = case
    context, split = detector.context_points, TRAIN + 52
    state = detector.prepare(ts[split - context : split], y[split - context : split], ahead=4)
    assert sum(key[0] == "yhat" for key in state.memo) == 4
    for keep_back, ahead, bump in [
        (0, 1, 0.0),
        (0, 1, 7.0),
        (0, 3, -4.0),
        (3, 2, 2.0),
        (0, 6, 0.0),
        (3, 5, 9.0),
        (0, 1, 0.0),
    ]:
        start = split - keep_back
        values = y[start : split + ahead].copy()
        values[-1] += bump * NOISE_SIGMA
        shifted = y.copy()
        shifted[start : split + ahead] = values
        got = detector.score_after(
            state, ts[start : split + ahead], values, gap[start : split + ahead], keep=context - keep_back
        )
        assert_same(got, reference(detector, ts, shifted, gap, start, split + ahead))


def test_with_smoothing_every_point_of_the_state_is_kept(case):
    detector, ts, y, gap = case
    smoothed = EnsembleDetector(dataclasses.replace(detector.config, smoothing_window=3))
    smoothed.__dict__.update({k: v for k, v in detector.__dict__.items() if k.endswith("_")})
    state = smoothed.prepare(ts[TRAIN - 100 : TRAIN], y[TRAIN - 100 : TRAIN])

    with pytest.raises(ValueError, match="keeps every point"):
        smoothed.score_after(state, ts[TRAIN - 1 : TRAIN + 1], y[TRAIN - 1 : TRAIN + 1], keep=99)


def test_a_huge_deviation_gives_an_infinite_spread_not_an_error():
    from kpi_pipeline.detection.ensemble import _sample_std

    assert np.isinf(_sample_std([1.0, 2.0, 1e200, 3.0]))
    assert np.isnan(_sample_std([1.0, np.nan])) and _sample_std([1.0, np.nan, 3.0]) == np.std([1.0, 3.0], ddof=1)


def test_many_points_after_a_state_slide_every_window_past_it(case):
    """Sixty points: every window (the sustained baseline's too) ends up over new points only,
    incidents included."""
    detector, ts, y, gap = case
    context, split = detector.context_points, TRAIN + 2
    state = detector.prepare(ts[split - context : split], y[split - context : split])
    at = slice(split, split + 60)
    got = detector.score_after(state, ts[at], y[at], gap[at])
    assert_same(got, reference(detector, ts, y, gap, split, split + 60))


@pytest.mark.parametrize("window, min_periods", [(1, 1), (4, 1), (8, 3), (48, 1), (1000, 24)])
def test_rolling_medians_match_pandas(window, min_periods):
    from kpi_pipeline.detection.ensemble import _RollingMedian, _Sequence

    rng = np.random.default_rng(window)
    values = rng.normal(size=300).round(1)  # ties, too
    values[rng.choice(300, 40, replace=False)] = np.nan
    expected = pd.Series(values).rolling(window, min_periods=min_periods).median().to_numpy()
    for keep in (0, 5, 150):
        for first_end in (keep - 20, keep, keep + 1):
            sequence = _Sequence(values[:keep].tolist(), keep)
            for value in values[keep:].tolist():
                sequence.append(value)
            medians = _RollingMedian(sequence, window, min_periods, first_end, {}, "x")
            for end in range(max(first_end, 1), 300, 7):
                np.testing.assert_equal(medians.at(end), expected[end - 1], err_msg=str(end))


@pytest.mark.parametrize("smoothing", [1, 3])
def test_reported_points_score_as_when_every_point_is_reported(case, smoothing):
    detector, ts, y, gap = case
    if smoothing > 1:
        smoothed = EnsembleDetector(dataclasses.replace(detector.config, smoothing_window=3))
        smoothed.__dict__.update({k: v for k, v in detector.__dict__.items() if k.endswith("_")})
        detector = smoothed
    context = detector.context_points
    for split in (TRAIN + 2, TRAIN + 28, TRAIN + 47):
        state = detector.prepare(ts[split - context : split], y[split - context : split])
        at = slice(split, split + 9)
        every = detector.score_after(state, ts[at], y[at], gap[at])
        report = np.array([1, 4, 5, 8])
        some = detector.score_after(state, ts[at], y[at], gap[at], report=report)
        assert_same(some, pd.DataFrame({name: np.asarray(column)[report] for name, column in every.items()}))


def test_reported_positions_must_increase(case):
    detector, ts, y, gap = case
    state = detector.prepare(ts[TRAIN - 100 : TRAIN], y[TRAIN - 100 : TRAIN])
    at = slice(TRAIN, TRAIN + 3)
    for report in ([2, 1], [1, 1]):
        with pytest.raises(ValueError, match="must increase"):
            detector.score_after(state, ts[at], y[at], gap[at], report=report)
    listed = detector.score_after(state, list(ts[at]), y[at], gap[at], report=[0, 2])
    assert listed["ts"] == [ts[TRAIN], ts[TRAIN + 2]]
