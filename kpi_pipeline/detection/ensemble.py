"""The per-KPI ensemble: Prophet expectation + Isolation Forest + stuck-sensor evidence.

How a point is judged (higher score = more anomalous, in [0, 1]; 0.5 = the decision threshold):

1. Prophet gives the expected value ``yhat``; the residual is ``r = value - yhat``. A strictly
   positive KPI is modelled in log space: business KPIs have multiplicative seasonality and noise
   proportional to their level, which a log turns into additive, evenly sized residuals.
2. A lasting level shift must not be flagged until the next retrain, so the expectation adapts:
   ``level`` is the median residual of the ``level_window`` points before t, and the adapted
   residual is ``e = r - level``. A point is judged by ``min(|r|, |e|)``: it must be surprising both
   to the model and to the recent level, so a shift alerts at its start, then goes quiet once the
   level has moved, and its return to normal is not a second incident.
3. That deviation is divided by the typical size of recent adapted residuals (a robust scale over
   the ``scale_window`` points before t): in-sample residuals are smaller than out-of-sample ones
   and volatility drifts, so a fixed scale from training is either too tight or too loose. The
   tail probability of this ratio under an extreme-value fit on training points is the Prophet
   surprise.
4. An Isolation Forest over scale-free features (adapted residual, step size, local volatility)
   catches shape anomalies: variance bursts and changed dynamics. Its raw score is calibrated on
   training points into a tail probability.
5. A moderate deviation that lasts (a daily peak that does not come, a slow sag) is not surprising
   point by point, so the median residual of the last ``sustained_window`` points is judged the
   same way against the median before them, with its own tail fitted on training: the
   ``sustained`` component. It needs a model fitted on enough history (a short-history model
   drifts from the data, which would read as one long deviation), and the point itself must
   deviate in the same direction, so the evidence ends with the incident.
6. A stuck sensor (identical consecutive values) is judged by how rare such runs were in training.
7. The combined surprise is the largest component's; ``score = s / (s + threshold)``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from kpi_pipeline.detection import persistence
from kpi_pipeline.detection.autoencoder import AutoencoderDetector, sliding_windows
from kpi_pipeline.detection.calibration import (
    ROBUST_SCALE,
    ExceedanceTail,
    score_from_surprise,
    score_from_surprise_one,
)

# The configs live in ``config``; importing them from here, as callers do, keeps working.
from kpi_pipeline.detection.config import DetectorConfig
from kpi_pipeline.detection.config import IForestConfig as IForestConfig
from kpi_pipeline.detection.config import ProphetConfig as ProphetConfig
from kpi_pipeline.detection.events import SEVERITY_ORDER
from kpi_pipeline.detection.iforest import IsolationForestDetector
from kpi_pipeline.detection.preprocess import infer_frequency
from kpi_pipeline.detection.prophet_model import ProphetDetector
from kpi_pipeline.detection.rolling import rolling_median, shifted

SCORE_COLUMNS = [
    "ts",
    "value",
    "expected",
    "lower",
    "upper",
    "prophet_score",
    "iforest_score",
    "score",
    "is_anomaly",
    "severity",
    "flagged_by",
]


def score_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """The frame of ``EnsembleDetector.score_columns``' columns."""
    # Built in column order: selecting a list of columns copies the frame (a millisecond).
    return pd.DataFrame({name: columns[name] for name in SCORE_COLUMNS})


class InsufficientHistory(ValueError):
    """Raised by ``fit`` when a KPI has too few usable points to learn what normal looks like."""


def severity_of(score: float, log_ratio: float, spreads: float, config: DetectorConfig) -> str:
    """The severity of an anomalous point: how unlikely it is and how far it is off.

    The evidence rank comes from the score (``severity_scores``); the size rank from how far the
    value is from what was expected, both as a factor (``log_ratio`` = |ln(value / expected)|,
    NaN for a KPI that is not modelled in log space) and in units of the KPI's normal spread
    (``severity_spreads``): a point is large only if it is large both ways. The severity is the
    size rank, or the evidence rank minus one where that is higher: a gross deviation is critical
    however the calibration judges it, and a small one needs overwhelming evidence (a stuck value
    that lasts) to reach high.
    """
    evidence = bisect.bisect_right(config.severity_scores, score) - 1
    if spreads != spreads:  # no value (a missing-data gap): the evidence alone
        return SEVERITY_ORDER[min(max(evidence, 0), len(SEVERITY_ORDER) - 1)]
    size = bisect.bisect_right(config.severity_spreads, spreads)
    if log_ratio == log_ratio:  # not NaN
        factor_rank = bisect.bisect_right([math.log(f) for f in config.severity_factors], log_ratio)
        size = min(size, factor_rank)
    return SEVERITY_ORDER[min(max(size, evidence - 1, 0), len(SEVERITY_ORDER) - 1)]


def confident_anomalies(scores: pd.DataFrame, config: DetectorConfig) -> np.ndarray:
    """The scored points later training sets leave out: anomalies scored at least
    ``config.exclude_score`` (a missing-data gap has no value to leave out)."""
    return scores["is_anomaly"].to_numpy(dtype=bool) & (scores["score"].to_numpy(dtype=float) >= config.exclude_score)


