"""Which newly scored anomalies are news, and why the others are only recorded.

News is an anomaly found while scoring newly landed points. Not news, so recorded without an
alert: the first scoring of a KPI's history (a new KPI, a freshly loaded dataset), runs tagged
``kpi/alerts=off`` or launched by a Dagster backfill, anomalies inside a silence (``kpi-pipeline
backfill`` adds one over its range; ``kpi-pipeline silence`` adds others), and points already
marked false positive. ``alert_on_history`` turns the first two into news too.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from kpi_pipeline.alerts.anomaly import Anomaly

SILENT_RUN_TAG = "kpi/alerts"
"""A run tagged ``kpi/alerts=off`` records its anomalies without alerting them."""

BACKFILL_TAG = "dagster/backfill"

HISTORY = "first scoring of the KPI's history"


@dataclass(frozen=True)
class News:
    alert: list[Anomaly]
    """Anomalies to alert, in kpi and time order."""
    silent: dict[str, int] = field(default_factory=dict)
    """Why the other anomalies are not alerted: reason -> count."""


def silent_run_reason(tags: Mapping[str, str]) -> str | None:
    """Why a run with these tags alerts nothing, or None if it alerts."""
    if tags.get(SILENT_RUN_TAG, "").lower() == "off":
        return f"run tagged {SILENT_RUN_TAG}=off"
    if BACKFILL_TAG in tags:
        return "backfill run"
    return None


def select_news(
    scored: pd.DataFrame,
    *,
    watermark: pd.Timestamp | None,
    first_scored: Mapping[str, pd.Timestamp],
    silences: pd.DataFrame,
    silent_reason: str | None = None,
    alert_on_history: bool = False,
) -> News:
    """Split anomalies scored after ``watermark`` into news and silently recorded ones.

    ``scored``: rows of ``store.load_anomalies_scored``. ``watermark``: the newest ``scored_at``
    the previous evaluation covered (None: no previous evaluation, so everything scored so far is
    history). ``first_scored``: when each KPI was first scored. ``silences``: rows of
    ``store.load_silences``.
    """
    alert, silent = [], Counter()
    for row in scored.to_dict("records"):
        anomaly = Anomaly.from_row(row)
        reason = _not_news(
            anomaly,
            row.get("feedback"),
            watermark,
            first_scored,
            silences,
            silent_reason,
            alert_on_history,
        )
        if reason is None:
            alert.append(anomaly)
        else:
            silent[reason] += 1
    return News(alert=alert, silent=dict(silent))


def _not_news(
    anomaly: Anomaly,
    feedback: object,
    watermark: pd.Timestamp | None,
    first_scored: Mapping[str, pd.Timestamp],
    silences: pd.DataFrame,
    silent_reason: str | None,
    alert_on_history: bool,
) -> str | None:
    if feedback == "false_positive":
        return "marked false positive"
    for silence in silences.itertuples(index=False):
        if silence.since <= anomaly.ts <= silence.until and fnmatch.fnmatchcase(anomaly.kpi, silence.kpi_pattern):
            return f"silenced: {silence.reason}"
    if alert_on_history:
        return None
    if silent_reason is not None:
        return silent_reason
    first = first_scored.get(anomaly.kpi)
    if watermark is None or first is None or first > watermark:
        return HISTORY
    return None
