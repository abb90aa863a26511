import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.ensemble import SCORE_COLUMNS, DetectorConfig, EnsembleDetector
from kpi_pipeline.detection import walkforward
from kpi_pipeline.evaluation.backtest import stream_scores
from kpi_pipeline_tests.detection.synthetic import NOISE_SIGMA, daily_sine

N_POINTS = 400
INITIAL = 200
RETRAIN_EVERY = 100
SPIKE = 250  # scored by the first model, then excluded from the second one's training
# Marked gaps are anomalies wherever they are scored; the early one lies before ``initial``.
EARLY_GAP = slice(50, 56)
LATE_GAP = slice(320, 326)


def gappy_series(n_points: int = N_POINTS) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    ts, y = daily_sine(N_POINTS, seed=5)
    y[SPIKE] += 40 * NOISE_SIGMA
    gap = np.zeros(N_POINTS, dtype=bool)
    gap[EARLY_GAP] = gap[LATE_GAP] = True
    y[gap] = np.nan
    return ts[:n_points], y[:n_points], gap[:n_points]


def run(n_points: int = N_POINTS):
    ts, y, gap = gappy_series(n_points)
    return stream_scores(ts, y, initial=INITIAL, retrain_every=RETRAIN_EVERY, gap=gap)


class RecordingDetector(EnsembleDetector):
    """Records what each model was trained on and which points it scored."""

    log: list[dict] = []

    def fit(self, ts, values, exclude=None):
        self.fit_ts_ = pd.DatetimeIndex(ts)
        self.fit_exclude_ = None if exclude is None else np.asarray(exclude, dtype=bool)
        RecordingDetector.log.append({"detector": self, "scored_ts": []})
        return super().fit(ts, values, exclude=exclude)

    def score(self, ts, values, n_context=0, gap=None, threshold_raise=0.0):
        scored = super().score(ts, values, n_context=n_context, gap=gap, threshold_raise=threshold_raise)
        RecordingDetector.log[-1]["scored_ts"].extend(scored["ts"])
        return scored


@pytest.fixture(scope="module")
def recorded():
    RecordingDetector.log = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(walkforward, "EnsembleDetector", RecordingDetector)
        result = run()
    return result, list(RecordingDetector.log)


def test_one_row_per_input_point_in_input_order(recorded):
    result, _ = recorded
    ts, y, _ = gappy_series()
    assert len(result.scores) == N_POINTS
    assert list(result.scores["ts"]) == list(ts)
    np.testing.assert_array_equal(result.scores["value"], y)  # NaN compares equal here
    assert set(SCORE_COLUMNS) | {"event_id", "alert"} <= set(result.scores.columns)
    assert result.retrains == 2


def test_no_point_before_initial_is_flagged(recorded):
    result, _ = recorded
    before = result.scores.iloc[:INITIAL]
    assert not before["is_anomaly"].any() and (before["score"] == 0).all()
    assert before["expected"].isna().all()
    # The same kind of gap is an incident once it is scored: one anomaly, where it starts.
    late_gap = result.scores.iloc[LATE_GAP]
    assert late_gap["is_anomaly"].tolist() == [True] + [False] * 5
    assert late_gap["flagged_by"].iloc[0] == "gap"
    assert result.scores["alert"].iloc[LATE_GAP].tolist() == [True] + [False] * 5


def test_each_point_is_scored_only_by_a_model_trained_before_it(recorded):
    result, log = recorded
    ts, _, _ = gappy_series()
    assert [len(entry["detector"].fit_ts_) for entry in log] == [200, 300]
    scored_by_someone = []
    for entry in log:
        trained_until = entry["detector"].fit_ts_.max()
        assert entry["scored_ts"] and min(entry["scored_ts"]) > trained_until
        scored_by_someone.extend(entry["scored_ts"])
    assert scored_by_someone == list(ts[INITIAL:])  # each point scored once, by one model


def test_confidently_flagged_points_are_excluded_from_later_training(recorded):
    _, log = recorded
    assert log[0]["detector"].fit_exclude_.sum() == 0
    later = log[1]["detector"].fit_exclude_
    assert later[SPIKE] and later[:INITIAL].sum() == 0
    assert later.sum() < 10  # only the confident anomalies, not the whole block


def test_appending_future_points_does_not_change_earlier_scores(recorded):
    result, _ = recorded
    pd.testing.assert_frame_equal(run(350).scores, result.scores.iloc[:350])


def test_a_history_too_short_for_a_model_is_left_unscored():
    ts, y = daily_sine(120, seed=2)
    config = DetectorConfig(min_train_points=48)
    result = stream_scores(ts, y, initial=20, retrain_every=40, config=config)
    assert result.retrains == 2  # cutoffs 20, 60, 100: the first has only 20 points
    assert result.scores["expected"].iloc[:60].isna().all()
    assert result.scores["expected"].iloc[60:].notna().all()
    assert len(result.scores) == 120


def test_fewer_points_than_initial_are_all_unscored():
    ts, y = daily_sine(50)
    result = stream_scores(ts, y, initial=100, retrain_every=20)
    assert result.retrains == 0 and len(result.scores) == 50
    assert not result.scores["is_anomaly"].any()
