"""Isolation Forest over scale-free features, with a calibrated tail probability.

Scored against its own training distribution, a forest's ``contamination`` threshold flags a fixed
share of normal points by construction. Instead we learn the distribution of the forest's raw
scores on training points and report how rare a new point's raw score is (``ExceedanceTail``).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest

from kpi_pipeline.detection.calibration import NO_RECURRENCE_CAP, ExceedanceTail


class IsolationForestDetector(BaseEstimator):
    """Score direction: ``surprise`` and the public score grow with anomalousness."""

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int = 256,
        tail_quantile: float = 0.9,
        random_state: int | None = 0,
        min_recurrences: int = 3,
        recurrence_margin: float = 0.8,
        episode_gap: int = 2,
    ):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.tail_quantile = tail_quantile
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin
        self.episode_gap = episode_gap
        self.random_state = random_state

    def __setstate__(self, state: dict) -> None:
        # Detectors pickled before recurrences existed: their calibration has no cap.
        self.__dict__.update(NO_RECURRENCE_CAP)
        super().__setstate__(state)

    def fit(self, X: np.ndarray, y=None) -> "IsolationForestDetector":
        X = _finite_rows(X)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
        ).fit(X)
        self.calibration_ = ExceedanceTail(
            self.tail_quantile,
            min_recurrences=self.min_recurrences,
            recurrence_margin=self.recurrence_margin,
            episode_gap=self.episode_gap,
        ).fit(self._raw(X))
        self.n_features_in_ = X.shape[1]
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """The forest's anomaly score, ``2 ** -(mean path length / c(max_samples))``: sklearn's
        ``-score_samples`` (which is higher for normal points), so higher = more anomalous.

        The same arithmetic as sklearn's, without its per-tree dispatch, input checks and thread
        pool, which cost ~15 ms per call whatever the number of rows (real-time scoring judges
        a few rows at a time). Path lengths are summed tree by tree in the same order, so the
        result is identical (tested).
        """
        forest = self.forest_
        if not hasattr(forest, "_decision_path_lengths"):  # sklearn internals differ: slow path
            return -forest.score_samples(X)
        X = np.ascontiguousarray(X, dtype=np.float32)
        depths = np.zeros(len(X))
        every_feature = forest._max_features == X.shape[1]
        for tree, features, path_lengths, leaf_lengths in zip(
            forest.estimators_,
            forest.estimators_features_,
            forest._decision_path_lengths,
            forest._average_path_length_per_tree,
            strict=True,
        ):
            leaves = tree.tree_.apply(X if every_feature else np.ascontiguousarray(X[:, features]))
            depths += path_lengths[leaves] + leaf_lengths[leaves] - 1.0
        from sklearn.ensemble._iforest import _average_path_length

        denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        return 2 ** -np.divide(depths, denominator, out=np.ones_like(depths),
                               where=denominator != 0)

    def surprise(self, X: np.ndarray) -> np.ndarray:
        """-log10 tail probability per row; rows with a missing feature get 0 (no evidence)."""
        X = np.asarray(X, dtype=float)
        out = np.zeros(len(X))
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            out[ok] = self.calibration_.surprise(self._raw(X[ok]))
        return out


def _finite_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    return X[np.isfinite(X).all(axis=1)]
