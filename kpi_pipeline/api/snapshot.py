"""The latest score of every KPI, held in memory by each worker: ``GET /v1/scores/latest``.

That endpoint is the hot read of every consumer (dashboards and alerting polling many KPIs),
and the answer only changes when a scoring run lands. So each worker keeps one snapshot of
the newest scored point of every KPI, each already serialised as JSON, and re-reads all of it
from the store (one statement: a consistent view) when it gets old.

Staleness bound: a snapshot is served only while less than ``max_age`` seconds have passed
since the read that built it *started* (``KPI_API_LATEST_MAX_AGE``, default 1 s), so a score
committed at time t is served by every request that arrives after t + ``max_age``. Under steady
traffic the snapshot is re-read in the background shortly before it expires, so requests
rarely wait for a read; a request that finds it expired waits for the one re-read in flight.
``max_age`` = 0 turns the snapshot off: every request reads the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from kpi_pipeline.errors import first_line
from kpi_pipeline.api.schemas import LATEST_SCORE_JSON, MISSING_JSON

logger = logging.getLogger("kpi_pipeline.api")

REFRESH_AHEAD = 0.8
"""Share of ``max_age`` after which a request starts a background re-read."""


def latest_scores_json(scores: Iterable[bytes], missing: Sequence[str]) -> bytes:
    """A ``schemas.LatestScores`` body from scores serialised by ``LATEST_SCORE_JSON``."""
    return b'{"scores":[%b],"missing":%b}' % (b",".join(scores), MISSING_JSON(list(missing)))


@dataclass(frozen=True)
class Snapshot:
    read_at: float
    """``time.monotonic()`` when the read began: the data is at least this recent."""
    scores: dict[str, bytes]
    """KPI -> its latest score as JSON, in the store's KPI order."""
    rank: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", {kpi: i for i, kpi in enumerate(self.scores)})

    def of(self, kpis: Iterable[str] | None) -> dict[str, bytes]:
        """The scores of ``kpis`` (all if None) that have one, in the store's KPI order."""
        if kpis is None:
            return self.scores
        found = sorted({kpi for kpi in kpis if kpi in self.rank}, key=self.rank.__getitem__)
        return {kpi: self.scores[kpi] for kpi in found}


class LatestScoreSnapshot:
    """Each KPI's latest score as of at most ``max_age`` seconds ago; thread-safe."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._current: Snapshot | None = None
        self._read_lock = threading.Lock()
        self._refresh: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age > 0

    async def get(self, read: Callable[[], list[dict[str, Any]]]) -> Snapshot:
        """A snapshot younger than ``max_age``; ``read`` (``serving.latest_scores`` of every
        KPI, blocking) builds a new one in a worker thread when needed."""
        current = self._current
        if current is not None:
            age = self._clock() - current.read_at
            if age < self.max_age:
                if age >= REFRESH_AHEAD * self.max_age and not self._refreshing():
                    self._refresh = asyncio.get_running_loop().create_task(self._refresh_ahead(read))
                return current
        return await run_in_threadpool(self._fresh, read)

    def _refreshing(self) -> bool:
        """Whether a background re-read is under way (in this event loop: a test client's
        loop may have closed with one pending)."""
        task, loop = self._refresh, asyncio.get_running_loop()
        return task is not None and not task.done() and task.get_loop() is loop

    async def _refresh_ahead(self, read: Callable[[], list[dict[str, Any]]]) -> None:
        try:
            await run_in_threadpool(self._fresh, read, REFRESH_AHEAD * self.max_age)
        except Exception as error:  # the next request past max_age reads again, and reports
            logger.warning("background re-read of the latest scores failed: %s", first_line(error))

    def _fresh(self, read: Callable[[], list[dict[str, Any]]], younger_than: float | None = None) -> Snapshot:
        """A snapshot younger than ``younger_than`` (default ``max_age``), reading the store
        unless another thread just did; one read at a time."""
        limit = self.max_age if younger_than is None else younger_than
        with self._read_lock:
            current = self._current
            if current is not None and self._clock() - current.read_at < limit:
                return current
            read_at = self._clock()
            rows = read()
            snapshot = Snapshot(read_at, {row["kpi"]: LATEST_SCORE_JSON(row) for row in rows})
            self._current = snapshot
            return snapshot
