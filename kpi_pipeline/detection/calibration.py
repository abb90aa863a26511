"""Put every detector component on one calibrated scale.

Each component turns its raw evidence into a tail probability ``p`` (how often a normal point is
at least this extreme) and reports ``surprise = -log10(p)``. Surprise adds across independent
evidence, never saturates, and maps onto the public score in [0, 1] by
``score = surprise / (surprise + threshold)``: higher score = more anomalous, and a score of 0.5
is exactly the default decision threshold.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

def score_from_surprise(surprise: np.ndarray | float, threshold: float) -> np.ndarray:
    s = np.clip(np.asarray(surprise, dtype=float), 0.0, None)
    return s / (s + threshold)


def surprise_from_score(score: np.ndarray | float, threshold: float) -> np.ndarray:
    s = np.clip(np.asarray(score, dtype=float), 0.0, 1.0 - 1e-12)
    return threshold * s / (1.0 - s)


class ExceedanceTail:
    """Tail probability of an "how extreme" statistic, learned from normal training points.

    Below the ``tail_quantile`` it is the empirical exceedance rate; beyond it, a generalised
    Pareto distribution fitted to the exceedances (peaks over threshold, as in extreme value
    theory) extrapolates: light tails get an exponential tail, heavy tails (busy hours, bursty
    traffic) a power law, so neither case turns ordinary extremes into alarms.

    A smooth tail cannot follow a pattern that recurs far out (a batch job's spike every few
    hours): it would call each repeat a one-in-a-million event. So where training values came
    close to a value (within ``recurrence_margin`` of its distance beyond the tail threshold) at
    least ``min_recurrences`` times, the value is no more surprising than that observed rate.
    A value beyond anything seen, or seen fewer times (one past incident left in training), is
    judged by the fitted tail alone. ``min_recurrences=0`` turns this off.
    """

    def __init__(
        self,
        tail_quantile: float = 0.9,
        max_shape: float = 0.5,
        scale_floor: float = 1e-9,
        min_recurrences: int = 3,
        recurrence_margin: float = 0.8,
    ):
        self.tail_quantile = tail_quantile
        self.max_shape = max_shape
        self.scale_floor = scale_floor
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin

    def fit(self, values: np.ndarray) -> "ExceedanceTail":
        v = np.asarray(values, dtype=float)
        v = np.sort(v[np.isfinite(v)])
        if len(v) == 0:
            raise ValueError("cannot fit a tail to no values")
        self.sorted_ = v
        self.threshold_ = float(np.quantile(v, self.tail_quantile))
        excess = v[v > self.threshold_] - self.threshold_
        self.shape_ = 0.0
        self.scale_ = float(excess.mean()) if len(excess) else 0.0
        if len(excess) >= 20 and np.ptp(excess) > 0:
            with np.errstate(all="ignore"):
                shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
                if np.isfinite(shape) and not 0.0 <= shape <= self.max_shape:
                    # Outside the plausible range: refit the scale with the shape held at the edge.
                    shape = float(np.clip(shape, 0.0, self.max_shape))
                    _, _, scale = stats.genpareto.fit(excess, fc=shape, floc=0.0)
            if np.isfinite(shape) and np.isfinite(scale) and scale > 0:
                self.shape_, self.scale_ = float(shape), float(scale)
        self.scale_ = max(self.scale_, self.scale_floor)
        return self

    def _log10_tail(self, excess: np.ndarray) -> np.ndarray:
        tail_mass = np.log10(1.0 - self.tail_quantile)
        if self.shape_ > 1e-9:
            return tail_mass - np.log10(1.0 + self.shape_ * excess / self.scale_) / self.shape_
        return tail_mass - excess / self.scale_ / np.log(10.0)

    def surprise(self, values: np.ndarray) -> np.ndarray:
        """-log10 P(normal value >= v); NaN where the input is NaN."""
        v = np.asarray(values, dtype=float)
        n = len(self.sorted_)
        exceed = n - np.searchsorted(self.sorted_, np.nan_to_num(v, nan=-np.inf), side="left")
        empirical = -np.log10((exceed + 1.0) / (n + 1.0))
        tail = -self._log10_tail(np.clip(v - self.threshold_, 0.0, None))
        # Past the threshold the fitted tail takes over: the empirical rate there is too coarse
        # (every value beyond the training maximum would get the same -log10(1/(n+1))).
        # ... unless training values came this close often enough: then the observed rate holds.
        recurrences = getattr(self, "min_recurrences", 0)  # 0: models pickled before it existed
        if recurrences > 0:
            margin = getattr(self, "recurrence_margin", 1.0)
            near = self.threshold_ + margin * (np.nan_to_num(v, nan=-np.inf) - self.threshold_)
            seen = n - np.searchsorted(self.sorted_, near, side="left")
            seen_rate = -np.log10((seen + 1.0) / (n + 1.0))
            tail = np.where(seen >= recurrences, np.fmin(tail, seen_rate), tail)
        out = np.where(v > self.threshold_, tail, empirical)
        return np.where(np.isnan(v), np.nan, np.clip(out, 0.0, None))

    def quantile(self, probability: float) -> float:
        """The value that normal points exceed with probability ``1 - probability``."""
        if probability <= self.tail_quantile:
            return float(np.quantile(self.sorted_, probability))
        ratio = (1.0 - probability) / (1.0 - self.tail_quantile)
        if self.shape_ > 1e-9:
            return self.threshold_ + self.scale_ / self.shape_ * (ratio ** -self.shape_ - 1.0)
        return self.threshold_ - self.scale_ * np.log(ratio)
