"""Who hears about which anomaly: routes from a YAML file (``KPI_ALERT_ROUTES``).

```yaml
default_route: true          # also send high/critical of every KPI to every configured channel
routes:
  - name: revenue team
    kpis: [revenue, "sales*"] # names or glob patterns
    min_severity: medium      # low | medium | high | critical
    channels:
      email: [finance@example.com]
      slack: ["#revenue-alerts"]
  - name: on-call
    kpis: ["*"]
    min_severity: critical
    channels:
      sms:                    # empty: the channel's default recipients (KPI_ALERT_SMS_TO)
  - name: collectors down
    kpis: ["*_rpm"]
    events: [outage]          # anomaly | outage (default: both)
    min_severity: low
    channels:
      sms: ["+15550001111"]
```

An outage (a KPI that stopped reporting: the first missing slot of a long gap, flagged ``gap``,
severity high) is one alert per outage; ``events`` sends outages and anomalies to different
people.

Without a file only the default route applies. A route naming a channel that is off is skipped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kpi_pipeline.alerts.anomaly import Anomaly, severity_rank

Channel = Literal["email", "slack", "sms"]
Event = Literal["anomaly", "outage"]
Severity = Literal["low", "medium", "high", "critical"]


class Route(BaseModel):
    """Anomalies of matching KPIs at least ``min_severity`` severe go to these recipients."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    kpis: list[str] = Field(default_factory=lambda: ["*"])
    min_severity: Severity = "high"
    channels: dict[Channel, list[str] | None]
    """Recipients per channel; None (an empty entry) means the channel's default recipients."""
    events: list[Event] = Field(default_factory=lambda: ["anomaly", "outage"], min_length=1)
    """What the route sends: anomalies, outages (missing data), or both."""

    def matches(self, anomaly: Anomaly) -> bool:
        return (
            anomaly.kind in self.events
            and anomaly.rank >= severity_rank(self.min_severity)
            and any(fnmatch.fnmatchcase(anomaly.kpi, pattern) for pattern in self.kpis)
        )


DEFAULT_ROUTE = Route(
    name="default",
    kpis=["*"],
    min_severity="high",
    channels=dict.fromkeys(("email", "slack", "sms")),
)
"""High and critical anomalies of every KPI to every configured channel's default recipients."""


class Routing(BaseModel):
    """The routes of a routing file."""

    model_config = ConfigDict(extra="forbid")

    default_route: bool = True
    routes: list[Route] = Field(default_factory=list)

    def all_routes(self) -> list[Route]:
        return ([DEFAULT_ROUTE] if self.default_route else []) + self.routes

    def targets(self, anomaly: Anomaly, default_recipients: Mapping[str, list[str]]) -> set[tuple[str, str]]:
        """The (channel, recipient) pairs that should hear about ``anomaly``.

        ``default_recipients`` holds the channels that are on, with their default recipients;
        channels missing from it are off and get nothing.
        """
        targets = set()
        for route in self.all_routes():
            if not route.matches(anomaly):
                continue
            for channel, recipients in route.channels.items():
                if channel in default_recipients:
                    chosen = default_recipients[channel] if recipients is None else recipients
                    targets.update((channel, recipient) for recipient in chosen)
        return targets


def load_routing(path: str | Path | None) -> Routing:
    """The routing file at ``path``; the default route alone if ``path`` is empty."""
    if not path:
        return Routing()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return Routing.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"alert routing file {path}: {error}") from error
