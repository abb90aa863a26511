"""Judge group detection from what the product stored: group events against group labels, and
each KPI's events with and without its group component (docs/multivariate.md).

Only what could be judged counts: a group label that ends before the group's first judged
timestamp, or a KPI label that ends before the KPI's first scored one, is left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kpi_pipeline.detection.metrics import EventMetrics, _from_counts, combine, event_metrics, windows_from_labels


def group_event_metrics(
    events: pd.DataFrame, labels: pd.DataFrame, judged_from: dict[str, pd.Timestamp]
) -> EventMetrics:
    """Event recall and precision of group events (``group_name, start, end``) against group
    labels (``group, start, end``): a label is caught by an event of its group overlapping it;
    an event overlapping no label of its group is a false one. ``judged_from``: each group's
    first judged timestamp (groups absent: not judged, their labels left out)."""
    labels = labels.assign(start=pd.to_datetime(labels["start"], utc=True), end=pd.to_datetime(labels["end"], utc=True))
    tp = fn = fp = 0
    for group, first in judged_from.items():
        mine = labels[(labels["group"] == group) & (labels["end"] >= first)]
        found = events[events["group_name"] == group]
        overlaps = (found["start"].to_numpy()[:, None] <= mine["end"].to_numpy()[None, :]) & (
            found["end"].to_numpy()[:, None] >= mine["start"].to_numpy()[None, :]
        )
        caught = overlaps.any(axis=0)
        tp += int(caught.sum())
        fn += int((~caught).sum())
        fp += int((~overlaps.any(axis=1)).sum())
    return _from_counts(tp, fn, fp)


def kpi_event_metrics(scores: pd.DataFrame, labels: pd.DataFrame, with_groups: bool) -> EventMetrics:
    """Pooled event metrics of every KPI's flags (``is_anomaly``; ``with_groups``: or a group
    component of at least 0.5, its combined score ``max(score, multivariate_score)`` at the
    threshold) against its labels (``kpi, start, end``)."""
    labels = labels.assign(start=pd.to_datetime(labels["start"], utc=True), end=pd.to_datetime(labels["end"], utc=True))
    per_kpi = []
    for kpi, rows in scores.sort_values("ts").groupby("kpi"):
        flags = rows["is_anomaly"].to_numpy(dtype=bool)
        if with_groups:
            flags = flags | (np.nan_to_num(rows["multivariate_score"].to_numpy(dtype=float)) >= 0.5)
        ts = pd.DatetimeIndex(rows["ts"])
        mine = labels[(labels["kpi"] == kpi) & (labels["end"] >= ts[0])]
        per_kpi.append(event_metrics(flags, windows_from_labels(ts, mine)))
    return combine(per_kpi)
