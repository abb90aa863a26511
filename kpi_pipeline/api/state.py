"""What every request handler works with: settings, the database, keys, cached scorers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sqlalchemy as sa
from fastapi import Request

from kpi_pipeline.api.auth import ApiKeys
from kpi_pipeline.api.series_cache import SeriesCache
from kpi_pipeline.api.snapshot import LatestScoreSnapshot
from kpi_pipeline.config import Settings
from kpi_pipeline.api.realtime import ScoringCache
from kpi_pipeline.store import serving

T = TypeVar("T")

SCORING_SLOTS = 2
"""Real-time scorings one worker runs at once: they are CPU-bound, so more would only slow
the reads sharing the process, not finish sooner."""

MIB = 1 << 20


FRESHNESS_TTL_S = 10.0
"""How long /health reuses the freshness of the scores (it reaches the database every time)."""


class FreshnessProbe:
    """/health's view of the database: reachable now (one round trip per call), and how fresh
    the scores are, which costs a probe per KPI and so is re-read at most every ``ttl`` s."""

    def __init__(self, ttl: float = FRESHNESS_TTL_S) -> None:
        self.ttl = ttl
        self._read: tuple[float, serving.ScoreFreshness] | None = None

    def __call__(self, engine: sa.Engine) -> serving.ScoreFreshness:
        now, read = time.monotonic(), self._read
        if read is not None and now - read[0] < self.ttl:
            serving.ping(engine)
            return read[1]
        freshness = serving.score_freshness(engine)
        self._read = (now, freshness)
        return freshness


def _pooled_connections(engine: sa.Engine) -> int:
    size = getattr(engine.pool, "size", None)
    return size() if callable(size) else 5


@dataclass(frozen=True)
class ApiState:
    settings: Settings
    engine: sa.Engine
    keys: ApiKeys
    scorers: ScoringCache
    freshness: FreshnessProbe = field(default_factory=FreshnessProbe)
    latest: LatestScoreSnapshot = field(init=False)
    """Every KPI's latest score; per state, so a state on another engine has its own."""
    series: SeriesCache = field(init=False)
    """Each KPI's newest scored points; dark until ``app``'s lifespan starts its watcher."""
    _database_slots: anyio.CapacityLimiter = field(init=False)
    _scoring_slots: anyio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latest", LatestScoreSnapshot(self.settings.api_latest_max_age))
        object.__setattr__(
            self,
            "series",
            SeriesCache(self.settings.api_series_cache_points, int(self.settings.api_series_cache_mb * MIB)),
        )
        # One slot per pooled connection: a burst of requests waits for a connection instead
        # of opening, and on return closing, an overflow connection per request. Requests wait
        # for a slot in the event loop, not as blocked threads: a few busy threads contend for
        # the GIL far less than dozens of waiting ones.
        slots = anyio.CapacityLimiter(_pooled_connections(self.engine))
        object.__setattr__(self, "_database_slots", slots)
        object.__setattr__(self, "_scoring_slots", anyio.CapacityLimiter(SCORING_SLOTS))

    async def db(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` (store work) in a worker thread, so the event loop never waits."""
        return await anyio.to_thread.run_sync(call, *args, limiter=self._database_slots)

    async def scoring(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` (detector work) in a worker thread, a few at a time."""
        return await anyio.to_thread.run_sync(call, *args, limiter=self._scoring_slots)


async def get_state(request: Request) -> ApiState:
    """The app's ``ApiState`` (a dependency; async so it costs no worker thread)."""
    return request.app.state.api
