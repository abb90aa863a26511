"""Each KPI's state at a glance: its data, its newest model and score, and what is failing.

What ``kpi-pipeline status`` prints and the dashboard's overview warns about. One KPI's failure
never stops the others (it is recorded in ``kpi_failures`` with its reason, and the next run
tries again); this is where a person sees it without opening the run that met it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.config import get_settings
from kpi_pipeline.sharding import shard_of

STATES = ("failing", "no model", "behind", "ok")
"""Worst first: a stage failed its last attempt; no model yet (too little history, or not
trained yet); newer observations than scores (the next scoring run takes them); all scored."""

STATUS_COLUMNS = [
    "kpi",
    "state",
    "detail",
    "shard",
    "first_ts",
    "last_ts",
    "last_scored",
    "model_version",
    "trained_until",
]


def kpi_status(engine: sa.Engine, kpis: list[str] | None = None) -> pd.DataFrame:
    """One row per KPI with observations (``STATUS_COLUMNS``), worst state first, then by name."""
    spans = store.observation_spans(engine)
    if kpis is not None:
        spans = spans[spans["kpi"].isin(kpis)]
    names = spans["kpi"].tolist()
    last_scored = store.last_scored_ts(engine)
    models = store.model_versions(engine, names).groupby("kpi", sort=False).head(1)
    newest = models.set_index("kpi")
    failures = store.load_kpi_failures(engine, names)
    shards = get_settings().training_shards
    rows = []
    for span in spans.itertuples(index=False):
        kpi = span.kpi
        failing = failures[failures["kpi"] == kpi]
        model = newest.loc[kpi] if kpi in newest.index else None
        scored = last_scored.get(kpi)
        if len(failing):
            state = "failing"
            detail = "; ".join(
                f"{row.stage}: {row.reason} (since {row.failing_since:%Y-%m-%d %H:%M} UTC, "
                f"{row.attempts} attempt{'s' if row.attempts != 1 else ''})"
                for row in failing.itertuples(index=False)
            )
        elif model is None:
            state, detail = "no model", "not trained yet, or too little history"
        elif scored is None or scored < span.last_ts:
            state = "behind"
            detail = "newer observations than scores; the next scoring run takes them"
        else:
            state, detail = "ok", ""
        rows.append(
            {
                "kpi": kpi,
                "state": state,
                "detail": detail,
                "shard": shard_of(kpi, shards),
                "first_ts": span.first_ts,
                "last_ts": span.last_ts,
                "last_scored": scored,
                "model_version": None if model is None else model["version"],
                "trained_until": None if model is None else model["train_end"],
            }
        )
    frame = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    order = frame["state"].map({state: rank for rank, state in enumerate(STATES)})
    return frame.assign(_order=order).sort_values(["_order", "kpi"]).drop(columns="_order").reset_index(drop=True)


OUTAGE_COLUMNS = ["kpi", "start", "end", "missing_points", "ongoing"]


def outages(engine: sa.Engine, kpis: list[str] | None = None, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Each stretch of missing data, newest first: ``kpi``, its first and last missing slot
    (``end`` is NaT while it goes on), how many slots are missing and whether it is ``ongoing``.

    Past stretches (gaps longer than cleaning fills) come from ``kpi_cleaned``, maintained by the
    ``cleaned_kpis`` asset; an ongoing one is a KPI whose newest observation is
    ``KPI_OUTAGE_AFTER_INTERVALS`` or more of its intervals older than ``now`` (default: the
    current time), counted up to ``now``.
    """
    slots = store.load_gap_slots(engine, kpis)
    steps = {kpi: state.step for kpi, state in store.load_series(engine, slots["kpi"].unique()).items()}
    rows = []
    for kpi, group in slots.groupby("kpi", sort=True):
        ts = pd.DatetimeIndex(group["ts"])
        step = steps.get(str(kpi))
        # A new stretch starts wherever the slot before is not the previous grid slot.
        starts = np.ones(len(ts), dtype=bool)
        if step is not None and len(ts) > 1:
            starts[1:] = (ts[1:] - ts[:-1]) != step
        run = np.cumsum(starts)
        for _, stretch in pd.Series(ts).groupby(run):
            rows.append(
                {
                    "kpi": str(kpi),
                    "start": stretch.iloc[0],
                    "end": stretch.iloc[-1],
                    "missing_points": len(stretch),
                    "ongoing": False,
                }
            )
    now = now if now is not None else pd.Timestamp.now("UTC")
    ongoing = store.ongoing_outages(engine, now, get_settings().outage_after_intervals, kpis)
    for row in ongoing.itertuples(index=False):
        rows.append(
            {"kpi": row.kpi, "start": row.start, "end": pd.NaT, "missing_points": row.missing_points, "ongoing": True}
        )
    frame = pd.DataFrame(rows, columns=OUTAGE_COLUMNS)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["ongoing"] = frame["ongoing"].astype(bool)
    return frame.sort_values(["start", "kpi"], ascending=[False, True], ignore_index=True)