def _medians_of_runs(ts: pd.DatetimeIndex, values: np.ndarray, most: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """At most ``most`` points: the median time and value of each run of consecutive points
    (all of them, if there are no more than ``most``)."""
    size = -(-len(values) // most)  # ceiling division
    if size <= 1:
        return ts, values
    runs = np.arange(len(values)) // size
    # In nanoseconds whatever the index's unit (pandas 3 makes microsecond indexes), which is
    # how DatetimeIndex reads integers back.
    stamps = pd.Series(ts.as_unit("ns").asi8).groupby(runs).median().to_numpy().astype("int64")
    medians = pd.Series(values).groupby(runs).median().to_numpy()
    return pd.DatetimeIndex(stamps, tz=ts.tz), medians


def _past_rolling_median(values: np.ndarray, window: int, lag: int = 1) -> np.ndarray:
    """Median of the ``window`` values ending ``lag`` points before each point (0 before any)."""
    return _nan_to_zero(rolling_median(shifted(values, lag), window, min_periods=1))


HOUR = pd.Timedelta(hours=1)

MIN_SCALE_POINTS = 24
"""Values a recent scale needs (fewer: the training scale is used)."""


def _past_rolling_scale(values: np.ndarray, window: int, first: int = 0) -> np.ndarray:
    """Robust scale (``ROBUST_SCALE`` x median absolute value) of the ``window`` values before
    each point, from point ``first`` on (NaN before it)."""
    magnitude = shifted(np.abs(values), 1)
    return ROBUST_SCALE * rolling_median(magnitude, window, min(window, MIN_SCALE_POINTS), first)


def _stuck_run_lengths(values: np.ndarray) -> np.ndarray:
    """Per point, how many consecutive previous values it exactly repeats."""
    same = values == np.concatenate([[np.nan], values[:-1]])
    position = np.arange(len(values))
    # Each point counts from the last point that did not repeat its predecessor.
    last_new = np.maximum.accumulate(np.where(same, 0, position)) if len(values) else position
    return (position - last_new).astype(float)


def _nan_to_zero(values) -> np.ndarray:
    """``np.nan_to_num(values, nan=0.0)``, without its cost when there is nothing to replace."""
    values = np.asarray(values, dtype=float)
    return values if np.isfinite(values).all() else np.nan_to_num(values, nan=0.0)


def _fmin(a: float, b: float) -> float:
    """``np.fmin`` of two floats: the smaller, ignoring a NaN."""
    if a != a:
        return b
    return a if b != b or a <= b else b


def _zero_if_nan(value: float) -> float:
    return 0.0 if value != value else value


def _at_least(a: float, floor: float) -> float:
    """``np.maximum(a, floor)`` of two floats: NaN stays NaN (and -0.0 stays -0.0)."""
    return a if a != a or a >= floor else floor


def _sample_std(values: list[float]) -> float:
    """The sample standard deviation of a few values, NaN ones ignored (NaN if fewer than two):
    pandas' rolling ``std()`` of a window, up to the last bits, which pandas' running sums
    decide."""
    part = [v for v in values if v == v]
    if len(part) < 2:
        return math.nan
    mean = sum(part) / len(part)
    # d * d, not d ** 2: a huge deviation squares to inf, as in numpy, not an error.
    return math.sqrt(sum((v - mean) * (v - mean) for v in part) / (len(part) - 1))


class _Sequence:
    """One of a ``ScoringState``'s series, its first ``keep`` values followed by the values of
    new points, appended one at a time as ``score_after`` judges them."""

    __slots__ = ("kept", "keep", "new")

    def __init__(self, kept: list[float], keep: int) -> None:
        self.kept, self.keep = kept, keep
        self.new: list[float] = []

    def __getitem__(self, i: int) -> float:
        return self.kept[i] if i < self.keep else self.new[i - self.keep]

    def append(self, value: float) -> None:
        self.new.append(value)

    def window(self, start: int, end: int) -> list[float]:
        return [self[i] for i in range(max(0, start), end)]


class _RollingMedian:
    """The median of the non-missing values among the ``window`` values of a ``_Sequence``
    before ``end``, for ends that only move on: pandas' ``rolling(window, min_periods).median()``
    (at ``end - 1``), one point at a time. The window's values are kept sorted, each step
    removing the value that leaves and inserting the one that enters; the sorted window at the
    first end is memoised on the state (``seed``), since every request starts there."""

    __slots__ = ("seq", "window", "min_periods", "end", "ordered", "owned")

    def __init__(self, seq: _Sequence, window: int, min_periods: int, end: int, memo: dict, name: str) -> None:
        end = min(end, seq.keep)
        key = ("sorted", name, window, end)
        ordered = memo.get(key)
        if ordered is None:
            ordered = memo[key] = sorted(v for v in seq.window(end - window, end) if v == v)
        self.seq, self.window, self.min_periods = seq, window, max(min_periods, 1)
        self.end, self.ordered, self.owned = end, ordered, False

    def at(self, end: int) -> float:
        """The median of the window before ``end`` (no earlier than the last one asked)."""
        if self.end < end and not self.owned:
            self.ordered, self.owned = list(self.ordered), True  # the seed stays as it is
        ordered, seq, window = self.ordered, self.seq, self.window
        while self.end < end:
            if self.end >= window:
                leaving = seq[self.end - window]
                if leaving == leaving:
                    del ordered[bisect.bisect_left(ordered, leaving)]
            entering = seq[self.end] if self.end >= 0 else math.nan  # before the first: none
            if entering == entering:
                bisect.insort(ordered, entering)
            self.end += 1
        n = len(ordered)
        if n < self.min_periods:
            return math.nan
        middle = n // 2
        # np.median's arithmetic: the middle value, or the mean of the two middle values.
        return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class ScoringState:
    """A stretch of one KPI's cleaned series as ``score`` saw it, kept so that points after it
    are scored without judging the stretch again (``EnsembleDetector.prepare`` and
    ``score_after``): per point, what the windows of later points read."""

    y: np.ndarray
    y_model: np.ndarray
    residual: np.ndarray
    adapted: np.ndarray
    shifted: np.ndarray | None
    """The sustained shift (None: the model judges no sustained deviations)."""
    combined: np.ndarray
    """The combined surprise before smoothing, where later points' smoothing reads it."""
    runs: np.ndarray
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    """What ``score_after`` reads that depends on these points (and the detector) alone,
    computed on first use: the series as lists, the sorted windows that end within them, the
    forecasts of the slots after them, and the detector's constants for finishing."""

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class _Judged:
    """Per judged point: the numbers ``_finish`` turns into the score columns."""

    yhat: np.ndarray
    residual: np.ndarray
    level: np.ndarray
    adapted: np.ndarray
    recent_scale: np.ndarray
    components: dict[str, np.ndarray]
    sustained_reference: np.ndarray | None
    surprises: np.ndarray = field(init=False)
    """The components side by side (point x component)."""
    combined: np.ndarray = field(init=False)
    """The largest component's surprise, before smoothing."""

    def __post_init__(self) -> None:
        self.surprises = np.column_stack(list(self.components.values()))
        self.combined = np.max(self.surprises, axis=1)


class EnsembleDetector(BaseEstimator):
    """Isolation Forest + Prophet ensemble for one KPI, following scikit-learn conventions."""

    def __init__(self, config: DetectorConfig | None = None, random_state: int | None = 0):
        self.config = config
        self.random_state = random_state

    @property
    def _config(self) -> DetectorConfig:
        return self.config or DetectorConfig()

    # -- training -------------------------------------------------------------------------
    def fit(self, ts, values, exclude: np.ndarray | None = None) -> "EnsembleDetector":
        """Learn normal behaviour from past points; ``exclude`` marks known anomalies to skip."""
        cfg = self._config
        ts = pd.DatetimeIndex(ts)
        y = np.asarray(values, dtype=float)
        usable = np.isfinite(y)
        if exclude is not None:
            usable &= ~np.asarray(exclude, dtype=bool)
        if not usable.any():
            raise InsufficientHistory("insufficient history: no usable points")
        # The window ends at the newest usable point, so a KPI whose latest stretch is an outage
        # learns from the data before it; it is the longer of a time span and a number of steps.
        freq = infer_frequency(ts[usable])
        reach = pd.Timedelta(days=cfg.train_window_days)
        if freq is not None:
            reach = max(reach, cfg.train_window_steps * freq)
        newest = ts[usable][-1]
        start = int(ts.searchsorted(newest - reach, side="right"))
        end = int(ts.searchsorted(newest, side="right"))
        ts, y, usable = ts[start:end], y[start:end], usable[start:end]
        if usable.sum() < cfg.min_train_points:
            raise InsufficientHistory(
                f"insufficient history: {int(usable.sum())} usable points in the training "
                f"window, need at least {cfg.min_train_points}"
            )
        y_train = np.where(usable, y, np.nan)

        self.freq_ = freq
        faster_than_hourly = 0.0
        if cfg.frequency_threshold and freq is not None and pd.Timedelta(0) < freq < HOUR:
            faster_than_hourly = math.log10(HOUR / freq)
        self.threshold_ = cfg.threshold + faster_than_hourly
        self.log_space_ = bool(cfg.log_transform and np.min(y[usable]) > 0)
        # A later value at or below zero is extreme for a positive KPI; clamp it to stay finite.
        self.log_floor_ = float(np.min(y[usable])) / 10.0 if self.log_space_ else 0.0
        y_train = self._to_model(y_train)
        most = cfg.prophet_max_points
        if freq is not None and cfg.prophet_step_minutes > 0:
            per_run = math.ceil(pd.Timedelta(minutes=cfg.prophet_step_minutes) / freq)
            if per_run > 1:
                most = min(most, -(-int(usable.sum()) // per_run))
        self.prophet_ = ProphetDetector(**asdict(cfg.prophet)).fit(*_medians_of_runs(ts[usable], y_train[usable], most))
        residual = y_train - self.prophet_.predict(ts)
        typical = float(np.nanmedian(np.abs(y_train[usable])))
        self.scale_floor_ = max(1e-6 * typical, 1e-9)
        adapted = residual - _past_rolling_median(residual, cfg.level_window)
        self.residual_scale_ = max(float(np.nanmedian(np.abs(adapted[usable]))) * ROBUST_SCALE, self.scale_floor_)
        _, adapted, ratio, _ = self._deviation(residual)
        self.deviation_tail_ = self._tail().fit(ratio[usable])

        for name in ("sustained_scale_", "sustained_tail_"):
            self.__dict__.pop(name, None)
        if cfg.sustained_window > 1 and usable.sum() >= cfg.sustained_min_train_points:
            judged, shifted, _ = self._sustained_shift(residual)
            shifts = np.abs(shifted[usable & np.isfinite(shifted)])
            self.sustained_scale_ = max(
                float(np.median(shifts)) * ROBUST_SCALE if shifts.size else 0.0, self.scale_floor_
            )
            sustained = self._sustained_ratio(judged, shifted)
            self.sustained_tail_ = self._tail().fit(sustained[usable & np.isfinite(sustained)])
        step = np.diff(y_train[usable])
        self.step_scale_ = max(
            float(np.median(np.abs(step - np.median(step)))) * ROBUST_SCALE if len(step) else 0.0,
            self.residual_scale_,
        )
        features = self._iforest_features(residual, adapted, y_train)
        self.iforest_ = IsolationForestDetector(
            **asdict(cfg.iforest), random_state=self.random_state, **self._tail_options()
        ).fit(features)
        self.__dict__.pop("autoencoder_", None)
        if cfg.autoencoder:
            self.autoencoder_ = AutoencoderDetector(
                window=cfg.autoencoder_window, random_state=self.random_state, **self._tail_options()
            ).fit(self._autoencoder_windows(adapted))

        # How often a value exactly repeats its predecessor in normal data (Laplace-smoothed),
        # and the longest such run: only a run beyond anything normal is a stuck sensor.
        repeats = float(np.sum(np.diff(y[usable]) == 0))
        self.repeat_rate_ = (repeats + 1.0) / (len(step) + 2.0)
        self.longest_run_ = int(_stuck_run_lengths(y[usable]).max())

        self.n_train_points_ = int(usable.sum())
        self.train_start_ = ts[usable][0]
        self.train_end_ = ts[usable][-1]
        finite = np.isfinite(residual)
        self.metrics_ = {
            "n_points": self.n_train_points_,
            "residual_scale": self.residual_scale_,
            "deviation_tail_shape": self.deviation_tail_.shape_,
            "in_sample_mae": float(np.mean(np.abs(residual[finite]))),
            "repeat_rate": self.repeat_rate_,
        }
        return self

    def _tail(self) -> ExceedanceTail:
        cfg = self._config
        return ExceedanceTail(cfg.tail_quantile, cfg.max_tail_shape, **self._tail_options())

    def _tail_options(self) -> dict[str, Any]:
        """How every calibrated tail (the ensemble's, the forest's, the autoencoder's) treats
        recurring episodes and past incidents: one setting for all of them."""
        cfg = self._config
        return {
            "min_recurrences": cfg.tail_min_recurrences,
            "recurrence_margin": cfg.tail_recurrence_margin,
            "episode_gap": cfg.event_merge_gap,
            "trim_at": self._trim_at,
            "incident_spacing": self._incident_spacing,
        }

    @property
    def _trim_at(self) -> float | None:
        cfg = self._config
        return self.threshold_ if cfg.robust_calibration else None

    @property
    def _incident_spacing(self) -> int | None:
        """``config.incident_spacing_days`` in steps of the KPI's grid (None: unknown step)."""
        days = self._config.incident_spacing_days
        if not days or self.freq_ is None:
            return None
        return max(int(pd.Timedelta(days=days) / self.freq_), 1)

    def _to_model(self, y: np.ndarray) -> np.ndarray:
        if not self.log_space_:
            return y
        # np.maximum keeps NaN (a gap stays a gap); np.fmax would turn it into the floor.
        with np.errstate(invalid="ignore"):
            return np.log(np.maximum(y, self.log_floor_))

    def _from_model(self, v: np.ndarray) -> np.ndarray:
        return np.exp(v) if self.log_space_ else v

    def _recent_scale(self, values: np.ndarray, training_scale: float | None = None, first: int = 0) -> np.ndarray:
        """Robust scale of the ``scale_window`` values before each point (adapted residuals
        unless told otherwise, with their training scale), from point ``first`` on (before it:
        the training scale, as for a point with no history)."""
        return self._bounded_scale(_past_rolling_scale(values, self._config.scale_window, first), training_scale)

    def _bounded_scale(self, recent: np.ndarray, training_scale: float | None = None) -> np.ndarray:
        training_scale = self.residual_scale_ if training_scale is None else training_scale
        # Early points (no history yet) fall back to the training scale; a quiet stretch must not
        # shrink the scale to nothing, so it never drops below a tenth of the training scale.
        recent = np.where(np.isfinite(recent), recent, training_scale)
        return np.maximum(recent, max(0.1 * training_scale, self.scale_floor_))

    def _deviation(self, residual: np.ndarray, first: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Recent level, adapted residual, the judged deviation in units of recent scale, and
        that recent scale; the last two are judged from point ``first`` on (the scale's long
        window is what costs, and context points are not judged)."""
        level = _past_rolling_median(residual, self._config.level_window)
        adapted = residual - level
        judged = np.fmin(np.abs(residual), np.abs(adapted))
        scale = self._recent_scale(adapted, first=first)
        return level, adapted, judged / scale, scale

    def _sustained_shift(self, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How far the last ``sustained_window`` residuals sit, together, from normal.

        ``recent`` is their median (so one spike does not move it), ``shifted`` its distance from
        the median residual of the ``sustained_level_window`` points before them. As for single
        points, the judged deviation is the smaller of the two, so a lasting new level is alerted
        once and then absorbed; and the point itself must deviate the same way, so the evidence
        stops as soon as an incident ends. Also returns the residual level that deviation is
        measured from (0: the model itself, or the earlier baseline), for the expected value.
        """
        cfg = self._config
        k = cfg.sustained_window
        # A missing value or two (a short gap) must not switch the evidence off for k points.
        recent = rolling_median(residual, k, min_periods=k // 2 + 1)
        base = _past_rolling_median(residual, cfg.sustained_level_window, lag=k)
        shifted = recent - base
        judged, reference = self._sustained_terms(residual, recent, base, shifted)
        return judged, shifted, reference

    def _sustained_ratio(self, judged: np.ndarray, shifted: np.ndarray, first: int = 0) -> np.ndarray:
        """The judged sustained deviation in units of the recent typical size of the shifts
        (from point ``first`` on, as ``_recent_scale``)."""
        return judged / self._recent_scale(shifted, self.sustained_scale_, first)

    def _stuck_evidence(self, runs: np.ndarray) -> np.ndarray:
        """Evidence of a stuck sensor, from each point's run length (``_stuck_run_lengths``):
        each repeat beyond the longest normal run adds surprise.

        A value stuck for much longer than it took to alert becomes the new normal (like a level
        shift), so the evidence stops after ``level_window`` more points: one incident, one event.
        """
        per_repeat, last_beyond = self._stuck_limits()
        beyond = runs - self.longest_run_
        evidence = np.maximum(beyond, 0) * per_repeat
        return np.where(beyond > last_beyond, 0.0, evidence)

    def _stuck_limits(self) -> tuple[float, float]:
        """``_stuck_evidence``'s constants: the surprise per repeat beyond the longest normal
        run, and how far beyond it the evidence ends (the repeats needed to alert, then
        ``level_window`` more)."""
        cfg = self._config
        per_repeat = float(-np.log10(self.repeat_rate_))
        needed = math.ceil(self.threshold_ / per_repeat) if per_repeat > 0 else math.inf
        return per_repeat, needed + cfg.level_window

    def _iforest_features(self, residual, adapted, y) -> np.ndarray:
        cfg = self._config
        volatility = pd.Series(adapted).rolling(cfg.volatility_window, min_periods=2).std().to_numpy()
        return self._features(adapted, np.diff(y, prepend=np.nan), volatility)

    def _autoencoder_windows(self, adapted: np.ndarray) -> np.ndarray:
        """Per point, the window of adapted residuals (in training scales) ending at it."""
        return sliding_windows(adapted / self.residual_scale_, self._config.autoencoder_window)

    def _features(self, adapted, step, volatility) -> np.ndarray:
        scale = self.residual_scale_
        return np.column_stack(
            [
                adapted / scale,
                step / max(self.step_scale_, 1e-12),
                np.log(np.maximum(volatility / scale, 1e-3)),
            ]
        )

    # -- scoring --------------------------------------------------------------------------
    def score(
        self,
        ts,
        values,
        n_context: int = 0,
        gap: np.ndarray | None = None,
        threshold_raise: float | np.ndarray = 0.0,
    ) -> pd.DataFrame:
        """Score every point after the first ``n_context`` ones: ``score_columns`` as a frame
        of the ``SCORE_COLUMNS``."""
        return score_frame(self.score_columns(ts, values, n_context, gap, threshold_raise))

    def score_columns(
        self, ts, values, n_context: int, gap: np.ndarray | None, threshold_raise: float | np.ndarray
    ) -> dict[str, Any]:
        """Score every point after the first ``n_context`` ones, as ``SCORE_COLUMNS`` -> array
        (``ts``: a ``DatetimeIndex``), for callers that put many KPIs' scores in one frame
        (building a frame per KPI costs about a millisecond).

        Context points are earlier, already-known points that only feed the rolling level,
        volatility and smoothing; they are not returned. ``gap`` marks points inside a long
        missing-data gap (value NaN): they are reported as anomalies flagged by ``gap``.
        ``threshold_raise``: surprise added to the threshold (analysts' false positives,
        ``feedback.threshold_raise``), one number or one per returned point; the scores are
        then 0.5 at the raised threshold.
        """
        ts = pd.DatetimeIndex(ts)
        y = np.asarray(values, dtype=float)
        gap = np.zeros(len(y), dtype=bool) if gap is None else np.asarray(gap, dtype=bool)
        # The forest is the costly part and context points are not returned: judge only the new
        # ones (and those the smoothing window reaches back to).
        first_judged = max(0, n_context - (self._config.smoothing_window - 1))
        judged, _ = self._judge_all(ts, y, first_judged)
        return self._finish(judged, n_context, ts, y, gap, threshold_raise)

    def prepare(self, ts, values, ahead: int = 0) -> ScoringState:
        """Judge a stretch of cleaned series once, for ``score_after`` to score later points;
        ``ahead``: forecast that many slots after it (on the model's step) in one go."""
        ts = pd.DatetimeIndex(ts)
        y = np.asarray(values, dtype=float)
        # Only the last points' combined surprise is read again (by the smoothing window).
        first_judged = max(0, len(y) - (self._config.smoothing_window - 1))
        judged, state = self._judge_all(ts, y, first_judged)
        if ahead and len(ts):
            self._forecast(state, pd.date_range(ts[-1] + self.freq_, periods=ahead, freq=self.freq_))
        return state

    def score_after(
        self,
        state: ScoringState,
        ts,
        values,
        gap: np.ndarray | None = None,
        keep: int | None = None,
        report: Sequence[int] | None = None,
        threshold_raise: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """Score the points that follow the first ``keep`` points of ``state`` (default: all of
        them; all of them with a smoothing window), as ``score`` would with those points as
        context, without judging them again. ``report``: the positions of the points whose
        scores are wanted (default: all), increasing; the others (short gaps filled between
        points, say) still feed the windows of later points, but skip the forest and the
        finishing unless a smoothing window reads their surprise.

        Real-time scoring judges a point or a few at a time, where numpy's cost per call
        outweighs its arithmetic, so the points are judged one by one in plain float
        arithmetic: ``score``'s steps (``_deviation``, ``_sustained_shift``, ``_judged``,
        ``_finish``) point by point, the rolling windows kept sorted as they move on (numpy
        does the logarithms, so their last bits match too). The forest judges the reported
        points (all of them with a smoothing window) in one call, or one row without the array
        checks. The numbers equal ``score``'s up to the last bits of the rolling mean and
        standard deviation, which pandas accumulates along the whole window (tested). Returns
        the ``SCORE_COLUMNS`` as arrays; ``ts``: aware timestamps, or naive UTC ``datetime64``;
        the ``ts`` column gives them back as they came. ``threshold_raise``: as ``score``'s (one
        number).
        """
        cfg = self._config
        keep = len(state) if keep is None else keep
        if cfg.smoothing_window > 1 and keep != len(state):
            # ``prepare`` judged the forest on the state's last points only, for smoothing.
            raise ValueError("with a smoothing window, score_after keeps every point of the state")
        fresh = np.asarray(values, dtype=float)
        gap = np.zeros(len(fresh), dtype=bool) if gap is None else np.asarray(gap, dtype=bool)
        memo = state.memo
        yhat = self._forecast(state, ts).tolist()
        if self.log_space_:  # _to_model, value by value
            floor = self.log_floor_
            fresh_model = [float(np.log(_at_least(v, floor))) for v in fresh.tolist()]
        else:
            fresh_model = fresh.tolist()
        sustained = hasattr(self, "sustained_tail_")

        def sequence(name: str) -> _Sequence:  # "residual", "adapted", "|adapted|", ...
            kept = memo.get(("list", name))
            if kept is None:
                series = getattr(state, name.strip("|"))
                kept = memo["list", name] = (np.abs(series) if "|" in name else series).tolist()
            return _Sequence(kept, keep)

        residuals, adapted = sequence("residual"), sequence("adapted")
        abs_adapted = sequence("|adapted|")
        window, scale_min = cfg.scale_window, min(cfg.scale_window, MIN_SCALE_POINTS)
        level_at = _RollingMedian(residuals, cfg.level_window, 1, keep, memo, "residual")
        scale_at = _RollingMedian(abs_adapted, window, scale_min, keep, memo, "|adapted|")
        if sustained:
            k = cfg.sustained_window
            abs_shifted = sequence("|shifted|")
            recent_at = _RollingMedian(residuals, k, k // 2 + 1, keep + 1, memo, "residual")
            base_at = _RollingMedian(residuals, cfg.sustained_level_window, 1, keep - k + 1, memo, "residual")
            shift_scale_at = _RollingMedian(abs_shifted, window, scale_min, keep, memo, "|shifted|")

        def bounded(median: float, training_scale: float) -> float:  # as _bounded_scale
            recent = ROBUST_SCALE * median
            recent = recent if math.isfinite(recent) else training_scale
            return max(recent, max(0.1 * training_scale, self.scale_floor_))

        residual_scale = self.residual_scale_
        step_scale = max(self.step_scale_, 1e-12)
        previous = float(state.y_model[keep - 1]) if keep else math.nan
        last_y = float(state.y[keep - 1]) if keep else math.nan
        run = float(state.runs[keep - 1]) if keep else 0.0
        judged, features, shapes = [], [], []
        shape_window = cfg.autoencoder_window
        for j, (value, model_value, expected) in enumerate(zip(fresh.tolist(), fresh_model, yhat)):
            i = keep + j
            residual = model_value - expected
            level = level_at.at(i)
            level = _zero_if_nan(level)
            deviation = residual - level  # the adapted residual
            residuals.append(residual)
            recent_scale = bounded(scale_at.at(i), residual_scale)
            adapted.append(deviation)
            abs_adapted.append(abs(deviation))
            ratio = _fmin(abs(residual), abs(deviation)) / recent_scale
            volatility = _sample_std(adapted.window(i + 1 - cfg.volatility_window, i + 1))
            if hasattr(self, "autoencoder_"):  # as _autoencoder_windows
                shape = adapted.window(i + 1 - shape_window, i + 1)
                shapes.append([math.nan] * (shape_window - len(shape)) + [v / residual_scale for v in shape])
            features.append(
                [
                    deviation / residual_scale,
                    (model_value - previous) / step_scale,
                    float(np.log(_at_least(volatility / residual_scale, 1e-3))),
                ]
            )
            previous = model_value
            run = run + 1 if value == last_y else 0.0
            last_y = value
            point = [expected, residual, level, deviation, recent_scale, ratio, run]
            if sustained:  # as _sustained_shift and _sustained_terms
                recent = recent_at.at(i + 1)
                base = base_at.at(i + 1 - k)
                base = _zero_if_nan(base)
                shifted = recent - base
                sign = recent if recent != recent else (recent > 0) - (recent < 0)
                current = _at_least(residual * sign, 0.0)
                judged_shift = _fmin(_fmin(abs(recent), abs(shifted)), current)
                reference = base if abs(shifted) < abs(recent) else 0.0
                shift_scale = bounded(shift_scale_at.at(i), self.sustained_scale_)
                abs_shifted.append(abs(shifted))
                point += [judged_shift / shift_scale, reference]
            judged.append(point)
        every = list(range(len(fresh)))
        wanted = every if report is None else [int(position) for position in report]
        if any(later <= earlier for earlier, later in zip(wanted, wanted[1:])):
            raise ValueError("report: positions must increase")
        judged_points = wanted if cfg.smoothing_window == 1 else every
        if len(judged_points) == 1:  # the usual case: one row, without the array checks
            forest = {judged_points[0]: self.iforest_.surprise_one(features[judged_points[0]])}
        else:
            rows = np.array([features[j] for j in judged_points], dtype=float).reshape(-1, 3)
            forest = dict(zip(judged_points, self.iforest_.surprise(rows).tolist()))
        shape_surprise = None
        if shapes:
            windows = np.array([shapes[j] for j in judged_points], dtype=float)
            shape_surprise = dict(zip(judged_points, self.autoencoder_.surprise(windows).tolist()))
        columns = self._finish_points(state, keep, fresh, gap, judged, forest, wanted, threshold_raise, shape_surprise)
        if report is not None:
            ts = [ts[j] for j in wanted] if isinstance(ts, list) else ts[wanted]
        columns.update(ts=ts, value=fresh[wanted])
        return columns

    def _finish_points(
        self,
        state: ScoringState,
        keep: int,
        fresh: np.ndarray,
        gap: np.ndarray,
        judged: list[list[float]],
        forest: dict[int, float],
        wanted: list[int],
        threshold_raise: float = 0.0,
        shape_surprise: dict[int, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """``_judged`` and ``_finish`` for ``score_after``, point by point: the score columns
        but ``ts`` and ``value`` of the ``wanted`` points among points judged as ``[yhat,
        residual, level, adapted, recent scale, ratio, stuck run]`` (then, with the sustained
        component, its ratio and reference); ``forest``: the forest surprise of every point
        whose combined surprise is read, by position; ``threshold_raise``: as ``score``'s;
        ``shape_surprise``: the autoencoder's surprise of the same points, if it is on."""
        cfg = self._config
        threshold = self.threshold_ + threshold_raise
        constants = state.memo.get("finish")
        if constants is None:
            constants = state.memo["finish"] = (self.deviation_tail_.quantile(cfg.band_coverage), *self._stuck_limits())
        band, per_repeat, last_beyond = constants
        names = ["prophet", "iforest", "flatline"]
        sustained = hasattr(self, "sustained_tail_")
        if sustained:
            names.append("sustained")
        if shape_surprise is not None:
            names.append("autoencoder")
        smoothing = cfg.smoothing_window
        combined_all = state.combined[max(0, keep - (smoothing - 1)) : keep].tolist()

        bands, scores, is_anomalies, severities, flagged_bys = [], [], [], [], []
        reported = set(wanted)
        values, gaps = fresh.tolist(), gap.tolist()
        before = [float(state.y[keep - 1]) if keep else 0.0, *values[:-1]]
        for j, surprise_forest in forest.items():  # in time order
            point, value, in_gap = judged[j], values[j], gaps[j]
            opens_outage = in_gap and before[j] == before[j]  # the value before is not NaN
            yhat, residual, level, adapted, recent_scale, ratio, run = point[:7]
            beyond = run - self.longest_run_  # as _stuck_evidence
            stuck = 0.0 if beyond > last_beyond else max(beyond, 0) * per_repeat
            surprises = [_zero_if_nan(self.deviation_tail_.surprise_one(ratio)), surprise_forest, stuck]
            if sustained:
                surprises.append(_zero_if_nan(self.sustained_tail_.surprise_one(point[7])))
            if shape_surprise is not None:
                surprises.append(shape_surprise[j])
            strongest = max(surprises)
            combined_all.append(strongest)
            combined = strongest
            if smoothing > 1:  # the rolling mean, with min_periods=1
                recent = combined_all[-smoothing:]
                combined = sum(recent) / len(recent)
            if j not in reported:
                continue
            flagged = ",".join(name for name, surprise in zip(names, surprises) if surprise >= threshold) or None
            if in_gap:
                score, is_anomaly, flagged = (cfg.gap_score, True, "gap") if opens_outage else (0.0, False, None)
            else:
                score = score_from_surprise_one(combined, threshold)
                is_anomaly = combined >= threshold and math.isfinite(value)
            if is_anomaly and flagged is None:
                flagged = "ensemble"
            if abs(adapted) > abs(residual):
                level = 0.0
            if sustained and is_anomaly and surprises.index(strongest) == 3:
                level = point[8]
            expected = yhat + level
            half_width = band * recent_scale
            bands.append((expected, expected - half_width, expected + half_width))
            scores.append(
                (
                    score_from_surprise_one(surprises[0], threshold),
                    score_from_surprise_one(surprise_forest, threshold),
                    score,
                )
            )
            is_anomalies.append(is_anomaly)
            severities.append(self._severity_one(score, residual - level, recent_scale) if is_anomaly else None)
            flagged_bys.append(flagged if is_anomaly else None)
        # A few numpy calls for all the points: model space back to values, then columns.
        expected, lower, upper = self._from_model(np.array(bands, dtype=float).reshape(-1, 3)).T
        prophet_score, iforest_score, combined_score = np.array(scores, dtype=float).reshape(-1, 3).T
        return {
            "expected": expected,
            "lower": lower,
            "upper": upper,
            "prophet_score": prophet_score,
            "iforest_score": iforest_score,
            "score": combined_score,
            "is_anomaly": np.array(is_anomalies, dtype=bool),
            "severity": np.array(severities, dtype=object),
            "flagged_by": np.array(flagged_bys, dtype=object),
        }

    def _forecast(self, state: ScoringState, ts) -> np.ndarray:
        """Prophet's ``yhat`` at ``ts`` (aware, or naive UTC ``datetime64``), each timestamp
        forecast once per state."""
        if not isinstance(ts, (pd.DatetimeIndex, np.ndarray)):
            ts = pd.DatetimeIndex(ts)
        if isinstance(ts, pd.DatetimeIndex) and ts.tz is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        ns = np.asarray(ts, dtype="datetime64[ns]")
        keys = [("yhat", stamp) for stamp in ns.view(np.int64).tolist()]
        found = [state.memo.get(key) for key in keys]
        if None not in found:
            return np.array(found, dtype=float)
        yhat = self.prophet_.predict(pd.DatetimeIndex(ns).tz_localize("UTC"))
        state.memo.update(zip(keys, yhat.tolist()))
        return yhat

    def _sustained_terms(self, residual, recent, base, shifted) -> tuple[np.ndarray, np.ndarray]:
        """The judged sustained deviation and the residual level it is measured from (see
        ``_sustained_shift``)."""
        current = np.maximum(residual * np.sign(recent), 0.0)
        judged = np.fmin(np.fmin(np.abs(recent), np.abs(shifted)), current)
        return judged, np.where(np.abs(shifted) < np.abs(recent), base, 0.0)

    def _judge_all(self, ts: pd.DatetimeIndex, y: np.ndarray, first_judged: int) -> tuple[_Judged, ScoringState]:
        """Every point judged with whole-series rolling windows; the forest, and without a
        smoothing window the recent scales, from ``first_judged`` on (before it, the forest's
        surprise is 0 and the scales are the training ones: those points are context, never
        returned)."""
        y_model = self._to_model(y)
        yhat = self.prophet_.predict(ts)
        residual = y_model - yhat
        # With smoothing, the rolling mean accumulates every point's combined surprise, so the
        # context's own scales are kept (else the last bits of later scores would move).
        first_scaled = first_judged if self._config.smoothing_window == 1 else 0
        level, adapted, ratio, recent_scale = self._deviation(residual, first_scaled)
        iforest_surprise = np.zeros(len(y))
        iforest_surprise[first_judged:] = self.iforest_.surprise(
            self._iforest_features(residual, adapted, y_model)[first_judged:]
        )
        autoencoder = None
        if hasattr(self, "autoencoder_"):
            autoencoder = np.zeros(len(y))
            autoencoder[first_judged:] = self.autoencoder_.surprise(self._autoencoder_windows(adapted)[first_judged:])
        runs = _stuck_run_lengths(y)
        sustained = shifted = None
        # Off for models fitted on little history, and for those trained before it existed.
        if hasattr(self, "sustained_tail_"):
            judged_shift, shifted, reference = self._sustained_shift(residual)
            sustained = (self._sustained_ratio(judged_shift, shifted, first_scaled), reference)
        judged = self._judged(
            yhat, residual, level, adapted, recent_scale, ratio, iforest_surprise, runs, sustained, autoencoder
        )
        state = ScoringState(y, y_model, residual, adapted, shifted, judged.combined, runs)
        return judged, state

    def _judged(
        self, yhat, residual, level, adapted, recent_scale, ratio, iforest_surprise, runs, sustained, autoencoder=None
    ) -> _Judged:
        components = {
            "prophet": _nan_to_zero(self.deviation_tail_.surprise(ratio)),
            "iforest": iforest_surprise,
            "flatline": self._stuck_evidence(runs),
        }
        reference = None
        if sustained is not None:
            sustained_ratio, reference = sustained
            components["sustained"] = _nan_to_zero(self.sustained_tail_.surprise(sustained_ratio))
        if autoencoder is not None:
            components["autoencoder"] = autoencoder
        return _Judged(yhat, residual, level, adapted, recent_scale, components, reference)

    def _finish(
        self, judged: _Judged, cut: int, ts, y, gap, threshold_raise: float | np.ndarray = 0.0
    ) -> dict[str, np.ndarray]:
        """The score columns of the judged points from ``cut`` on (the points before it only
        feed the smoothing), judged against the threshold raised by ``threshold_raise``."""
        cfg = self._config
        combined = judged.combined
        if cfg.smoothing_window > 1:
            combined = pd.Series(combined).rolling(cfg.smoothing_window, min_periods=1).mean().to_numpy()
        combined = combined[cut:]
        n = len(combined)
        before = np.concatenate([[0.0], np.asarray(y, dtype=float)[:-1]])[cut:]
        surprises = judged.surprises[cut:]
        ts, y, gap = ts[cut:], y[cut:], gap[cut:]
        residual, adapted = judged.residual[cut:], judged.adapted[cut:]
        level, recent_scale = judged.level[cut:], judged.recent_scale[cut:]

        threshold = self.threshold_ + np.broadcast_to(np.asarray(threshold_raise, dtype=float), (n,))
        score = score_from_surprise(combined, threshold)
        is_anomaly = combined >= threshold
        names = list(judged.components)
        flagged_by = np.array(
            [
                ",".join(name for name, hit in zip(names, row) if hit) or None
                for row in (surprises >= threshold[:, None]).tolist()
            ]
            if n
            else [],
            dtype=object,
        )
        # An outage is one event: its first missing slot is the anomaly (flagged "gap"), the
        # slots after it are missing data, not anomalies.
        opens_outage = gap & np.isfinite(before)
        score = np.where(opens_outage, cfg.gap_score, np.where(gap, 0.0, score))
        is_anomaly = np.where(gap, opens_outage, is_anomaly & np.isfinite(y))
        # numpy's stubs leave None (an object array's value) out of np.where's choices.
        flagged_by = np.where(gap, np.where(opens_outage, "gap", None), flagged_by)  # type: ignore[call-overload]
        # An anomalous point always names a component, even when only smoothing pushed it over.
        flagged_by = np.where(is_anomaly & (flagged_by == None), "ensemble", flagged_by)  # noqa: E711

        # A point is explained against the reference it is judged against: the recent level
        # where that is at least as close to it as the model alone (a drift, a lasting new
        # level), else the model. So once an incident ends, ``expected`` does not stay at the
        # incident's level until the level window has passed it (NaN: the level stays).
        level = np.where(np.abs(adapted) > np.abs(residual), 0.0, level)
        if judged.sustained_reference is not None:
            # A point judged by its sustained deviation is explained against what that deviation
            # is measured from, not against the recent level, which has already followed it.
            strongest = np.argmax(surprises, axis=1)
            by_sustained = is_anomaly & (strongest == names.index("sustained"))
            level = np.where(by_sustained, judged.sustained_reference[cut:], level)
        expected = judged.yhat[cut:] + level
        half_width = self.deviation_tail_.quantile(cfg.band_coverage) * recent_scale
        lower, upper = self._from_model(expected - half_width), self._from_model(expected + half_width)
        return {
            "ts": ts,
            "value": y,
            "expected": self._from_model(expected),
            "lower": lower,
            "upper": upper,
            "prophet_score": score_from_surprise(judged.components["prophet"][cut:], threshold),
            "iforest_score": score_from_surprise(judged.components["iforest"][cut:], threshold),
            "score": score,
            "is_anomaly": is_anomaly.astype(bool),
            "severity": self._severity(score, is_anomaly, residual - level, recent_scale),
            "flagged_by": np.where(is_anomaly, flagged_by, None),  # type: ignore[call-overload]
        }

    def _severity(
        self, score: np.ndarray, is_anomaly: np.ndarray, deviation: np.ndarray, recent_scale: np.ndarray
    ) -> np.ndarray:
        """``severity_of`` each anomalous point (None elsewhere), from its score and its
        deviation from the expected value in model space."""
        severity = np.full(len(score), None, dtype=object)
        for i in np.flatnonzero(is_anomaly).tolist():
            severity[i] = self._severity_one(float(score[i]), float(deviation[i]), float(recent_scale[i]))
        return severity

    def _severity_one(self, score: float, deviation: float, recent_scale: float) -> str:
        """``severity_of`` one point: ``deviation`` (model space) is a log ratio for a KPI
        modelled in log space, and ``recent_scale`` its normal spread."""
        size = abs(deviation)
        log_ratio = size if self.log_space_ else math.nan
        return severity_of(score, log_ratio, size / recent_scale, self._config)

    # -- model registry (the format: ``persistence``) ----------------------------------------
    COMPONENT_KINDS = persistence.COMPONENT_KINDS
    SHELL_SCALARS = persistence.SHELL_SCALARS

    def to_artifacts(self) -> dict[str, bytes]:
        """The fitted detector as registry rows, data only (``artifacts``, docs/models.md): one
        artifact per component, and the ``ensemble`` with the config, learned scalars and
        calibrations."""
        return persistence.to_artifacts(self)

    @classmethod
    def from_artifacts(cls, artifacts: dict[str, bytes]) -> "EnsembleDetector":
        """The detector ``to_artifacts`` stored, scoring exactly as it did."""
        return persistence.from_artifacts(cls, artifacts)

    @classmethod
    def shell_from_artifact(cls, artifact: bytes) -> "EnsembleDetector":
        """The detector of an ``ensemble`` artifact without its fitted components (``prophet_``,
        ``iforest_``): config, grid step (``freq_``), calibrations and ``context_points``, what
        choosing a scoring window needs."""
        return persistence.shell_from_artifact(cls, artifact)

    @classmethod
    def scoring_window_of_artifact(cls, artifact: bytes) -> tuple[pd.Timedelta, int]:
        """(grid step ``freq_``, ``context_points``) of an ``ensemble`` artifact, without
        decoding its arrays: what choosing a scoring window needs, at a fraction of
        ``shell_from_artifact``'s cost."""
        return persistence.scoring_window_of_artifact(cls, artifact)

    @property
    def context_points(self) -> int:
        """Earlier points that ``score`` needs before the first new point."""
        cfg = self._config
        # The scale and volatility windows run over adapted residuals, each of which needs the
        # level window before it; smoothing and the one-step difference add their own reach.
        reach = max(cfg.volatility_window, cfg.scale_window) + cfg.smoothing_window + 1
        # The sustained median and its baseline reach back over both of their windows.
        sustained = cfg.sustained_window
        if sustained > 1:
            sustained += cfg.sustained_level_window
        return max(cfg.level_window, sustained) + reach
