"""Put every detector component on one calibrated scale.

Each component turns its raw evidence into a tail probability ``p`` (how often a normal point is
at least this extreme) and reports ``surprise = -log10(p)``. Surprise adds across independent
evidence, never saturates, and maps onto the public score in [0, 1] by
``score = surprise / (surprise + threshold)``: higher score = more anomalous, and a score of 0.5
is exactly the default decision threshold.
"""

from __future__ import annotations

import array
import bisect
import math

import numpy as np
from scipy import stats


def score_from_surprise(surprise: np.ndarray | float, threshold: float | np.ndarray) -> np.ndarray:
    s = np.maximum(np.asarray(surprise, dtype=float), 0.0) + 0.0  # + 0.0: never -0.0
    return s / (s + threshold)


def score_from_surprise_one(surprise: float, threshold: float) -> float:
    """``score_from_surprise`` of one float, without numpy's cost per call (same bits)."""
    surprise = surprise if surprise != surprise or surprise > 0.0 else 0.0  # never -0.0
    return surprise / (surprise + threshold)


def surprise_from_score(score: np.ndarray | float, threshold: float) -> np.ndarray:
    s = np.clip(np.asarray(score, dtype=float), 0.0, 1.0 - 1e-12)
    return threshold * s / (1.0 - s)


SCALAR_MAX_VALUES = 4
"""Up to this many values, ``ExceedanceTail.surprise`` judges them one by one (``surprise_one``):
cheaper than numpy's cost per call (real-time scoring judges a point or a few at a time)."""

MAX_TRIM_ROUNDS = 5
"""Refits a trimmed tail may take to settle (it settles in two or three)."""
MIN_KEPT_SHARE = 0.97
"""A trimmed fit keeps at least this share of the values: past incidents are a few percent of
a history; when more look extreme to the robust first judgement, they are the series' own
heavy tail, and nothing is trimmed (trimming a heavy tail multiplied NAB's false events)."""

ROBUST_SCALE = 1.4826
"""Median absolute value (or deviation) x this = standard deviation, for normal values."""

NO_RECURRENCE_CAP = {"min_recurrences": 0, "recurrence_margin": 1.0, "episode_gap": 0}
"""The recurrence settings of a tail (or forest) fitted before the cap existed: off (models
converted from those pickles keep them, see migration 0008)."""


