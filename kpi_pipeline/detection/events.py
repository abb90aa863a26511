"""Group anomalous points into events: what alerts and evaluation count.

Consecutive anomalous points of one KPI (allowing ``merge_gap`` quiet points in between, so a
flickering variance burst stays one incident) form one event. The event id is the KPI and the
timestamp of its first point, so it is stable across reruns and across scoring batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


SEVERITY_ORDER = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class OpenEvent:
    """The event still open at the end of the previous scoring batch."""

    event_id: str
    quiet_points: int
    """Non-anomalous points seen since its last anomalous point."""


def event_id_for(kpi: str, start: pd.Timestamp) -> str:
    return f"{kpi}@{pd.Timestamp(start).isoformat()}"


def assign_events(
    kpi: str,
    ts: pd.DatetimeIndex,
    is_anomaly: np.ndarray,
    merge_gap: int = 0,
    open_event: OpenEvent | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Event id per point (None where not anomalous) and the alert flag (first point of an event)."""
    ts = pd.DatetimeIndex(ts)
    event_ids = np.full(len(ts), None, dtype=object)
    alert = np.zeros(len(ts), dtype=bool)
    current = open_event.event_id if open_event else None
    quiet = open_event.quiet_points if open_event else 0
    for i, flagged in enumerate(np.asarray(is_anomaly, dtype=bool)):
        if flagged:
            if current is None or quiet > merge_gap:
                current = event_id_for(kpi, ts[i])
                alert[i] = True
            event_ids[i] = current
            quiet = 0
        else:
            quiet += 1
    return event_ids, alert


def open_event_from(scored: pd.DataFrame, merge_gap: int) -> OpenEvent | None:
    """The event that new points may still join, from a KPI's already-scored rows (ts order)."""
    if scored.empty:
        return None
    flagged_positions = np.flatnonzero(scored["is_anomaly"].to_numpy(dtype=bool))
    if len(flagged_positions) == 0:
        return None
    last = flagged_positions[-1]
    quiet = len(scored) - 1 - last
    if quiet > merge_gap:
        return None
    return OpenEvent(event_id=str(scored["event_id"].iloc[last]), quiet_points=int(quiet))


def summarize_events(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per event: kpi, event_id, start, end, points, peak score, worst severity, models."""
    flagged = scores[scores["is_anomaly"].astype(bool) & scores["event_id"].notna()]
    columns = ["kpi", "event_id", "start", "end", "points", "peak_score", "severity", "flagged_by"]
    if flagged.empty:
        return pd.DataFrame(columns=columns)
    rank = flagged["severity"].map({s: i for i, s in enumerate(SEVERITY_ORDER)}).fillna(-1)
    flagged = flagged.assign(_rank=rank)
    grouped = flagged.groupby(["kpi", "event_id"], sort=False)
    summary = grouped.agg(
        start=("ts", "min"),
        end=("ts", "max"),
        points=("ts", "size"),
        peak_score=("score", "max"),
        _rank=("_rank", "max"),
        flagged_by=("flagged_by", lambda s: ",".join(sorted({p for v in s.dropna() for p in v.split(",")}))),
    ).reset_index()
    summary["severity"] = summary["_rank"].map(lambda r: SEVERITY_ORDER[int(r)] if r >= 0 else None)
    return summary[columns].sort_values("start", ascending=False, ignore_index=True)
