"""An anomalous point as alerts see it: what the anomaly check reports and the outbox keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from kpi_pipeline.store import SEVERITIES

HIGH_SEVERITIES = SEVERITIES[SEVERITIES.index("high") :]
"""Severities the default route sends, and that make the anomaly check an ERROR."""


def severity_rank(severity: str | None) -> int:
    """Position of ``severity`` in low < medium < high < critical; -1 for none."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


@dataclass(frozen=True)
class Anomaly:
    """One anomalous scored point. ``value`` is None for a missing-data gap."""

    kpi: str
    ts: pd.Timestamp
    severity: str
    score: float | None = None
    value: float | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    flagged_by: str | None = None
    event_id: str | None = None
    model_version: str | None = None
    ongoing: bool = False
    """An outage still going on (the KPI has not reported since): ``ts`` is its first missing
    slot, the slot its score takes when data returns, so one alert covers both."""
    members: str | None = None
    """A group event's members that moved and by how much (``kpi`` is then ``group:<name>``,
    ``alerts.groups``); None for one KPI's anomaly."""

    @property
    def deviation(self) -> float | None:
        """``(value - expected) / |expected|``; None when either is missing or expected is 0."""
        if self.value is None or self.expected is None or self.expected == 0:
            return None
        return (self.value - self.expected) / abs(self.expected)

    @property
    def kind(self) -> str:
        """``outage`` for the first missing slot of a stretch of missing data (flagged ``gap``:
        the KPI stopped reporting), else ``anomaly``."""
        return "outage" if self.flagged_by == "gap" else "anomaly"

    @property
    def rank(self) -> int:
        return severity_rank(self.severity)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (timestamp as ISO 8601), for check metadata and the outbox."""
        return {**asdict(self), "ts": self.ts.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Anomaly:
        known = {field.name for field in fields(cls)}
        values = {name: _plain(value) for name, value in data.items() if name in known}
        ts = pd.Timestamp(data["ts"])
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return cls(**{**values, "ts": ts})

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Anomaly:
        """From a row of ``store.load_anomalies`` / ``load_anomalies_scored`` (NaN = missing)."""
        return cls.from_json({**row, "ts": pd.Timestamp(row["ts"]).isoformat()})


def _plain(value: Any) -> Any:
    """None for NaN / NA; numpy scalars as Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value
