"""Per-KPI hyperparameter tuning: an Optuna search over Prophet's priors and the forest's size.

``tune`` judges each candidate ``DetectorConfig`` on rolling-origin folds of the KPI's own
history: the last ``folds`` blocks of the series, each scored by a detector fitted only on the
points before it, so no fold is judged by a model that saw it or anything after it. What is
measured depends on what is known about the KPI:

- no labels: the forecast error (``forecast_mae``, lower is better): the mean absolute
  difference between each observed point of the blocks and the detector's expected value.
  Forecast error does not depend on the forest, so only Prophet's parameters are searched,
  the changepoint prior only at or below its starting value (see ``tune``).
- labels (incidents, and points analysts marked, which the caller turns into ``incidents``):
  event F1 over the blocks (``event_f1``, higher is better, ``detection.metrics``), with the
  whole ensemble; Prophet's and the forest's parameters are searched.

The forest has no ``contamination`` (scikit-learn's share of training points assumed
anomalous): the detector calibrates its score with an exceedance tail instead, fitted above
``iforest.tail_quantile`` of the training scores, which is the knob that plays that role.

The search is seeded (TPE sampler), prunes trials whose running fold result is worse than the
median of earlier trials at the same fold, stops at ``max_trials`` or ``budget_seconds`` (checked
between trials), and always runs the configuration it is given first, so the chosen parameters
are never worse on the folds than the defaults.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector, InsufficientHistory
from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.walkforward import score_segment
from kpi_pipeline.detection.metrics import EventMetrics, combine, event_metrics

FORECAST_MAE = "forecast_mae"
EVENT_F1 = "event_f1"

PROPHET_KEYS = ("prophet.changepoint_prior_scale", "prophet.seasonality_prior_scale", "prophet.seasonality_mode")
FOREST_KEYS = ("iforest.n_estimators", "iforest.max_samples", "iforest.tail_quantile")

MAX_SAMPLES = (64, 128, 256, 512)
MAX_CHANGEPOINT_PRIOR = 0.5


def _suggest(trial: optuna.Trial, key: str, most_flexible: float) -> Any:
    """The search space of each tuned key (each contains the default of ``DetectorConfig``);
    the changepoint prior up to ``most_flexible``."""
    if key == "prophet.changepoint_prior_scale":
        return trial.suggest_float(key, 0.001, max(most_flexible, 0.001), log=True)
    if key == "prophet.seasonality_prior_scale":
        return trial.suggest_float(key, 0.01, 10.0, log=True)
    if key == "prophet.seasonality_mode":
        return trial.suggest_categorical(key, ["additive", "multiplicative"])
    if key == "iforest.n_estimators":
        return trial.suggest_int(key, 50, 300, step=50)
    if key == "iforest.max_samples":
        return trial.suggest_categorical(key, list(MAX_SAMPLES))
    if key == "iforest.tail_quantile":
        return trial.suggest_float(key, 0.8, 0.98)
    raise KeyError(key)


def _current(config: DetectorConfig, key: str) -> Any:
    outer, _, inner = key.partition(".")
    return getattr(getattr(config, outer), inner) if inner else getattr(config, outer)


@dataclass(frozen=True)
class TuningSettings:
    """How hard to search."""

    budget_seconds: float = 60.0
    """Time per KPI after which no new trial starts (the running one finishes)."""
    max_trials: int = 30
    """Trials per KPI, the first being the configuration given (the defaults)."""
    folds: int = 3
    """Held-out blocks at the end of the series, judged one after the other."""
    seed: int = 0


@dataclass(frozen=True)
class TuningResult:
    params: dict[str, Any]
    """The chosen value of every searched key."""
    objective: str
    """``forecast_mae`` (lower is better) or ``event_f1`` (higher is better)."""
    value: float
    """The objective of ``params`` on the folds."""
    default_value: float
    """The objective of the configuration tuning started from, on the same folds."""
    trials: int
    pruned_trials: int
    seconds: float

    @property
    def improved(self) -> bool:
        """Whether the chosen parameters beat the starting configuration on the folds."""
        if self.objective == EVENT_F1:
            return self.value > self.default_value
        return self.value < self.default_value


class NotEnoughHistory(ValueError):
    """The series is too short for the folds tuning judges on."""


def fold_blocks(n_points: int, config: DetectorConfig, folds: int) -> list[tuple[int, int]]:
    """The held-out blocks ``[start, end)``: the second half of the series cut into ``folds``
    equal blocks, the first starting where at least ``min_train_points`` precede it."""
    first = max(n_points // 2, config.min_train_points)
    length = (n_points - first) // folds if folds > 0 else 0
    if length < 1:
        raise NotEnoughHistory(
            f"{n_points} points are too few to tune on {folds} folds (need more than "
            f"{config.min_train_points} training points and a point per fold)"
        )
    starts = [n_points - length * (folds - index) for index in range(folds)]
    return [(start, start + length) for start in starts]


@dataclass
class _Series:
    ts: pd.DatetimeIndex
    values: np.ndarray
    gap: np.ndarray
    exclude: np.ndarray
    incidents: np.ndarray | None


def _fold_scores(series: _Series, config: DetectorConfig, start: int, end: int) -> pd.DataFrame:
    """Scores of ``[start, end)`` by a detector fitted on the points before ``start`` only."""
    detector = EnsembleDetector(config).fit(series.ts[:start], series.values[:start], exclude=series.exclude[:start])
    # Scoring reads only the block and the context points before it, never a later point.
    return score_segment(detector, series.ts[:end], series.values[:end], series.gap[:end], start, end)


def fold_errors(
    ts, values, config: DetectorConfig, blocks: list[tuple[int, int]], exclude: np.ndarray | None = None
) -> list[float]:
    """The forecast MAE of each block (``fold_blocks``): observed, not excluded points only."""
    series = _prepare(ts, values, None, exclude, None)
    return [_block_error(series, config, start, end) for start, end in blocks]


def _block_error(series: _Series, config: DetectorConfig, start: int, end: int) -> float:
    scores = _fold_scores(series, config, start, end)
    actual = series.values[start:end]
    expected = scores["expected"].to_numpy(dtype=float)
    judged = np.isfinite(actual) & np.isfinite(expected) & ~series.exclude[start:end]
    if not judged.any():
        return math.nan
    return float(np.mean(np.abs(actual[judged] - expected[judged])))


def _block_events(series: _Series, config: DetectorConfig, start: int, end: int) -> EventMetrics:
    assert series.incidents is not None
    scores = _fold_scores(series, config, start, end)
    labelled = series.incidents[start:end]
    return event_metrics(scores["is_anomaly"].to_numpy(dtype=bool), _runs(labelled))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` positions of each run of True."""
    padded = np.concatenate(([False], flags, [False])).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _prepare(ts, values, gap, exclude, incidents) -> _Series:
    ts = pd.DatetimeIndex(ts)
    n = len(ts)
    return _Series(
        ts=ts,
        values=np.asarray(values, dtype=float),
        gap=np.zeros(n, dtype=bool) if gap is None else np.asarray(gap, dtype=bool),
        exclude=np.zeros(n, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool),
        incidents=None if incidents is None else np.asarray(incidents, dtype=bool),
    )