class ExceedanceTail:
    """Tail probability of an "how extreme" statistic, learned from normal training points.

    Below the ``tail_quantile`` it is the empirical exceedance rate; beyond it, a generalised
    Pareto distribution fitted to the exceedances (peaks over threshold, as in extreme value
    theory) extrapolates: light tails get an exponential tail, heavy tails (busy hours, bursty
    traffic) a power law, so neither case turns ordinary extremes into alarms.

    A smooth tail cannot follow a pattern that recurs far out (a batch job's spike every few
    hours): it would call each repeat a one-in-a-million event. So where at least
    ``min_recurrences`` separate training episodes came close to a value (their peak within
    ``recurrence_margin`` of its distance beyond the tail threshold), the value is no more
    surprising than that observed rate. An episode is a run of consecutive training values
    beyond the tail threshold, runs at most ``episode_gap`` values apart counting as one (as the
    event logic merges flags), so one long past incident counts once, not once per row. A value
    beyond anything seen, or seen in fewer episodes (a past incident or two left in training), is
    judged by the fitted tail alone. ``min_recurrences=0`` turns this off. ``fit`` takes the
    values in time order.

    Training history holds past incidents. With ``trim_at`` (a surprise), the tail is not
    fitted on the values it should flag: a first, robust judgement (a normal distribution from
    the median and the median absolute deviation, which incidents cannot move) marks the values
    at least ``trim_at`` surprising; the tail is fitted on the others and every value is judged
    again under it, so a value the first judgement over-marked comes back, until the marked set
    no longer changes (``MAX_TRIM_ROUNDS`` at most). What stays marked is left out of the fit,
    of the empirical rates and of the recurrences (``trimmed_`` counts it). More than
    ``1 - MIN_KEPT_SHARE`` of the values marked is no incident or two: it is the series' own
    heavy tail, and nothing is trimmed, unless a gap that no tail continuing the other values
    would cross sets the largest values apart and their episodes come, on average, at least
    ``incident_spacing`` values apart (None: never), as a business KPI's incidents do: those are
    trimmed, however many.
    """

    def __init__(
        self,
        tail_quantile: float = 0.9,
        max_shape: float = 0.5,
        scale_floor: float = 1e-9,
        min_recurrences: int = 3,
        recurrence_margin: float = 0.8,
        episode_gap: int = 2,
        trim_at: float | None = None,
        incident_spacing: int | None = None,
    ):
        self.tail_quantile = tail_quantile
        self.max_shape = max_shape
        self.scale_floor = scale_floor
        self.min_recurrences = min_recurrences
        self.recurrence_margin = recurrence_margin
        self.episode_gap = episode_gap
        self.trim_at = trim_at
        self.incident_spacing = incident_spacing

    def to_state(self) -> dict:
        """The fitted tail as data (``artifacts.pack``): its settings and what it learned."""
        return {
            "params": {
                "tail_quantile": self.tail_quantile,
                "max_shape": self.max_shape,
                "scale_floor": self.scale_floor,
                "min_recurrences": self.min_recurrences,
                "recurrence_margin": self.recurrence_margin,
                "episode_gap": self.episode_gap,
                "trim_at": self.trim_at,
                "incident_spacing": self.incident_spacing,
            },
            "sorted": self.sorted_,
            "threshold": self.threshold_,
            "episode_peaks": self.episode_peaks_,
            "shape": self.shape_,
            "scale": self.scale_,
            "trimmed": self.trimmed_,
        }

    @classmethod
    def from_state(cls, state: dict) -> "ExceedanceTail":
        """The tail ``to_state`` described, judging exactly as it did."""
        tail = cls(**state["params"])
        tail.sorted_ = np.asarray(state["sorted"], dtype=float)
        tail._scalar = tail._scalar_tables()
        tail.threshold_ = float(state["threshold"])
        peaks = state["episode_peaks"]
        tail.episode_peaks_ = None if peaks is None else np.asarray(peaks, dtype=float)
        tail.shape_, tail.scale_ = float(state["shape"]), float(state["scale"])
        tail.trimmed_ = int(state["trimmed"])
        return tail

    def fit(self, values: np.ndarray) -> "ExceedanceTail":
        if not 0.0 < self.recurrence_margin <= 1.0:
            raise ValueError(f"recurrence_margin must be in (0, 1], not {self.recurrence_margin}")
        ordered = np.asarray(values, dtype=float)
        ordered = ordered[np.isfinite(ordered)]
        if len(ordered) == 0:
            raise ValueError("cannot fit a tail to no values")
        kept = np.ones(len(ordered), dtype=bool)
        if self.trim_at is not None:
            surprise = _robust_gaussian_surprise(ordered, self.scale_floor)
            for round_ in range(MAX_TRIM_ROUNDS):
                marked = surprise >= self.trim_at
                # A pattern that recurs with a period (a batch job's spike) is normal: kept.
                judged = ~marked | _in_periodic_episodes(marked, self.episode_gap, self.min_recurrences, self.trim_at)
                if judged.sum() < MIN_KEPT_SHARE * len(ordered):
                    # Not an incident or two: what normal looks like here, unless the largest
                    # values are set apart and rare in time, as incidents are.
                    judged |= ~self._incidents_apart(ordered)
                if round_ and (judged == kept).all():
                    break
                kept = judged
                self._fit_values(ordered[kept])
                surprise = self.surprise(ordered)
        else:
            self._fit_values(ordered)
        self.trimmed_ = int((~kept).sum())
        return self

    def _incidents_apart(self, ordered: np.ndarray) -> np.ndarray:
        """The values (time order) that a gap sets apart from the rest (``_beyond_gap``), if
        their episodes come at least ``incident_spacing`` values apart on average; none if they
        come more often: an extreme that keeps coming back is how the series behaves."""
        none = np.zeros(len(ordered), dtype=bool)
        if not self.incident_spacing or self.trim_at is None:
            return none
        apart = ordered >= _beyond_gap(ordered, self.tail_quantile, self.trim_at)
        positions = np.flatnonzero(apart)
        if len(positions) and len(_episode_starts(positions, self.episode_gap)) * self.incident_spacing <= len(ordered):
            return apart
        return none

    def _fit_values(self, ordered: np.ndarray) -> None:
        """Fit the empirical part, the recurrences and the tail to ``ordered`` (time order)."""
        v = np.sort(ordered)
        self.sorted_ = v
        self._scalar = self._scalar_tables()
        self.threshold_ = float(np.quantile(v, self.tail_quantile))
        self.episode_peaks_: np.ndarray | None = _episode_peaks(ordered, self.threshold_, self.episode_gap)
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

    def _log10_tail(self, excess: np.ndarray | float) -> np.ndarray | float:
        tail_mass = np.log10(1.0 - self.tail_quantile)
        if self.shape_ > 1e-9:
            return tail_mass - np.log10(1.0 + self.shape_ * excess / self.scale_) / self.shape_
        return tail_mass - excess / self.scale_ / np.log(10.0)

    def surprise(self, values: np.ndarray) -> np.ndarray:
        """-log10 P(normal value >= v); NaN where the input is NaN."""
        v = np.asarray(values, dtype=float)
        if v.ndim == 1 and len(v) <= SCALAR_MAX_VALUES:
            return np.array([self.surprise_one(value) for value in v.tolist()], dtype=float)
        n = len(self.sorted_)
        # NaN sorts below everything (np.nan_to_num is the identity on finite values).
        ordered = v if np.isfinite(v).all() else np.nan_to_num(v, nan=-np.inf)
        exceed = n - np.searchsorted(self.sorted_, ordered, side="left")
        empirical = -np.log10((exceed + 1.0) / (n + 1.0))
        above = v > self.threshold_
        out = empirical
        if above.any():  # most values are not: then the tail is skipped
            tail = -self._log10_tail(np.maximum(v - self.threshold_, 0.0))
            # Past the threshold the fitted tail takes over: the empirical rate there is too
            # coarse (every value beyond the training maximum would get the same
            # -log10(1/(n+1))) ... unless training values came this close often enough: then
            # the observed rate holds. Tails fitted before recurrences existed have
            # min_recurrences 0, those fitted by the first, row-counting version of the cap no
            # peaks (kept as they were when their pickles were converted, migration 0008).
            peaks = self.episode_peaks_
            if peaks is not None and self.min_recurrences > 0:
                near = self.threshold_ + self.recurrence_margin * (ordered - self.threshold_)
                seen = len(peaks) - np.searchsorted(peaks, near, side="left")
                seen_rate = -np.log10((seen + 1.0) / (n + 1.0))
                tail = np.where(seen >= self.min_recurrences, np.fmin(tail, seen_rate), tail)
            out = np.where(above, tail, empirical)
        # + 0.0: a zero is +0.0 (np.maximum may keep -0.0, which -log10(1) is).
        return np.where(np.isnan(v), np.nan, np.maximum(out, 0.0) + 0.0)

    def surprise_one(self, value: float) -> float:
        """``surprise`` of one value, in scalar arithmetic (without numpy's cost per call, which
        dwarfs the arithmetic of a value or a few): the same numbers (tested)."""
        if value != value:
            return math.nan
        ordered, empirical_by_exceedances = self._scalar
        exceed = len(ordered) - bisect.bisect_left(ordered, value)  # searchsorted, side="left"
        empirical = empirical_by_exceedances[exceed]
        if not value > self.threshold_:
            return empirical if empirical > 0.0 else 0.0
        tail = float(-self._log10_tail(value - self.threshold_))
        peaks = self.episode_peaks_
        if peaks is not None and self.min_recurrences > 0:
            near = self.threshold_ + self.recurrence_margin * (value - self.threshold_)
            seen = len(peaks) - int(peaks.searchsorted(near, side="left"))
            if seen >= self.min_recurrences:
                seen_rate = float(-np.log10((seen + 1.0) / (len(ordered) + 1.0)))
                tail = seen_rate if tail != tail or seen_rate < tail else tail  # np.fmin
        return tail if tail != tail or tail > 0.0 else 0.0

    def _scalar_tables(self) -> tuple[array.array, array.array]:
        """For ``surprise_one``, built when the tail is fitted or loaded (not while
        scoring): the training values as plain floats (bisected without numpy), and the
        empirical surprise for each possible count of exceedances, computed as ``surprise``
        computes it."""
        n = len(self.sorted_)
        empirical = -np.log10((np.arange(n + 1) + 1.0) / (n + 1.0))
        as_floats = array.array("d")
        as_floats.frombytes(np.ascontiguousarray(self.sorted_, dtype=np.float64).tobytes())
        table = array.array("d")
        table.frombytes(empirical.tobytes())
        return as_floats, table

    def quantile(self, probability: float) -> float:
        """The value that normal points exceed with probability ``1 - probability``."""
        if probability <= self.tail_quantile:
            return float(np.quantile(self.sorted_, probability))
        ratio = (1.0 - probability) / (1.0 - self.tail_quantile)
        if self.shape_ > 1e-9:
            return self.threshold_ + self.scale_ / self.shape_ * (ratio**-self.shape_ - 1.0)
        return self.threshold_ - self.scale_ * np.log(ratio)


