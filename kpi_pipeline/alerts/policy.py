"""The alerting policy: routing file, noise control, retries and links, as one resource."""

from __future__ import annotations

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline.alerts.messages import Links
from kpi_pipeline.alerts.routing import Routing, load_routing


class AlertPolicy(dg.ConfigurableResource):
    """How anomalies become alerts. Built from ``KPI_ALERT_*`` settings (``defs/resources.py``)."""

    routes_file: str = Field(default="", description="Routing YAML; empty: the default route.")
    cooldown_minutes: int = Field(
        default=360,
        ge=0,
        description="No repeat alert for a KPI (per recipient) within this window of the "
        "anomaly's time, unless severity rises.",
    )
    digest_threshold: int = Field(
        default=5,
        ge=1,
        description="More anomalies than this for one recipient from one check evaluation go out as one digest.",
    )
    max_age_hours: float = Field(
        default=72.0,
        gt=0,
        description="Anomalies older than this when first seen are recorded, not sent.",
    )
    outage_after_intervals: int = Field(
        default=4,
        ge=4,
        description="A KPI whose newest point is this many of its intervals old has stopped "
        "reporting: an ongoing outage, alerted once (KPI_OUTAGE_AFTER_INTERVALS).",
    )
    alert_on_history: bool = Field(
        default=False,
        description="Also alert the first scoring of a KPI's history and backfill runs.",
    )
    timezone: str = Field(default="UTC", description="Time zone alerts show times in.")
    dagster_url: str = Field(default="http://127.0.0.1:3000", description="Dagster UI base URL.")
    api_url: str = Field(default="http://127.0.0.1:8000", description="API sidecar base URL.")
    send_attempts: int = Field(default=3, ge=1, description="Tries per message within one sensor evaluation.")
    retry_base_seconds: float = Field(
        default=2.0, gt=0, description="Wait after a first failed try; doubles with each try."
    )
    retry_max_seconds: float = Field(
        default=900.0, gt=0, description="Longest wait between two tries of a pending alert."
    )
    max_inline_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Longer waits (backoff or Retry-After) are left to a later evaluation.",
    )
    send_budget_seconds: float = Field(
        default=40.0,
        gt=0,
        description="Time one evaluation may spend sending; the rest stays pending.",
    )
    claim_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a sender owns the alerts it is sending before another may.",
    )

    def routing(self) -> Routing:
        return load_routing(self.routes_file)

    def links(self) -> Links:
        return Links(dagster_url=self.dagster_url, api_url=self.api_url)

    @property
    def cooldown(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.cooldown_minutes)

    @property
    def max_age(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.max_age_hours)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed tries (exponential, capped)."""
        return min(self.retry_max_seconds, self.retry_base_seconds * 2 ** max(0, attempts - 1))
