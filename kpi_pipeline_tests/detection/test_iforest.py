import numpy as np
import pytest
from sklearn.base import clone

from kpi_pipeline.detection.iforest import IsolationForestDetector

PARAMS = {
    "n_estimators": 50,
    "max_samples": 128,
    "tail_quantile": 0.9,
    "random_state": 3,
    "min_recurrences": 3,
    "recurrence_margin": 0.8,
    "episode_gap": 2,
    "trim_at": 3.5,
    "incident_spacing": 7,
}


def training_features(n: int = 400) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3))


@pytest.fixture(scope="module")
def fitted() -> IsolationForestDetector:
    return IsolationForestDetector(**PARAMS).fit(training_features())


def test_init_stores_parameters_and_clone_copies_them():
    detector = IsolationForestDetector(**PARAMS)
    assert detector.get_params() == PARAMS
    copy = clone(detector.set_params(n_estimators=20))
    assert copy.get_params() == {**PARAMS, "n_estimators": 20}


def test_fit_returns_self_and_learned_state_ends_in_underscore():
    detector = IsolationForestDetector(**PARAMS)
    before = set(vars(detector))
    assert detector.fit(training_features()) is detector
    learned = set(vars(detector)) - before
    assert learned and all(name.endswith("_") for name in learned)
    assert detector.n_features_in_ == 3
    assert detector.get_params() == PARAMS  # fitting never rewrites parameters


def test_clone_of_a_fitted_detector_is_unfitted(fitted):
    assert not hasattr(clone(fitted), "forest_")


def test_same_random_state_gives_identical_surprises():
    X = training_features()
    probe = np.random.default_rng(1).normal(size=(50, 3)) * 2
    first = IsolationForestDetector(**PARAMS).fit(X).surprise(probe)
    again = IsolationForestDetector(**PARAMS).fit(X).surprise(probe)
    other_seed = IsolationForestDetector(**{**PARAMS, "random_state": 4}).fit(X).surprise(probe)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_seed)


def test_points_far_from_training_are_more_surprising_than_inliers(fitted):
    inliers = np.random.default_rng(2).normal(scale=0.5, size=(50, 3))
    outliers = np.full((5, 3), 8.0) * np.array([1, -1, 1])
    inlier_surprise = fitted.surprise(inliers)
    outlier_surprise = fitted.surprise(outliers)
    assert outlier_surprise.min() > np.quantile(inlier_surprise, 0.99)
    assert outlier_surprise.min() > 1.0  # rarer than the worst 10% of training points
    assert np.all(inlier_surprise >= 0)


def test_rows_with_a_missing_feature_get_zero_surprise(fitted):
    X = np.array([[8.0, 8.0, 8.0], [8.0, np.nan, 8.0], [np.inf, 0.0, 0.0]])
    surprise = fitted.surprise(X)
    assert surprise[0] > 0
    assert surprise[1:].tolist() == [0.0, 0.0]


def test_fit_skips_rows_with_missing_features():
    X = training_features()
    with_gaps = np.vstack([X, np.full((10, 3), np.nan)])
    probe = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(
        IsolationForestDetector(**PARAMS).fit(with_gaps).surprise(probe),
        IsolationForestDetector(**PARAMS).fit(X).surprise(probe),
    )


def test_max_samples_larger_than_the_data_still_fits():
    small = training_features(30)
    detector = IsolationForestDetector(**{**PARAMS, "max_samples": 256}).fit(small)
    assert np.all(np.isfinite(detector.surprise(small)))


@pytest.mark.parametrize("rows", [1, 3, 5000])
def test_raw_scores_are_exactly_sklearns(rows):
    rng = np.random.default_rng(3)
    detector = IsolationForestDetector(random_state=1).fit(rng.standard_normal((400, 3)))
    X = rng.standard_normal((rows, 3)) * 3

    np.testing.assert_array_equal(detector._raw(X), -detector.forest_.score_samples(X))