def tune(
    ts,
    values,
    config: DetectorConfig | None = None,
    *,
    gap: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    incidents: np.ndarray | None = None,
    fixed: Iterable[str] = (),
    settings: TuningSettings | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> TuningResult:
    """Search the parameters of one KPI's detector on its cleaned series.

    ``config`` is the starting point (the run's configuration with any pinned parameters
    applied) and the first trial. ``exclude`` marks points training skips and forecast error
    ignores (known anomalies); ``incidents`` (None: no labels) marks labelled incident points,
    which switches the objective to event F1 and are left out of training too. Keys in
    ``fixed`` (pinned by hand) are not searched. Raises ``NotEnoughHistory`` if the series is
    too short for the folds, and ``InsufficientHistory`` if the starting configuration cannot
    be fitted on them.
    """
    config = config or DetectorConfig()
    settings = settings or TuningSettings()
    series = _prepare(ts, values, gap, exclude, incidents)
    if series.incidents is not None:
        series.exclude = series.exclude | series.incidents
    blocks = fold_blocks(len(series.ts), config, settings.folds)
    labelled = series.incidents is not None
    objective_name = EVENT_F1 if labelled else FORECAST_MAE
    keys = [key for key in (*PROPHET_KEYS, *(FOREST_KEYS if labelled else ())) if key not in set(fixed)]
    # Forecast error rewards a trend flexible enough to follow incidents (a level shift becomes
    # the new normal), which costs detection: without labels the trend may only get stiffer
    # than where it starts (docs/tuning.md, the daily fold).
    most_flexible = MAX_CHANGEPOINT_PRIOR if labelled else config.prophet.changepoint_prior_scale

    def evaluate(trial: optuna.Trial) -> float:
        candidate = apply_parameters(config, {key: _suggest(trial, key, most_flexible) for key in keys})
        errors: list[float] = []
        events: list[EventMetrics] = []
        for step, (start, end) in enumerate(blocks):
            try:
                if labelled:
                    events.append(_block_events(series, candidate, start, end))
                    running = combine(events).f1
                else:
                    errors.append(_block_error(series, candidate, start, end))
                    running = float(np.nanmean(errors)) if not np.isnan(errors).all() else math.inf
            except InsufficientHistory:
                if trial.number == 0:
                    raise
                raise optuna.TrialPruned() from None
            trial.report(running, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return running

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if labelled else "minimize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    study.enqueue_trial({key: _current(config, key) for key in keys})
    started = time.perf_counter()

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        outcome = "pruned" if trial.state == optuna.trial.TrialState.PRUNED else f"{objective_name} {trial.value:.4g}"
        progress(f"trial {trial.number + 1}: {outcome} (best {study.best_value:.4g})")

    study.optimize(
        evaluate,
        n_trials=max(1, settings.max_trials),
        timeout=settings.budget_seconds,
        callbacks=[report],
        catch=(),
    )
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    # The first trial (the starting configuration) is never pruned (the pruner's startup
    # trials) and its errors propagate, so it completed and there is a best trial.
    default = study.trials[0]
    assert default.value is not None
    return TuningResult(
        params={key: study.best_trial.params[key] for key in keys},
        objective=objective_name,
        value=float(study.best_value),
        default_value=float(default.value),
        trials=len(complete) + len(pruned),
        pruned_trials=len(pruned),
        seconds=time.perf_counter() - started,
    )
