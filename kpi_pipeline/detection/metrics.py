"""Detection metrics: did we catch each labelled incident, and how many false alarms?

Rows are addressed by position, so series with duplicate timestamps (DST) need no special care.
Windows are inclusive ``(first_row, last_row)`` pairs, as ``windows_from_labels`` returns them.

``event_metrics`` counts events: a label window is one event however many rows it spans; a false
alarm is one maximal run of consecutive flagged rows outside every window, because that is what a
person on call receives. ``delay_point_metrics`` counts points the way the KPI anomaly detection
benchmarks on minute-level web-service KPIs do, so our figures compare with published ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class EventMetrics:
    tp_events: int
    """Windows with at least one flagged row."""
    fn_events: int
    """Windows with no flagged row."""
    fp_events: int
    """Runs of consecutive flagged rows outside every window."""
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class PointMetrics:
    tp_points: int
    """Rows of detected windows (all of a window's rows once it is caught in time)."""
    fn_points: int
    """Rows of windows not caught in time."""
    fp_points: int
    """Flagged rows outside every window."""
    precision: float
    recall: float
    f1: float


def _ratios(tp: int, fn: int, fp: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of true-positive, false-negative and false-positive counts."""
    # Empty denominators: a detector that raised nothing when there was nothing to catch made no
    # mistake (precision 1); one that raised nothing while incidents happened must not look
    # precise (precision 0). With nothing to catch, nothing was missed (recall 1).
    flagged = tp + fp
    if flagged:
        precision = tp / flagged
    else:
        precision = 1.0 if fn == 0 else 0.0
    to_catch = tp + fn
    recall = tp / to_catch if to_catch else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _from_counts(tp_events: int, fn_events: int, fp_events: int) -> EventMetrics:
    return EventMetrics(tp_events, fn_events, fp_events, *_ratios(tp_events, fn_events, fp_events))


def _points_from_counts(tp_points: int, fn_points: int, fp_points: int) -> PointMetrics:
    return PointMetrics(tp_points, fn_points, fp_points, *_ratios(tp_points, fn_points, fp_points))


def event_metrics(flags: np.ndarray, windows: list[tuple[int, int]], ignore_before: int = 0) -> EventMetrics:
    """Score boolean row flags against inclusive ``(first_row, last_row)`` event windows.

    Rows before ``ignore_before`` (e.g. a warm-up period) count for nothing: flags there are
    dropped, and a window lying wholly before it is neither caught nor missed.
    """
    flags = np.asarray(flags, dtype=bool).copy()
    flags[:ignore_before] = False
    in_window = np.zeros(len(flags), dtype=bool)
    tp_events = fn_events = 0
    for first, last in windows:
        in_window[first : last + 1] = True
        if last < ignore_before:
            continue
        if flags[first : last + 1].any():
            tp_events += 1
        else:
            fn_events += 1
    false_alarm = flags & ~in_window
    run_starts = false_alarm & ~np.concatenate(([False], false_alarm[:-1]))
    return _from_counts(tp_events, fn_events, int(run_starts.sum()))


def combine(per_series: list[EventMetrics]) -> EventMetrics:
    """Pool several series' events (micro-average): counts add up, ratios are recomputed."""
    return _from_counts(
        sum(m.tp_events for m in per_series),
        sum(m.fn_events for m in per_series),
        sum(m.fp_events for m in per_series),
    )


def delay_point_metrics(
    flags: np.ndarray, windows: list[tuple[int, int]], k: int = 7, ignore_before: int = 0
) -> PointMetrics:
    """Score row flags point by point; a window counts only if caught within its first ``k`` rows.

    This is the delay adjustment of the KPI anomaly detection benchmarks: a window with a flag on
    one of its first ``k`` rows (offsets ``0 .. k-1`` from its first row) is detected and all its
    rows are true positives; any other window, even one flagged later, has all its rows false
    negatives. A late alarm is worth nothing to on-call, which is what the rule encodes. Flagged
    rows outside every window are false positives, one per row. The benchmarks' reference code,
    ``get_range_proba(predict, label, delay)``, looks at rows ``0 .. delay``: ``k = delay + 1``.

    As in ``event_metrics``, rows before ``ignore_before`` count for nothing: their flags are
    dropped, and a window starting before it is cut to start there (so its first ``k`` rows are
    counted from ``ignore_before``); a window lying wholly before it is neither caught nor missed.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    flags = np.asarray(flags, dtype=bool).copy()
    flags[:ignore_before] = False
    in_window = np.zeros(len(flags), dtype=bool)
    tp_points = fn_points = 0
    for first, last in windows:
        in_window[first : last + 1] = True
        first = max(first, ignore_before)
        if last < first:
            continue
        rows = last - first + 1
        if flags[first : min(first + k, last + 1)].any():
            tp_points += rows
        else:
            fn_points += rows
    return _points_from_counts(tp_points, fn_points, int((flags & ~in_window).sum()))


def combine_points(per_series: list[PointMetrics]) -> PointMetrics:
    """Pool several series' points (micro-average): the benchmarks report one F1 over all KPIs."""
    return _points_from_counts(
        sum(m.tp_points for m in per_series),
        sum(m.fn_points for m in per_series),
        sum(m.fp_points for m in per_series),
    )


def windows_from_labels(timestamps: pd.Series | pd.DatetimeIndex, labels: pd.DataFrame) -> list[tuple[int, int]]:
    """Map inclusive ``start, end`` time labels to inclusive row-position windows, sorted by start.

    A window spans the first and last rows whose timestamp lies in ``[start, end]``. A label
    covering no row at all (an incident during a missing-data gap) still is an incident: it maps
    to the single first row at or after ``start``, the earliest moment a detector could notice
    it once data resumes. Only a label with no row at or after its start (past the end of the
    data) is dropped, since nothing could ever catch it.
    """
    index = pd.DatetimeIndex(timestamps)
    windows: list[tuple[int, int]] = []
    for start, end in zip(pd.to_datetime(labels["start"]), pd.to_datetime(labels["end"])):
        at_or_after_start = np.asarray(index >= start)
        rows = np.flatnonzero(at_or_after_start & np.asarray(index <= end))
        if rows.size:
            windows.append((int(rows[0]), int(rows[-1])))
            continue
        later_rows = np.flatnonzero(at_or_after_start)
        if later_rows.size:
            windows.append((int(later_rows[0]), int(later_rows[0])))
    return sorted(windows)
