"""Isolation Forest over scale-free features, with a calibrated tail probability.

Scored against its own training distribution, a forest's ``contamination`` threshold flags a fixed
share of normal points by construction. Instead we learn the distribution of the forest's raw
scores on training points and report how rare a new point's raw score is (``ExceedanceTail``).
"""

from __future__ import annotations

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
    ):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.tail_quantile = tail_quantile
        self.random_state = random_state

    def fit(self, X: np.ndarray, y=None) -> "IsolationForestDetector":
        X = _finite_rows(X)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
        ).fit(X)
        self.calibration_ = ExceedanceTail(self.tail_quantile).fit(self._raw(X))
        self.n_features_in_ = X.shape[1]
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        # sklearn's score_samples is higher for normal points; negate so higher = more anomalous.
        return -self.forest_.score_samples(X)

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
