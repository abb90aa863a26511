"""Walk-forward training and scoring: the one schedule shared by the pipeline and ``evaluate``.

A series is judged as production sees it: the first model is trained once ``initial`` points
exist, a new model every ``retrain_every`` points after that, and each point is scored only by the
newest model trained on points strictly before it. Each block is scored before the next model is
trained, so the confident anomalies of a block are left out of every later training set. No
look-ahead anywhere.

``walk_forward`` is that loop. The pipeline runs it over a new KPI's history (and registers the
models it fitted); ``evaluate`` runs it over every labelled series; nothing else re-implements it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import (
    SCORE_COLUMNS,
    DetectorConfig,
    EnsembleDetector,
    InsufficientHistory,
    confident_anomalies,
)
from kpi_pipeline.detection.feedback import threshold_raise
from kpi_pipeline.detection.preprocess import infer_frequency

RETRAIN_PERIOD = pd.Timedelta(days=1)
MIN_RETRAIN_POINTS = 288
MAX_RETRAIN_PERIOD = pd.Timedelta(days=28)
MAX_INITIAL_POINTS = 750


def retrain_every_points(ts) -> int:
    """Points between retrains: a day of data, at least ``MIN_RETRAIN_POINTS``, at most
    ``MAX_RETRAIN_PERIOD`` of data.

    Daily on 5-minute data; on hourly data every 12 days, since a day of hourly points barely
    moves a model that has seen months; on daily data every four weeks, not every 288 days.
    """
    freq = infer_frequency(pd.DatetimeIndex(ts))
    if freq is None:
        return MIN_RETRAIN_POINTS
    per_day = int(round(RETRAIN_PERIOD / freq))
    at_most = max(int(MAX_RETRAIN_PERIOD // freq), 1)
    return max(per_day, min(MIN_RETRAIN_POINTS, at_most))


def initial_training_points(n_points: int, min_points: int) -> int:
    """Points the first model learns from: 15% of the history, at most 750 (NAB's probation)."""
    return max(min_points, min(15 * n_points // 100, MAX_INITIAL_POINTS))


def training_cutoffs(n_points: int, initial: int, retrain_every: int) -> list[int]:
    """Positions p at which a model is trained on points ``[0, p)``."""
    return list(range(initial, n_points, retrain_every)) if n_points > initial else []


def history_cutoffs(ts: pd.DatetimeIndex, config: DetectorConfig) -> list[int]:
    """The training cutoffs of a whole history judged for the first time (a new KPI)."""
    initial = initial_training_points(len(ts), config.min_train_points)
    return training_cutoffs(len(ts), initial, retrain_every_points(ts))


def score_segment(
    detector: EnsembleDetector,
    ts: pd.DatetimeIndex,
    values: np.ndarray,
    gap: np.ndarray,
    start: int,
    end: int,
    raised: float | np.ndarray = 0.0,
) -> pd.DataFrame:
    """Score points ``[start, end)`` with the earlier points the detector needs as context;
    ``raised``: the threshold raise of analysts' feedback (``EnsembleDetector.score``'s
    ``threshold_raise``), one number or one per point."""
    window, context = context_window(detector, start, end)
    return detector.score(ts[window], values[window], n_context=context, gap=gap[window], threshold_raise=raised)


def context_window(detector: EnsembleDetector, start: int, end: int) -> tuple[slice, int]:
    """The positions that scoring points ``[start, end)`` reads (those points and the context
    before them), and how many of them are context."""
    context = min(start, detector.context_points)
    return slice(start - context, end), context


FALSE_POSITIVE = "false_positive"
TRUE_POSITIVE = "true_positive"


@dataclass(frozen=True)
class Review:
    """A simulated analyst for replays: each new event is labelled ``label(first position)``
    (``true_positive`` or ``false_positive``), ``delay`` after its first point."""

    label: Callable[[int], str]
    delay: pd.Timedelta = pd.Timedelta(days=1)


@dataclass
class _Reviewed:
    """The labels a ``Review`` gave so far, and the event the scoring is in."""

    review: Review
    merge_gap: int
    fp_ts: list[pd.Timestamp] = field(default_factory=list)
    fp_known: list[pd.Timestamp] = field(default_factory=list)
    labels: list[tuple[int, str, pd.Timestamp]] = field(default_factory=list)
    """(first position of the event, label, given at)."""
    event_of: dict[int, int] = field(default_factory=dict)
    """Position of each anomalous point -> the first position of its event."""
    current: int | None = None
    quiet: int = 0

    def see(self, ts: pd.DatetimeIndex, position: int, flagged: bool) -> pd.Timestamp | None:
        """Advance over one scored point (as ``events.assign_events`` groups them); returns
        when a new false-positive event's label is given, None otherwise."""
        if not flagged:
            self.quiet += 1
            return None
        new = self.current is None or self.quiet > self.merge_gap
        self.quiet = 0
        if new:
            self.current = position
        self.event_of[position] = self.current  # type: ignore[assignment]
        if not new:
            return None
        label, given = self.review.label(position), ts[position] + self.review.delay
        self.labels.append((position, label, given))
        if label != FALSE_POSITIVE:
            return None
        self.fp_ts.append(ts[position])
        self.fp_known.append(given)
        return given

    def training_exclusion(self, excluded: np.ndarray, now: pd.Timestamp) -> np.ndarray:
        """``excluded`` as the pipeline's ``training_exclusions`` changes it with the labels
        given by ``now``: the points of false-positive events back in, confirmed incidents out."""
        labelled = {start: label for start, label, given in self.labels if given <= now}
        result = excluded.copy()
        for position, start in self.event_of.items():
            if position < len(result) and start in labelled:
                result[position] = labelled[start] == TRUE_POSITIVE
        return result


@dataclass
class WalkForward:
    scores: pd.DataFrame
    """One row per input point, input order, ``SCORE_COLUMNS``; points no model scored have
    score 0 and no expectation."""
    models: list[tuple[int, EnsembleDetector]]
    """Each fitted model with its cutoff p (trained on points ``[0, p)``), oldest first."""
    skipped: list[tuple[int, str]]
    """Cutoffs at which no model could be trained, with the reason."""
    labels: list[tuple[int, str]] = field(default_factory=list)
    """With a ``Review``: each event's first position and the label it was given."""


def walk_forward(
    ts,
    values,
    cutoffs: list[int],
    config: DetectorConfig | None = None,
    gap: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    review: Review | None = None,
) -> WalkForward:
    """Train at each cutoff, score the block up to the next one, leave that block's confident
    anomalies out of later training sets. ``exclude`` marks points known to be anomalous
    beforehand (confirmed incidents).

    ``review`` replays an analyst's feedback as the product applies it: each event is labelled
    ``review.delay`` after its first point; from then on a false positive raises the threshold
    of later points (``feedback.threshold_raise``) and puts its points back into training, and
    a confirmed incident keeps its points out of training. A label given inside a block
    re-scores the rest of the block from that moment, so no point sees a label given after it.
    """
    config = config or DetectorConfig()
    ts = pd.DatetimeIndex(ts)
    y = np.asarray(values, dtype=float)
    n = len(y)
    gap = np.zeros(n, dtype=bool) if gap is None else np.asarray(gap, dtype=bool)
    excluded = np.zeros(n, dtype=bool) if exclude is None else np.asarray(exclude, bool).copy()
    first = cutoffs[0] if cutoffs else n
    blocks = [_unscored(ts[:first], y[:first])]
    models, skipped = [], []
    reviewed = None if review is None else _Reviewed(review, config.event_merge_gap)
    for start, end in zip(cutoffs, [*cutoffs[1:], n]):
        detector = EnsembleDetector(config)
        training = excluded if reviewed is None else reviewed.training_exclusion(excluded, ts[start])
        try:
            detector.fit(ts[:start], y[:start], exclude=training[:start])
        except InsufficientHistory as error:
            skipped.append((start, str(error)))
            blocks.append(_unscored(ts[start:end], y[start:end]))
            continue
        models.append((start, detector))
        if reviewed is None:
            block = score_segment(detector, ts, y, gap, start, end)
        else:
            block = _score_reviewed(detector, config, ts, y, gap, start, end, reviewed)
        excluded[start:end] |= confident_anomalies(block, config)
        blocks.append(block)
    scores = pd.concat(blocks, ignore_index=True)
    labels = [] if reviewed is None else [(start, label) for start, label, _ in reviewed.labels]
    return WalkForward(scores=scores, models=models, skipped=skipped, labels=labels)


def _score_reviewed(
    detector: EnsembleDetector,
    config: DetectorConfig,
    ts: pd.DatetimeIndex,
    y: np.ndarray,
    gap: np.ndarray,
    start: int,
    end: int,
    reviewed: _Reviewed,
) -> pd.DataFrame:
    """``score_segment`` of ``[start, end)`` with the threshold raised by the false positives
    labelled so far, re-scoring from the moment a label given inside the block exists."""
    parts = []
    position = start
    while position < end:
        raised = threshold_raise(reviewed.fp_ts, ts[position:end], config, reviewed.fp_known)
        block = score_segment(detector, ts, y, gap, position, end, raised)
        stop = end
        for offset, flagged in enumerate(block["is_anomaly"].to_numpy(dtype=bool).tolist()):
            if position + offset >= stop:
                break
            given = reviewed.see(ts, position + offset, flagged)
            if given is not None:
                stop = min(stop, int(ts.searchsorted(given, side="left")))
        parts.append(block.iloc[: stop - position])
        position = stop
    return pd.concat(parts, ignore_index=True)


def _unscored(ts: pd.DatetimeIndex, y: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": ts, "value": y})
    for column in ("expected", "lower", "upper"):
        frame[column] = np.nan
    for column in ("prophet_score", "iforest_score", "score"):
        frame[column] = 0.0
    frame["is_anomaly"] = False
    frame["severity"] = None
    frame["flagged_by"] = None
    return frame[SCORE_COLUMNS]
