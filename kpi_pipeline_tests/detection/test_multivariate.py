"""The group detector (kpi_pipeline/detection/multivariate.py) on small synthetic residuals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.artifacts import MAGIC
from kpi_pipeline.detection.multivariate import (
    GroupConfig,
    GroupDetector,
    InsufficientGroupHistory,
    group_events,
    member_residuals,
)

MEMBERS = ("orders", "revenue", "sessions")
NOISE = 0.05


def residuals(n: int, seed: int = 0, shared: float = 0.5) -> np.ndarray:
    """Log residuals of three members, each ``NOISE`` spread, ``shared`` of the variance common."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, len(MEMBERS)))
    return NOISE * (np.sqrt(shared) * common + np.sqrt(1 - shared) * own)


def as_values(r: np.ndarray, expected: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Values and expected values whose log ratio is ``r``."""
    return expected * np.exp(r), np.full(r.shape, expected)


def fitted(train: np.ndarray, **config) -> GroupDetector:
    return GroupDetector(MEMBERS, GroupConfig(**config)).fit(train, np.ones(len(MEMBERS), dtype=bool))


# One member up 2.5 spreads and another down as much: neither is surprising alone (a normal
# point is beyond 2.5 spreads about once in 80), together they break the members' correlation.
JOINT_MOVE = np.array([2.5, -2.5, 0.0]) * NOISE


def test_a_joint_move_of_several_members_fires_and_names_the_members_that_moved():
    detector = fitted(residuals(2000))
    value, expected = as_values(np.vstack([np.zeros(3), JOINT_MOVE]))
    judgement = detector.judge(value, expected)
    assert judgement.fired.tolist() == [False, True]
    assert judgement.moved[1].tolist() == [True, True, False]
    assert np.all(np.abs(judgement.z[1, :2]) > 2.0) and np.all(np.abs(judgement.z[1, :2]) < 3.0)


def test_normal_timestamps_rarely_fire():
    detector = fitted(residuals(2000))
    value, expected = as_values(residuals(5000, seed=1))
    assert detector.judge(value, expected).fired.mean() < 0.002


def test_incidents_in_the_training_window_do_not_teach_the_detector_they_are_normal():
    train = residuals(2000)
    incidents = np.arange(100, 2000, 40)  # 48 timestamps, 2.4% of the window
    train[incidents] += JOINT_MOVE * 1.5
    detector = fitted(train)
    assert detector.trimmed_ >= len(incidents)
    value, expected = as_values(JOINT_MOVE[None, :])
    assert detector.judge(value, expected).fired.tolist() == [True]


def test_a_missing_member_counts_as_not_moved():
    detector = fitted(residuals(2000))
    value, expected = as_values(np.vstack([JOINT_MOVE, JOINT_MOVE]))
    value[1, 1] = np.nan  # the member that went down is missing
    judgement = detector.judge(value, expected)
    assert judgement.fired.tolist() == [True, False]
    assert np.isnan(judgement.z[1, 1])


def test_members_that_moved_are_those_near_the_largest_move():
    detector = fitted(residuals(2000), moved_share=0.5, moved_z=1.0)
    z = np.array([[4.0, -2.1, 0.5], [4.0, 1.9, -0.2], [0.8, 0.6, 0.1]])
    assert detector.moved(z).tolist() == [[True, True, False], [True, False, False], [False, False, False]]


def test_the_stored_artifact_is_data_and_judges_exactly_as_the_fitted_detector():
    detector = fitted(residuals(1000))
    artifact = detector.to_artifact()
    assert artifact[: len(MAGIC)] == MAGIC
    loaded = GroupDetector.from_artifact(artifact)
    value, expected = as_values(residuals(300, seed=2) + JOINT_MOVE * (np.arange(300) % 50 == 0)[:, None])
    before, after = detector.judge(value, expected), loaded.judge(value, expected)
    np.testing.assert_array_equal(before.score, after.score)
    np.testing.assert_array_equal(before.moved, after.moved)
    assert loaded.members == MEMBERS


def test_fit_needs_enough_complete_timestamps_and_the_right_shape():
    train = residuals(200)
    train[::2, 0] = np.nan  # 100 complete timestamps
    with pytest.raises(InsufficientGroupHistory, match="100 timestamps"):
        fitted(train, min_train_points=168)
    with pytest.raises(ValueError, match="3 members"):
        GroupDetector(MEMBERS).fit(residuals(500)[:, :2], np.ones(2, dtype=bool))


def test_member_residuals_are_log_ratios_in_log_space_and_differences_elsewhere():
    value = np.array([[110.0, 5.0], [90.0, -1.0]])
    expected = np.array([[100.0, 3.0], [100.0, 1.0]])
    r = member_residuals(value, expected, np.array([True, False]))
    np.testing.assert_allclose(r, [[np.log(1.1), 2.0], [np.log(0.9), -2.0]])


def test_group_events_merge_close_firing_runs_and_name_each_member_at_its_peak():
    ts = pd.date_range("2025-01-01", periods=10, freq="h", tz="UTC")
    score = np.array([0.1, 0.6, 0.7, 0.2, 0.2, 0.8, 0.1, 0.1, 0.1, 0.9])
    z = np.zeros((10, 2))
    z[[1, 2, 5, 9], 0] = [3.0, 4.5, 2.0, 3.0]
    z[[1, 2, 5, 9], 1] = [-2.0, -1.5, -3.5, -2.5]
    moved = np.abs(z) >= 1.0
    relative = z / 100
    events = group_events("checkout", ts, score, z, relative, ("orders", "revenue"), moved, merge_gap=2)
    assert events["start"].tolist() == [ts[1], ts[9]]
    assert events["end"].tolist() == [ts[5], ts[9]]
    assert events["points"].tolist() == [3, 1]
    assert events["event_id"].iloc[0] == f"group:checkout@{ts[1].isoformat()}"
    assert events["peak_score"].tolist() == [0.8, 0.9]
    named = json.loads(events["members"].iloc[0])
    assert [(m["kpi"], m["z"], m["at"]) for m in named] == [
        ("orders", 4.5, ts[2].isoformat()),
        ("revenue", -3.5, ts[5].isoformat()),
    ]