def _beyond_gap(values: np.ndarray, tail_quantile: float, surprise: float) -> float:
    """The smallest of the largest values that a gap sets apart from the rest (inf if none).

    Among the ``1 - tail_quantile`` largest positive values, in decreasing order ``x_1 >= x_2
    >= ...``, the normalised log spacings ``j * log(x_j / x_{j+1})`` of a continuous tail are
    independent exponentials with one mean (Renyi's representation, behind Hill's estimator),
    taken here robustly from their median. A spacing at least ``surprise`` surprising for any of
    them (-log10 of its tail probability, ``log10`` of their count added) is a gap no such tail
    makes: the values above the deepest one are not the series' tail but episodes apart from it.
    """
    ordered = np.sort(values[values > 0])[::-1]
    count = int((1.0 - tail_quantile) * len(ordered))
    if count < 2:
        return math.inf
    logs = np.log(ordered[: count + 1])
    spacings = np.arange(1, count + 1) * (logs[:-1] - logs[1:])
    positive = spacings[spacings > 0]
    if len(positive) < 2:
        return math.inf
    mean = float(np.median(positive)) / math.log(2.0)
    gaps = np.flatnonzero(spacings >= mean * math.log(10.0) * (surprise + math.log10(count)))
    return float(ordered[gaps[-1]]) if len(gaps) else math.inf


