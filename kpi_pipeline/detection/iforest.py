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

from kpi_pipeline.detection.calibration import ExceedanceTail


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
        incident_spacing: int | None = None,
    ):
        self.trim_at = trim_at
        self.incident_spacing = incident_spacing
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.tail_quantile = tail_quantile
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin
        self.episode_gap = episode_gap
        self.random_state = random_state

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
            incident_spacing=self.incident_spacing,
        ).fit(self._raw(X))
        self.n_features_in_ = X.shape[1]
        return self

    def to_state(self) -> dict:
        """The fitted detector as data (``artifacts.pack``): settings, the trees as arrays
        (``_FlatForest``) and the calibration. The sklearn estimator is not kept: scoring walks
        the arrays."""
        if self.flat_ is None:
            raise TypeError(
                "this scikit-learn's IsolationForest cannot be stored as arrays; use the "
                "version pinned in pyproject.toml"
            )
        return {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "forest": self.flat_.to_state(),
            "calibration": self.calibration_.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "IsolationForestDetector":
        """The detector ``to_state`` described, without ``forest_`` (its trees are ``flat_``)."""
        detector = cls(**state["params"])
        detector.n_features_in_ = int(state["n_features_in"])
        detector.flat_ = _FlatForest.from_state(state["forest"])
        detector.calibration_ = ExceedanceTail.from_state(state["calibration"])
        return detector

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """The forest's anomaly score, ``2 ** -(mean path length / c(max_samples))``: sklearn's
        ``-score_samples`` (which is higher for normal points), so higher = more anomalous.

        The same arithmetic as sklearn's without its per-tree dispatch, input checks and thread
        pool, which cost ~15 ms per call whatever the number of rows (real-time scoring judges
        a row or a few at a time): the trees are walked together, level by level, in arrays
        (``_FlatForest``), and the path lengths summed tree by tree in sklearn's order, so the
        result is identical (tested).
        """
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
            roots,
            trees,
            forest.estimators_features_,
            forest._decision_path_lengths,
            forest._average_path_length_per_tree,
            strict=True,
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
            roots[:, None],
            np.concatenate(feature).astype(np.intp),
            np.concatenate(threshold),
            children,
            np.concatenate(leaf_depth),
            max(tree.max_depth for tree in trees),
            float(len(trees) * _average_path_length([forest._max_samples])[0]),
        )

    def to_state(self) -> dict:
        """The arrays, exact and as narrow as they go: node indices within their tree, small
        integers in the smallest type that holds them."""
        sizes = np.diff(np.append(self.roots[:, 0], len(self.threshold)))
        local = self.children - np.repeat(self.roots[:, 0], 2 * sizes)
        return {
            "tree_sizes": sizes.astype(np.min_scalar_type(int(sizes.max()))),
            "feature": self.feature.astype(np.min_scalar_type(int(self.feature.max()))),
            "threshold": self.threshold,
            "children": local.astype(np.min_scalar_type(int(local.max()))),
            "leaf_depth": self.leaf_depth,
            "max_depth": self.max_depth,
            "denominator": self.denominator,
        }

    @classmethod
    def from_state(cls, state: dict) -> "_FlatForest":
        sizes = np.asarray(state["tree_sizes"], dtype=np.intp)
        roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        children = np.asarray(state["children"], dtype=np.intp) + np.repeat(roots, 2 * sizes)
        return cls(
            roots[:, None],
            np.asarray(state["feature"], dtype=np.intp),
            np.asarray(state["threshold"], dtype=float),
            children,
            np.asarray(state["leaf_depth"], dtype=float),
            int(state["max_depth"]),
            float(state["denominator"]),
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
        return 2 ** -np.divide(depths, self.denominator, out=np.ones_like(depths), where=self.denominator != 0)
