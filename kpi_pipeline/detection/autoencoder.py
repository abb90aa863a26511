"""An autoencoder over windows of the residuals: shape anomalies that no single point shows.

A small multilayer perceptron (scikit-learn's ``MLPRegressor``, one ``tanh`` bottleneck layer)
learns to reproduce windows of ``window`` consecutive scaled residuals of normal training data.
A window shaped like those it learned is reproduced well; one of another shape (a flipped
daily cycle, an oscillation, a wrong slope) is not, even when each of its points is small. The
raw score of a point is the mean squared reconstruction error of the window ending at it,
calibrated on training windows into a tail probability (``ExceedanceTail``), like the other
components. Score direction: higher surprise = more anomalous.

The fitted network is kept as its weight arrays and the forward pass done in numpy, so it is
stored as data (``to_state``), never pickled, and scores exactly as it did.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from kpi_pipeline.detection.calibration import ExceedanceTail


def sliding_windows(values: np.ndarray, window: int) -> np.ndarray:
    """Row i: the ``window`` values ending at point i (NaN-padded before the first full window)."""
    values = np.asarray(values, dtype=float)
    padded = np.concatenate([np.full(window - 1, np.nan), values])
    return np.lib.stride_tricks.sliding_window_view(padded, window)


class AutoencoderDetector(BaseEstimator):
    """Reconstruction error of residual windows, calibrated into a surprise."""

    def __init__(
        self,
        window: int = 12,
        hidden: int = 3,
        max_windows: int = 2000,
        max_iter: int = 300,
        tail_quantile: float = 0.9,
        random_state: int | None = 0,
        min_recurrences: int = 3,
        recurrence_margin: float = 0.8,
        episode_gap: int = 2,
        trim_at: float | None = None,
        incident_spacing: int | None = None,
    ):
        self.window = window
        self.hidden = hidden
        self.max_windows = max_windows
        self.max_iter = max_iter
        self.tail_quantile = tail_quantile
        self.random_state = random_state
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin
        self.episode_gap = episode_gap
        self.trim_at = trim_at
        self.incident_spacing = incident_spacing

    def fit(self, windows: np.ndarray, y=None) -> "AutoencoderDetector":
        """Learn to reproduce ``windows`` (rows of ``window`` scaled residuals; rows with a
        missing value are skipped), at most the newest ``max_windows`` of them."""
        rows = _finite_rows(windows)[-self.max_windows :]
        if len(rows) < 2 * self.window:
            raise ValueError(f"autoencoder: {len(rows)} complete windows, need at least {2 * self.window}")
        network = MLPRegressor(
            hidden_layer_sizes=(self.hidden,),
            activation="tanh",
            max_iter=self.max_iter,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a rough fit still ranks shapes
            network.fit(rows, rows)
        self.coefs_ = [np.asarray(c, dtype=float) for c in network.coefs_]
        self.intercepts_ = [np.asarray(b, dtype=float) for b in network.intercepts_]
        self.calibration_ = ExceedanceTail(
            self.tail_quantile,
            min_recurrences=self.min_recurrences,
            recurrence_margin=self.recurrence_margin,
            episode_gap=self.episode_gap,
            trim_at=self.trim_at,
            incident_spacing=self.incident_spacing,
        ).fit(self._raw(rows))
        return self

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error of each row (the network's forward pass)."""
        hidden = np.tanh(rows @ self.coefs_[0] + self.intercepts_[0])
        reconstructed = hidden @ self.coefs_[1] + self.intercepts_[1]
        return np.mean((rows - reconstructed) ** 2, axis=1)

    def surprise(self, windows: np.ndarray) -> np.ndarray:
        """-log10 tail probability per window; windows with a missing value get 0."""
        windows = np.asarray(windows, dtype=float).reshape(-1, self.window)
        out = np.zeros(len(windows))
        ok = np.isfinite(windows).all(axis=1)
        if ok.any():
            out[ok] = self.calibration_.surprise(self._raw(windows[ok]))
        return out

    def to_state(self) -> dict:
        """The fitted detector as data (``artifacts.pack``): settings, weights, calibration."""
        return {
            "params": self.get_params(),
            "coefs": self.coefs_,
            "intercepts": self.intercepts_,
            "calibration": self.calibration_.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "AutoencoderDetector":
        """The detector ``to_state`` described, scoring exactly as it did."""
        detector = cls(**state["params"])
        detector.coefs_ = [np.asarray(c, dtype=float) for c in state["coefs"]]
        detector.intercepts_ = [np.asarray(b, dtype=float) for b in state["intercepts"]]
        detector.calibration_ = ExceedanceTail.from_state(state["calibration"])
        return detector


def _finite_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    return X[np.isfinite(X).all(axis=1)]