def _robust_gaussian_surprise(values: np.ndarray, scale_floor: float) -> np.ndarray:
    """-log10 of each value's upper tail probability under a normal distribution centred on the
    median with the median absolute deviation's spread: a judgement that incidents, up to a
    good share of the values, cannot move (a maximum-likelihood tail would follow them)."""
    median = float(np.median(values))
    spread = max(ROBUST_SCALE * float(np.median(np.abs(values - median))), scale_floor)
    z = (values - median) / spread
    with np.errstate(divide="ignore"):
        return np.where(z > 0, -np.log10(stats.norm.sf(z)), 0.0)


def _in_periodic_episodes(marked: np.ndarray, gap: int, min_recurrences: int, surprise: float) -> np.ndarray:
    """The marked values (time order) whose episode recurs with a period: episodes are runs of
    marked values at most ``gap`` apart; the period is the most common distance between two
    episodes' starts (within one position), and it counts when at least half of the episodes,
    and at least ``min_recurrences`` + 1, have another one at that distance, and when that many
    pairs of episodes at that distance are at least ``surprise`` surprising (-log10 of a Poisson
    tail probability, ``log10`` of the number of distances tried added) for episodes at random
    times. Incidents fall at chance distances from each other and make no period, however many
    there are."""
    periodic = np.zeros(len(marked), dtype=bool)
    positions = np.flatnonzero(marked)
    if len(positions) == 0 or min_recurrences <= 0:
        return periodic
    first = _episode_starts(positions, gap)
    starts = positions[first]
    if len(starts) < min_recurrences + 1:
        return periodic
    distance = np.abs(starts[:, None] - starts[None, :])
    # A period must fit min_recurrences times into the history.
    longest = len(marked) // min_recurrences
    counts = np.bincount(distance[(distance > 0) & (distance <= longest)].ravel(), minlength=longest + 2)
    near = np.convolve(counts, np.ones(3), mode="same")  # within one position
    period = int(np.argmax(near))
    partnered = (np.abs(distance - period) <= 1).any(axis=1) & (period > 0)
    if partnered.sum() < max(min_recurrences + 1, len(starts) / 2):
        return periodic
    # Episodes at random times: each pair's distance is one of the three near the period with
    # probability about 3 * 2 * (n - period) / n**2.
    n, pairs = len(marked), len(starts) * (len(starts) - 1) / 2
    by_chance = pairs * 6.0 * max(n - period, 1) / n**2
    seen = int(near[period]) // 2  # distance holds each pair twice
    if -stats.poisson.logsf(seen - 1, by_chance) / math.log(10.0) < surprise + math.log10(longest):
        return periodic
    ends = np.concatenate((first[1:], [len(positions)]))
    for episode in np.flatnonzero(partnered):
        periodic[positions[first[episode] : ends[episode]]] = True
    return periodic


def _episode_peaks(ordered: np.ndarray, threshold: float, gap: int) -> np.ndarray:
    """The peak of each episode of ``ordered`` (time order) beyond ``threshold``, sorted: runs of
    values above it, runs at most ``gap`` values apart merged."""
    beyond = np.flatnonzero(ordered > threshold)
    if len(beyond) == 0:
        return np.zeros(0)
    return np.sort(np.maximum.reduceat(ordered[beyond], _episode_starts(beyond, gap)))


def _episode_starts(positions: np.ndarray, gap: int) -> np.ndarray:
    """Where each episode begins among ``positions`` (increasing, not empty): episodes are runs
    of positions at most ``gap`` apart."""
    return np.concatenate(([0], np.flatnonzero(np.diff(positions) > gap + 1) + 1))
