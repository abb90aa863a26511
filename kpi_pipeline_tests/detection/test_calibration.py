import numpy as np
import pytest

from kpi_pipeline.detection.calibration import (
    ExceedanceTail,
    score_from_surprise,
    surprise_from_score,
)

N_TRAIN = 2000


def training_values(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "light":
        return np.abs(rng.normal(size=N_TRAIN))
    return rng.pareto(2.0, size=N_TRAIN)  # heavy tail: the fitted GPD shape is positive


@pytest.fixture(scope="module", params=["light", "heavy"])
def tail(request) -> tuple[ExceedanceTail, np.ndarray]:
    values = training_values(request.param)
    return ExceedanceTail().fit(values), values


def test_surprise_is_monotone_non_decreasing_in_the_value(tail):
    fitted, values = tail
    grid = np.sort(np.concatenate([values, np.linspace(-1.0, 3 * values.max(), 5000)]))
    surprise = fitted.surprise(grid)
    assert np.all(np.diff(surprise) >= -1e-12)
    assert surprise[0] == pytest.approx(0.0, abs=1e-12)


def test_surprise_is_minus_log10_of_the_empirical_rate_inside_the_body(tail):
    fitted, values = tail
    for q in (0.3, 0.5, 0.8):
        v = np.quantile(values, q)
        rate = np.mean(values >= v)
        assert fitted.surprise(np.array([v]))[0] == pytest.approx(-np.log10(rate), abs=0.01)


def test_surprise_keeps_growing_far_in_the_tail(tail):
    fitted, values = tail
    far = np.array([20.0, 40.0, 80.0]) * values.max()
    surprise = fitted.surprise(far)
    assert np.all(np.isfinite(surprise))
    assert np.all(np.diff(surprise) > 0)
    assert surprise[0] > -np.log10(1.0 / N_TRAIN)  # beyond anything the data alone can say


def test_surprise_does_not_saturate_for_extreme_values():
    fitted = ExceedanceTail().fit(training_values("light"))
    assert np.all(np.diff(fitted.surprise(np.array([1e3, 1e4, 1e6]))) > 0)


def test_surprise_of_a_value_does_not_depend_on_the_other_values_scored_with_it():
    fitted = ExceedanceTail().fit(training_values("light"))
    value = fitted.quantile(0.999)  # beyond the largest training value
    alone = fitted.surprise(np.array([value]))[0]
    with_others = fitted.surprise(np.array([value, 0.0]))[0]
    assert alone == pytest.approx(with_others)
    assert alone == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("probability", [0.5, 0.95, 0.99])
def test_quantile_and_surprise_agree(tail, probability):
    fitted, _ = tail
    value = fitted.quantile(probability)
    surprise = fitted.surprise(np.array([value]))[0]
    assert surprise == pytest.approx(-np.log10(1.0 - probability), abs=0.1)


def test_nan_stays_nan():
    fitted = ExceedanceTail().fit(training_values("light"))
    out = fitted.surprise(np.array([np.nan, 1.0]))
    assert np.isnan(out[0]) and np.isfinite(out[1])


def test_fit_ignores_non_finite_values_and_refuses_none():
    values = training_values("light")
    with_junk = np.concatenate([values, [np.nan, np.inf]])
    probe = np.array([0.5, 2.0, 5.0])
    np.testing.assert_allclose(
        ExceedanceTail().fit(with_junk).surprise(probe),
        ExceedanceTail().fit(values).surprise(probe),
    )
    with pytest.raises(ValueError):
        ExceedanceTail().fit(np.array([np.nan]))


def test_constant_training_values_still_give_a_finite_increasing_tail():
    fitted = ExceedanceTail(scale_floor=1e-6).fit(np.zeros(100))
    surprise = fitted.surprise(np.array([0.0, 1e-6, 1e-5]))
    assert surprise[0] < 1.0
    assert np.all(np.isfinite(surprise)) and np.all(np.diff(surprise) > 0)


# -- public score ------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [2.0, 5.0])
def test_score_is_one_half_at_the_threshold(threshold):
    assert score_from_surprise(threshold, threshold) == pytest.approx(0.5)


def test_score_lies_in_unit_interval_and_grows_with_surprise():
    surprise = np.array([-1.0, 0.0, 1.0, 5.0, 50.0, 300.0])
    score = score_from_surprise(surprise, 5.0)
    assert score[0] == 0.0 and score[1] == 0.0
    assert np.all((score >= 0) & (score < 1))
    assert np.all(np.diff(score[1:]) > 0)


def test_score_and_surprise_are_inverses():
    surprise = np.array([0.0, 0.3, 5.0, 17.0, 250.0])
    round_trip = surprise_from_score(score_from_surprise(surprise, 5.0), 5.0)
    np.testing.assert_allclose(round_trip, surprise)
    score = np.array([0.0, 0.1, 0.5, 0.9, 0.99])
    np.testing.assert_allclose(score_from_surprise(surprise_from_score(score, 5.0), 5.0), score)
