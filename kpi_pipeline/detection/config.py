"""The detector's tunables: ``DetectorConfig`` and the settings of its two models, with the
defaults the benchmarks were measured with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ProphetConfig:
    changepoint_prior_scale: float = 0.05
    seasonality_prior_scale: float = 10.0
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    daily_seasonality: bool | Literal["auto"] = "auto"
    weekly_seasonality: bool | Literal["auto"] = "auto"
    yearly_seasonality: bool | Literal["auto"] = "auto"
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
    """Surprise (-log10 tail probability) at which a point is anomalous (score 0.5)."""
    frequency_threshold: bool = False
    """Hold a KPI sampled more often than hourly, every ``step``, to ``threshold + log10(1 hour
    / step)`` (``EnsembleDetector.threshold_``), so that its false alarms come no more often per
    day than an hourly KPI's. Off: on NAB's 5-minute series it cost more caught incidents than
    the false alarms it saved (docs/detection-quality.md)."""
    severity_scores: tuple[float, float, float, float] = (0.5, 0.6, 0.7, 0.8)
    """Score at which the evidence reads low, medium, high, critical (see ``severity_of``)."""
    severity_factors: tuple[float, float, float] = (1.2, 1.5, 2.0)
    """How many times above or below its expected value a positive KPI must be for its size
    to read medium, high, critical (2.0: double or half)."""
    severity_spreads: tuple[float, float, float] = (3.0, 6.0, 12.0)
    """How many of its normal spreads (robust standard deviations of recent residuals) a point
    must be off for its size to read medium, high, critical."""
    exclude_score: float = 0.7
    """Score at or above which an anomalous point is left out of later training sets."""
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
    robust_calibration: bool = True
    """Fit each component's tail without the training points it would flag itself (past
    incidents in the history), see ``calibration.ExceedanceTail``'s ``trim_at``."""
    incident_spacing_days: float = 7.0
    """Past incidents come rarer than this, on average. When more of a KPI's training values look
    extreme than a few incidents would make, those a gap sets apart from the others are left out
    of its calibration as incidents if they come rarer, and kept as the KPI's own behaviour if
    they come back more often (a load balancer's spikes, a feed's bursts); see
    ``calibration.ExceedanceTail``'s ``incident_spacing``. 0: always kept."""
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
    """Usable points (observed, not excluded) a model needs inside its training window."""
    train_window_days: float = 0.0
    """Training looks back at least this long from the newest usable point (see also
    ``train_window_steps``). 0: the steps alone, so a 1-minute model sees 2.8 days. 7 days at
    one minute (weekly cycles in reach) scored standard 59.1 against 60.6, low FP 51.8 against
    49.7, event F1 0.39 against 0.33 on the 1-minute fold; 28 days at five minutes 59.4 against
    62.6 (docs/detection-quality.md): not better on the standard profile, so not the default.
    Set it for KPIs whose weekly cycle matters more than these folds' did."""
    train_window_steps: int = 4032
    """Training looks back at least this many steps of the series' grid from the newest usable
    point (168 days of an hourly KPI, 14 days at 5 minutes, 11 years of a daily KPI): the window
    is the longer of the two."""
    prophet_max_points: int = 4032
    """Prophet fits on the medians of consecutive usable points when the window holds more
    than this many (a longer ``train_window_days`` at minute frequency), keeping its cost
    bounded; residuals are still taken at full resolution."""
    prophet_step_minutes: float = 5.0
    """Prophet fits on the medians of runs of consecutive usable points spanning at least this
    many minutes when the KPI is sampled more often (a 1-minute KPI's trend and seasonality are
    fitted on 5-minute medians); residuals are still taken at every point. On the 1-minute fold
    it scored better than every point (standard 60.6 against 55.6, low FP 49.7 against 42.5,
    docs/detection-quality.md) at a fraction of the cost; KPIs sampled every 5 minutes or
    less often are unchanged. 0: every point (up to ``prophet_max_points``)."""
    sustained_window: int = 12
    """Points whose median residual is judged as one sustained deviation (0 or 1 = off)."""
    sustained_level_window: int = 48
    """Points before those whose median residual is the baseline a sustained deviation is from."""
    sustained_min_train_points: int = 600
    """Training points a model needs before it judges sustained deviations: a model fitted on
    little history drifts away from the data, which would read as one long sustained deviation."""
    event_merge_gap: int = 2
    """Quiet points allowed inside one event."""
    gap_score: float = 0.7
    """Score of the first missing slot of a long missing-data gap (an outage): one anomaly per
    outage, flagged by 'gap', severity high (a KPI that stops reporting is urgent); its other
    slots are missing data, not anomalies."""
    feedback_threshold_step: float = 0.25
    """Surprise added to a KPI's threshold by each false-positive event an analyst marked, at
    full weight (0.25: such alarms come about 1.8 times less often; see ``feedback``)."""
    feedback_threshold_cap: float = 1.0
    """Most that false positives can add to the threshold (1.0: ten times rarer alarms), so a
    gross deviation still alerts however many false positives were marked."""
    feedback_half_life_days: float = 30.0
    """Days after which a false positive's raise has halved: old judgements fade as the KPI and
    its model change."""
    autoencoder: bool = False
    """Add the autoencoder component (``autoencoder.AutoencoderDetector``): reconstruction error
    of windows of residuals. Off: it did not earn its cost on the folds
    (docs/autoencoder.md)."""
    autoencoder_window: int = 12
    """Points per window the autoencoder reconstructs."""
    prophet: ProphetConfig = field(default_factory=ProphetConfig)
    iforest: IForestConfig = field(default_factory=IForestConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DetectorConfig":
        """The config ``to_dict`` described (lists back to tuples); a missing key takes its
        default."""
        nested = {"prophet": ProphetConfig, "iforest": IForestConfig}
        fields: dict[str, Any] = {
            name: nested[name](**value) if name in nested else tuple(value) if isinstance(value, list) else value
            for name, value in values.items()
        }
        return cls(**fields)
