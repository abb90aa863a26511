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

import copy
import pickle
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from kpi_pipeline.detection.calibration import ExceedanceTail, score_from_surprise
from kpi_pipeline.detection.events import SEVERITY_ORDER
from kpi_pipeline.detection.iforest import IsolationForestDetector
from kpi_pipeline.detection.preprocess import infer_frequency
from kpi_pipeline.detection.prophet_model import ProphetDetector

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


class InsufficientHistory(ValueError):
    """Raised by ``fit`` when a KPI has too few usable points to learn what normal looks like."""


@dataclass(frozen=True)
class ProphetConfig:
    changepoint_prior_scale: float = 0.05
    seasonality_prior_scale: float = 10.0
    seasonality_mode: str = "additive"
    daily_seasonality: bool | str = "auto"
    weekly_seasonality: bool | str = "auto"
    yearly_seasonality: bool | str = "auto"
    holidays_country: str | None = "US"


@dataclass(frozen=True)
class IForestConfig:
    n_estimators: int = 100
    max_samples: int = 256
    tail_quantile: float = 0.9


@dataclass(frozen=True)
class DetectorConfig:
    """Every tunable of the detector, with the defaults the benchmarks were measured with."""

    threshold: float = 3.5
    """Surprise (-log10 tail probability) at which a point is anomalous; score 0.5."""
    severity_scores: tuple[float, float, float, float] = (0.5, 0.6, 0.7, 0.8)
    """Score at which severity becomes low, medium, high, critical."""
    level_window: int = 8
    """Points over which the recent level is taken (how fast a level shift is absorbed)."""
    smoothing_window: int = 1
    """Points over which the combined surprise is averaged (1 = no smoothing)."""
    volatility_window: int = 7
    scale_window: int = 1000
    """Points over which the recent residual scale is taken."""
    tail_quantile: float = 0.9
    """Quantile of training deviations above which the extreme-value tail is fitted."""
    max_tail_shape: float = 0.5
    """Upper bound of the fitted tail's shape (0 = exponential tail, 0.5 = heavy power law)."""
    tail_min_recurrences: int = 3
    """Separate training episodes that must have come close to a value before their observed
    rate caps its surprise: a pattern that keeps recurring is normal (0 = off; episodes are
    merged like events, see ``calibration.ExceedanceTail``)."""
    tail_recurrence_margin: float = 0.8
    """How close counts: a peak at least this share of the value's distance beyond the tail
    threshold, in (0, 1]."""
    log_transform: bool = True
    """Model KPIs whose training values are all positive in log space."""
    band_coverage: float = 0.99
    """Share of normal points inside the reported lower/upper band."""
    min_train_points: int = 48
    max_train_points: int = 4032
    """Training uses at most this many most recent points (keeps fits fast and recent)."""
    sustained_window: int = 12
    """Points whose median residual is judged as one sustained deviation (0 or 1 = off)."""
    sustained_level_window: int = 48
    """Points before those whose median residual is the baseline a sustained deviation is from."""
    sustained_min_train_points: int = 600
    """Training points a model needs before it judges sustained deviations: a model fitted on
    little history drifts away from the data, which would read as one long sustained deviation."""
    event_merge_gap: int = 2
    """Quiet points allowed inside one event."""
    opening_margin: float = 1.0
    """Decades of surprise by which a point must beat the openings in the merge window before it
    to open an episode of its own in ``events.opening_scores`` (``kpi-pipeline evaluate``'s
    ``anomaly_score``)."""
    gap_score: float = 0.6
    """Score given to a long missing-data gap (flagged by 'gap')."""
    prophet: ProphetConfig = field(default_factory=ProphetConfig)
    iforest: IForestConfig = field(default_factory=IForestConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _past_rolling_median(values: np.ndarray, window: int, lag: int = 1) -> np.ndarray:
    """Median of the ``window`` values ending ``lag`` points before each point (0 before any)."""
    level = pd.Series(values).shift(lag).rolling(window, min_periods=1).median().to_numpy()
    return np.nan_to_num(level, nan=0.0)


def _past_rolling_scale(values: np.ndarray, window: int) -> np.ndarray:
    """Robust scale (1.4826 x median absolute value) of the ``window`` values before each point."""
    magnitude = pd.Series(np.abs(values)).shift(1)
    return 1.4826 * magnitude.rolling(window, min_periods=min(window, 24)).median().to_numpy()


def _stuck_run_lengths(values: np.ndarray) -> np.ndarray:
    """Per point, how many consecutive previous values it exactly repeats."""
    same = np.zeros(len(values), dtype=bool)
    same[1:] = values[1:] == values[:-1]
    runs = np.zeros(len(values))
    count = 0
    for i, repeated in enumerate(same):
        count = count + 1 if repeated else 0
        runs[i] = count
    return runs


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
        if usable.sum() < cfg.min_train_points:
            raise InsufficientHistory(
                f"insufficient history: {int(usable.sum())} usable points, "
                f"need at least {cfg.min_train_points}"
            )
        # Keep the most recent points; the window is positional so excluded points stay as gaps.
        start = max(0, len(y) - cfg.max_train_points)
        ts, y, usable = ts[start:], y[start:], usable[start:]
        y_train = np.where(usable, y, np.nan)

        self.freq_ = infer_frequency(ts[usable])
        self.log_space_ = bool(cfg.log_transform and np.min(y[usable]) > 0)
        # A later value at or below zero is extreme for a positive KPI; clamp it to stay finite.
        self.log_floor_ = float(np.min(y[usable])) / 10.0 if self.log_space_ else 0.0
        y_train = self._to_model(y_train)
        self.prophet_ = ProphetDetector(**asdict(cfg.prophet)).fit(ts[usable], y_train[usable])
        residual = y_train - self.prophet_.predict(ts)
        typical = float(np.nanmedian(np.abs(y_train[usable])))
        self.scale_floor_ = max(1e-6 * typical, 1e-9)
        adapted = residual - _past_rolling_median(residual, cfg.level_window)
        self.residual_scale_ = max(
            float(np.nanmedian(np.abs(adapted[usable]))) * 1.4826, self.scale_floor_
        )
        _, adapted, ratio, _ = self._deviation(residual)
        self.deviation_tail_ = self._tail().fit(ratio[usable])

        for name in ("sustained_scale_", "sustained_tail_"):
            self.__dict__.pop(name, None)
        if cfg.sustained_window > 1 and usable.sum() >= cfg.sustained_min_train_points:
            judged, shifted, _ = self._sustained_shift(residual)
            shifts = np.abs(shifted[usable & np.isfinite(shifted)])
            self.sustained_scale_ = max(
                float(np.median(shifts)) * 1.4826 if shifts.size else 0.0, self.scale_floor_
            )
            sustained = self._sustained_ratio(judged, shifted)
            self.sustained_tail_ = self._tail().fit(
                sustained[usable & np.isfinite(sustained)]
            )
        step = np.diff(y_train[usable])
        self.step_scale_ = max(
            float(np.median(np.abs(step - np.median(step)))) * 1.4826 if len(step) else 0.0,
            self.residual_scale_,
        )
        features = self._iforest_features(residual, adapted, y_train)
        self.iforest_ = IsolationForestDetector(
            **asdict(cfg.iforest),
            random_state=self.random_state,
            min_recurrences=cfg.tail_min_recurrences,
            recurrence_margin=cfg.tail_recurrence_margin,
            episode_gap=cfg.event_merge_gap,
        ).fit(features)

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
        return ExceedanceTail(
            cfg.tail_quantile,
            cfg.max_tail_shape,
            min_recurrences=cfg.tail_min_recurrences,
            recurrence_margin=cfg.tail_recurrence_margin,
            episode_gap=cfg.event_merge_gap,
        )

    def _to_model(self, y: np.ndarray) -> np.ndarray:
        if not self.log_space_:
            return y
        # np.maximum keeps NaN (a gap stays a gap); np.fmax would turn it into the floor.
        with np.errstate(invalid="ignore"):
            return np.log(np.maximum(y, self.log_floor_))

    def _from_model(self, v: np.ndarray) -> np.ndarray:
        return np.exp(v) if self.log_space_ else v

    def _recent_scale(self, values: np.ndarray, training_scale: float | None = None) -> np.ndarray:
        """Robust scale of the ``scale_window`` values before each point (adapted residuals
        unless told otherwise, with their training scale)."""
        training_scale = self.residual_scale_ if training_scale is None else training_scale
        recent = _past_rolling_scale(values, self._config.scale_window)
        # Early points (no history yet) fall back to the training scale; a quiet stretch must not
        # shrink the scale to nothing, so it never drops below a tenth of the training scale.
        recent = np.where(np.isfinite(recent), recent, training_scale)
        return np.maximum(recent, max(0.1 * training_scale, self.scale_floor_))

    def _deviation(
        self, residual: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Recent level, adapted residual, the judged deviation in units of recent scale, and
        that recent scale."""
        level = _past_rolling_median(residual, self._config.level_window)
        adapted = residual - level
        judged = np.fmin(np.abs(residual), np.abs(adapted))
        scale = self._recent_scale(adapted)
        return level, adapted, judged / scale, scale

    def _sustained_shift(
        self, residual: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        series = pd.Series(residual)
        # A missing value or two (a short gap) must not switch the evidence off for k points.
        recent = series.rolling(k, min_periods=k // 2 + 1).median().to_numpy()
        base = _past_rolling_median(residual, cfg.sustained_level_window, lag=k)
        shifted = recent - base
        current = np.clip(residual * np.sign(recent), 0.0, None)
        judged = np.fmin(np.fmin(np.abs(recent), np.abs(shifted)), current)
        reference = np.where(np.abs(shifted) < np.abs(recent), base, 0.0)
        return judged, shifted, reference

    def _sustained_ratio(self, judged: np.ndarray, shifted: np.ndarray) -> np.ndarray:
        """The judged sustained deviation in units of the recent typical size of the shifts."""
        return judged / self._recent_scale(shifted, self.sustained_scale_)

    def _stuck_surprise(self, y: np.ndarray) -> np.ndarray:
        """Evidence of a stuck sensor: each repeat beyond the longest normal run adds surprise.

        A value stuck for much longer than it took to alert becomes the new normal (like a level
        shift), so the evidence stops after ``level_window`` more points: one incident, one event.
        """
        cfg = self._config
        per_repeat = -np.log10(self.repeat_rate_)
        beyond = _stuck_run_lengths(y) - self.longest_run_
        needed = np.ceil(cfg.threshold / per_repeat) if per_repeat > 0 else np.inf
        evidence = np.clip(beyond, 0, None) * per_repeat
        return np.where(beyond > needed + cfg.level_window, 0.0, evidence)

    def _iforest_features(self, residual, adapted, y) -> np.ndarray:
        cfg = self._config
        scale = self.residual_scale_
        volatility = (
            pd.Series(adapted).rolling(cfg.volatility_window, min_periods=2).std().to_numpy()
        )
        step = np.diff(y, prepend=np.nan)
        return np.column_stack(
            [
                adapted / scale,
                step / max(getattr(self, "step_scale_", scale), 1e-12),
                np.log(np.clip(volatility / scale, 1e-3, None)),
            ]
        )

    # -- scoring --------------------------------------------------------------------------
    def score(self, ts, values, n_context: int = 0, gap: np.ndarray | None = None) -> pd.DataFrame:
        """Score every point after the first ``n_context`` ones.

        Context points are earlier, already-known points that only feed the rolling level,
        volatility and smoothing; they are not returned. ``gap`` marks points inside a long
        missing-data gap (value NaN): they are reported as anomalies flagged by ``gap``.
        """
        cfg = self._config
        ts = pd.DatetimeIndex(ts)
        y = np.asarray(values, dtype=float)
        gap = np.zeros(len(y), dtype=bool) if gap is None else np.asarray(gap, dtype=bool)

        y_model = self._to_model(y)
        yhat = self.prophet_.predict(ts)
        residual = y_model - yhat
        level, adapted, ratio, recent_scale = self._deviation(residual)
        prophet_surprise = np.nan_to_num(self.deviation_tail_.surprise(ratio), nan=0.0)
        # The forest is the costly part and context points are not returned: judge only the new
        # ones (and those the smoothing window reaches back to).
        first_judged = max(0, n_context - (cfg.smoothing_window - 1))
        iforest_surprise = np.zeros(len(y))
        iforest_surprise[first_judged:] = self.iforest_.surprise(
            self._iforest_features(residual, adapted, y_model)[first_judged:]
        )
        stuck_surprise = self._stuck_surprise(y)

        components = {
            "prophet": prophet_surprise,
            "iforest": iforest_surprise,
            "flatline": stuck_surprise,
        }
        # Off for models fitted on little history, and for those registered before it existed.
        if hasattr(self, "sustained_tail_"):
            judged_shift, shifted, sustained_reference = self._sustained_shift(residual)
            components["sustained"] = np.nan_to_num(
                self.sustained_tail_.surprise(self._sustained_ratio(judged_shift, shifted)),
                nan=0.0,
            )
        surprises = np.column_stack(list(components.values()))
        combined = np.max(surprises, axis=1)
        if cfg.smoothing_window > 1:
            combined = (
                pd.Series(combined).rolling(cfg.smoothing_window, min_periods=1).mean().to_numpy()
            )
        score = score_from_surprise(combined, cfg.threshold)
        is_anomaly = combined >= cfg.threshold
        # Named for the returned points only (the context's are sliced off below).
        names = list(components)
        flagged_by = np.full(len(y), None, dtype=object)
        flagged_by[n_context:] = [
            ",".join(name for name, hit in zip(names, row) if hit) or None
            for row in (surprises[n_context:] >= cfg.threshold).tolist()
        ]

        score = np.where(gap, cfg.gap_score, score)
        is_anomaly = np.where(gap, True, is_anomaly & np.isfinite(y))
        flagged_by = np.where(gap, "gap", flagged_by)
        # An anomalous point always names a component, even when only smoothing pushed it over.
        flagged_by = np.where(is_anomaly & (flagged_by == None), "ensemble", flagged_by)  # noqa: E711

        # A point is explained against the reference it is judged against: the recent level
        # where that is at least as close to it as the model alone (a drift, a lasting new
        # level), else the model. So once an incident ends, ``expected`` does not stay at the
        # incident's level until the level window has passed it (NaN: the level stays).
        level = np.where(np.abs(adapted) > np.abs(residual), 0.0, level)
        if "sustained" in components:
            # A point judged by its sustained deviation is explained against what that deviation
            # is measured from, not against the recent level, which has already followed it.
            strongest = np.argmax(surprises, axis=1)
            by_sustained = is_anomaly & (strongest == list(components).index("sustained"))
            level = np.where(by_sustained, sustained_reference, level)
        expected = yhat + level
        half_width = self.deviation_tail_.quantile(cfg.band_coverage) * recent_scale
        lower, upper = self._from_model(expected - half_width), self._from_model(expected + half_width)
        expected = self._from_model(expected)
        columns = {
            "ts": ts,
            "value": y,
            "expected": expected,
            "lower": lower,
            "upper": upper,
            "prophet_score": score_from_surprise(prophet_surprise, cfg.threshold),
            "iforest_score": score_from_surprise(iforest_surprise, cfg.threshold),
            "score": score,
            "is_anomaly": is_anomaly.astype(bool),
            "severity": self._severity(score, is_anomaly),
            "flagged_by": np.where(is_anomaly, flagged_by, None),
        }
        # Slice before building the frame: column types then depend on the returned points only.
        return pd.DataFrame({name: values[n_context:] for name, values in columns.items()})[
            SCORE_COLUMNS
        ]

    def _severity(self, score: np.ndarray, is_anomaly: np.ndarray) -> np.ndarray:
        cutoffs = np.asarray(self._config.severity_scores)
        rank = np.searchsorted(cutoffs, score, side="right") - 1
        labels = np.array(SEVERITY_ORDER, dtype=object)[np.clip(rank, 0, len(SEVERITY_ORDER) - 1)]
        return np.where(is_anomaly & (rank >= 0), labels, None)

    # -- model registry ---------------------------------------------------------------------
    COMPONENT_KINDS = ("prophet", "iforest")

    def to_artifacts(self) -> dict[str, bytes]:
        """The fitted detector as registry rows: one artifact per component plus the ensemble."""
        shell = copy.copy(self)
        for kind in self.COMPONENT_KINDS:
            delattr(shell, f"{kind}_")
        artifacts = {kind: pickle.dumps(getattr(self, f"{kind}_")) for kind in self.COMPONENT_KINDS}
        artifacts["ensemble"] = pickle.dumps(shell)
        return artifacts

    @classmethod
    def from_artifacts(cls, artifacts: dict[str, bytes]) -> "EnsembleDetector":
        detector = pickle.loads(artifacts["ensemble"])
        for kind in cls.COMPONENT_KINDS:
            setattr(detector, f"{kind}_", pickle.loads(artifacts[kind]))
        return detector

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
