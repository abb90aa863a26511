"""Isolation Forest over scale-free features, with a calibrated tail probability.

Scored against its own training distribution, a forest's ``contamination`` threshold flags a fixed
share of normal points by construction. Instead we learn the distribution of the forest's raw
scores on training points and report how rare a new point's raw score is (``ExceedanceTail``).
"""

from __future__ import annotations

import math

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
        trim_at: float | None = None,
    ):
        self.trim_at = trim_at
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.tail_quantile = tail_quantile
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin
        self.episode_gap = episode_gap
        self.random_state = random_state

    def __setstate__(self, state: dict) -> None:
        # Detectors pickled before recurrences existed: their calibration has no cap.
        self.__dict__.update(NO_RECURRENCE_CAP, trim_at=None)
        super().__setstate__(state)

    def fit(self, X: np.ndarray, y=None) -> "IsolationForestDetector":
        X = _finite_rows(X)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
        ).fit(X)
        self.flat_ = _FlatForest.of(self.forest_)
        self.calibration_ = ExceedanceTail(
            self.tail_quantile,
            min_recurrences=self.min_recurrences,
            recurrence_margin=self.recurrence_margin,
            episode_gap=self.episode_gap,
            trim_at=self.trim_at,
        ).fit(self._raw(X))
        self.n_features_in_ = X.shape[1]
        return self

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("flat_", None)  # rebuilt from the trees on first use
        return state

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """The forest's anomaly score, ``2 ** -(mean path length / c(max_samples))``: sklearn's
        ``-score_samples`` (which is higher for normal points), so higher = more anomalous.

        The same arithmetic as sklearn's without its per-tree dispatch, input checks and thread
        pool, which cost ~15 ms per call whatever the number of rows (real-time scoring judges
        a row or a few at a time): the trees are walked together, level by level, in arrays
        (``_FlatForest``), and the path lengths summed tree by tree in sklearn's order, so the
        result is identical (tested).
        """
        if "flat_" not in self.__dict__:  # unpickled
            self.flat_ = _FlatForest.of(self.forest_)
        flat = self.flat_
        if flat is None:  # sklearn internals differ: its own (slow) path
            return -self.forest_.score_samples(X)
        return flat.raw(X)

    def surprise(self, X: np.ndarray) -> np.ndarray:
        """-log10 tail probability per row; rows with a missing feature get 0 (no evidence)."""
        X = np.asarray(X, dtype=float)
        ok = np.isfinite(X).all(axis=1)
        if len(X) and ok.all():
            return self.calibration_.surprise(self._raw(X))
        out = np.zeros(len(X))
        if ok.any():
            out[ok] = self.calibration_.surprise(self._raw(X[ok]))
        return out

    def surprise_one(self, row: list[float]) -> float:
        """``surprise`` of one row, as plain floats (real-time scoring's usual case)."""
        if not all(map(math.isfinite, row)):
            return 0.0
        return self.calibration_.surprise_one(float(self._raw(np.array([row], dtype=float))[0]))


def _finite_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    return X[np.isfinite(X).all(axis=1)]


class _FlatForest:
    """A fitted ``IsolationForest``'s trees in flat arrays (every tree's nodes one after the
    other), walked for all trees at once: a few numpy operations per level instead of a call
    per tree."""

    def __init__(self, roots, feature, threshold, children, leaf_depth, max_depth, denominator):
        self.roots, self.feature, self.threshold = roots, feature, threshold
        self.children, self.leaf_depth = children, leaf_depth
        self.max_depth, self.denominator = max_depth, denominator

    @classmethod
    def of(cls, forest) -> "_FlatForest | None":
        needed = ("_decision_path_lengths", "_average_path_length_per_tree", "estimators_features_")
        if not all(hasattr(forest, name) for name in needed):
            return None
        from sklearn.ensemble._iforest import _average_path_length

        trees = [estimator.tree_ for estimator in forest.estimators_]
        # As sklearn: trees see a subset of the columns only when features were sampled.
        subsets = forest.bootstrap_features or forest._max_features != forest.n_features_in_
        sizes = np.array([tree.node_count for tree in trees], dtype=np.intp)
        roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        feature, threshold, right, left, leaf_depth = [], [], [], [], []
        for root, tree, features, path_lengths, leaf_lengths in zip(
            roots, trees, forest.estimators_features_, forest._decision_path_lengths,
            forest._average_path_length_per_tree, strict=True,
        ):
            n = tree.node_count
            split = tree.children_left[:n] >= 0
            own = root + np.arange(n)
            columns = np.asarray(features) if subsets else np.arange(forest.n_features_in_)
            feature.append(np.where(split, columns[np.where(split, tree.feature, 0)], 0))
            threshold.append(tree.threshold[:n])
            # Leaves lead to themselves, so a walk that has reached one stays there.
            left.append(np.where(split, root + tree.children_left[:n], own))
            right.append(np.where(split, root + tree.children_right[:n], own))
            leaf_depth.append(path_lengths + leaf_lengths - 1.0)
        # children[2 * node + went_left]: the next node.
        children = np.empty(2 * int(sizes.sum()), dtype=np.intp)
        children[0::2], children[1::2] = np.concatenate(right), np.concatenate(left)
        return cls(
            roots[:, None], np.concatenate(feature).astype(np.intp), np.concatenate(threshold),
            children, np.concatenate(leaf_depth), max(tree.max_depth for tree in trees),
            len(trees) * _average_path_length([forest._max_samples]),
        )

    def raw(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 1:
            return self._raw_row(np.asarray(X[0], dtype=np.float32).astype(float))
        # sklearn compares float32 inputs with float64 thresholds.
        X = np.asarray(X, dtype=np.float32).astype(float)
        n_rows, n_features = X.shape
        values = X.ravel()
        offsets = np.arange(n_rows, dtype=np.intp)[None, :] * n_features
        node = np.repeat(self.roots, n_rows, axis=1)  # (tree, row)
        for _ in range(self.max_depth):
            went_left = values[offsets + self.feature[node]] <= self.threshold[node]
            node = self.children[2 * node + went_left]
        # Summed tree by tree (cumsum is sequential), as sklearn adds each tree's path lengths.
        depths = np.cumsum(self.leaf_depth[node], axis=0)[-1] if len(node) else np.zeros(n_rows)
        return self._score(depths)

    def _raw_row(self, x: np.ndarray) -> np.ndarray:
        """``raw`` of one row (float32 values as float64): the same walk with the fewest
        operations per level, which is what one row costs."""
        node, feature, threshold = self.roots[:, 0], self.feature, self.threshold
        for _ in range(self.max_depth):
            node = self.children[2 * node + (x[feature[node]] <= threshold[node])]
        return self._score(np.cumsum(self.leaf_depth[node])[-1:])  # as sklearn sums them

    def _score(self, depths: np.ndarray) -> np.ndarray:
        """``2 ** -(summed path length / c(max_samples))``, 1 where that is 0."""
        return 2 ** -np.divide(depths, self.denominator, out=np.ones_like(depths),
                               where=self.denominator != 0)