def test_a_detector_read_back_from_its_state_scores_alike_without_sklearn_objects():
    rng = np.random.default_rng(4)
    detector = IsolationForestDetector(**PARAMS).fit(rng.standard_normal((300, 3)))
    X = rng.standard_normal((7, 3)) * 2
    state = detector.to_state()
    # Plain numbers and arrays only: the sklearn estimator is not part of it.
    forest = state["forest"]
    assert all(
        isinstance(forest[key], np.ndarray) for key in ("tree_sizes", "feature", "threshold", "children", "leaf_depth")
    )

    copy = IsolationForestDetector.from_state(state)

    assert not hasattr(copy, "forest_") and copy.get_params() == detector.get_params()
    np.testing.assert_array_equal(copy._raw(X), detector._raw(X))
    np.testing.assert_array_equal(copy._raw(X[:1]), -detector.forest_.score_samples(X[:1]))
    np.testing.assert_array_equal(copy.surprise(X), detector.surprise(X))
    assert copy.surprise_one(X[0].tolist()) == detector.surprise_one(X[0].tolist())


def test_a_forest_whose_trees_see_a_subset_of_the_features_walks_alike():
    from sklearn.ensemble import IsolationForest

    from kpi_pipeline.detection.iforest import _FlatForest

    rng = np.random.default_rng(5)
    forest = IsolationForest(n_estimators=30, max_features=2, random_state=0).fit(rng.standard_normal((200, 4)))
    X = rng.standard_normal((9, 4)) * 2

    np.testing.assert_array_equal(_FlatForest.of(forest).raw(X), -forest.score_samples(X))


@pytest.mark.parametrize("max_features", [1.0, 2])
def test_one_row_at_a_time_walks_as_sklearn_even_on_a_threshold(max_features):
    """The single-row walk compares float32 values with float32 floors of the thresholds:
    values at a threshold, a float32 step either side of it and far out go where sklearn's do."""
    from sklearn.ensemble import IsolationForest

    from kpi_pipeline.detection.iforest import _FlatForest

    rng = np.random.default_rng(6)
    forest = IsolationForest(n_estimators=40, max_features=max_features, random_state=0).fit(
        rng.standard_normal((300, 4))
    )
    thresholds = np.concatenate([tree.tree_.threshold[tree.tree_.feature >= 0] for tree in forest.estimators_]).astype(
        np.float32
    )
    near = np.concatenate(
        [thresholds, np.nextafter(thresholds, np.float32(np.inf)), np.nextafter(thresholds, np.float32(-np.inf))]
    )
    rows = rng.standard_normal((300, 4)) * 2
    on = rng.random(rows.shape) < 0.7  # most values on or next to a threshold
    rows[on] = rng.choice(near, on.sum())
    rows[:5] = [[np.inf, 0, 0, 0], [-np.inf, 0, 0, 0], [1e30, -1e30, 0, 0], [0, 0, 0, 0], [3e38, 3e38, -3e38, 1]]
    flat = _FlatForest.of(forest)
    single = np.concatenate([flat.raw(row[None, :]) for row in rows])
    np.testing.assert_array_equal(single, -forest.score_samples(rows))
    np.testing.assert_array_equal(single, flat.raw(rows))


def test_one_row_as_floats_gets_the_surprise_of_the_array_path():
    rng = np.random.default_rng(10)
    detector = IsolationForestDetector(random_state=3).fit(rng.standard_normal((400, 3)))
    rows = rng.standard_normal((200, 3)) * 3
    rows[:3] = [[np.nan, 0, 0], [0, np.inf, 0], [5, 5, -5]]
    expected = detector.surprise(rows)
    got = np.array([detector.surprise_one(row) for row in rows.tolist()])
    np.testing.assert_array_equal(got, expected)
    assert got[0] == got[1] == 0.0 and got[2] > 0


def test_no_rows_get_no_surprises_even_on_sklearns_own_path():
    detector = IsolationForestDetector(random_state=3).fit(np.random.default_rng(11).standard_normal((100, 3)))
    detector.flat_ = None  # as when sklearn's internals differ: its score_samples is used
    assert detector.surprise(np.zeros((0, 3))).shape == (0,)
    assert detector.surprise(np.ones((2, 3))).shape == (2,)
