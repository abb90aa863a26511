"""Each KPI's newest scored points, held in memory by each worker: ``GET /v1/kpis/{kpi}/scores``.

A series request read Postgres every time, although nearly all of them ask for a KPI's recent
points, which change only when a scoring run (or a backfill, or a rescoring) writes that KPI.
So each worker keeps, per KPI, its newest ``points`` scored rows, each already serialised as
JSON, and answers from memory every request that those rows answer completely: the window's
newest ``limit`` rows are all among them, and so is the knowledge of whether older rows of the
window exist. Anything else (a window older than the cached rows, a ``limit`` above what they
hold) reads the store, as without the cache. The first request for a KPI loads its newest
``points`` rows with one query.

Kept current by Postgres notifications (``store.notifications``): every score write notifies
its KPIs when it commits, and a thread per worker (``ScoreWriteWatcher``) drops those KPIs from
the cache as the notifications arrive, so a committed score is served by every request that
arrives once its notification has reached the worker (well under a millisecond when idle).
While that thread is not listening (starting, or its connection lost) nothing is served from or
put into the cache, and each (re)connection starts from an empty cache: notifications missed
meanwhile cannot leave stale rows behind. SQLite sends no notifications: the cache stays off
there.

Memory: at most ``max_bytes`` per worker (the rows' JSON and their timestamps); the least
recently used KPIs are dropped first.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

from kpi_pipeline.errors import first_line
from kpi_pipeline.api.schemas import SCORED_POINT_JSON, TEXT_JSON, epoch_micros
from kpi_pipeline.store.notifications import HeardWrites, Token

logger = logging.getLogger("kpi_pipeline.api")

ENTRY_OVERHEAD_BYTES = 400
"""Memory of a cached KPI besides its rows' JSON and timestamps (objects, dict slot)."""

Rows = list[dict[str, Any]]
SeriesRead = Callable[..., tuple[Rows, bool]]
"""``serving.score_series`` on an engine: ``read(kpi, limit=n)`` -> (newest n rows oldest
first, whether older rows exist)."""


def score_series_json(kpi_json: bytes, points: bytes | memoryview, truncated: bool) -> bytes:
    """A ``schemas.ScoreSeries`` body from its KPI and its points, already serialised (the
    points by ``SCORED_POINT_JSON``, comma-separated), as ``SCORE_SERIES_JSON`` writes it."""
    return b'{"kpi":%b,"points":[%b],"truncated":%b}' % (kpi_json, points, b"true" if truncated else b"false")


@dataclass(frozen=True)
class CachedSeries:
    """A KPI's newest scored rows, oldest first: what answers a request from memory."""

    kpi_json: bytes
    ts: array
    """Each row's timestamp, microseconds since the epoch (signed 64-bit)."""
    points: bytes
    """Each row as JSON followed by a comma."""
    offsets: array
    """Where each row starts in ``points``, and ``len(points)`` last."""
    older: bool
    """The KPI has rows older than these (so these are not none)."""

    @classmethod
    def of(cls, kpi: str, rows: Rows, older: bool) -> CachedSeries:
        """From ``serving.score_series`` rows (oldest first) and its ``truncated`` flag."""
        parts = [SCORED_POINT_JSON(row) for row in rows]
        return cls(
            kpi_json=TEXT_JSON(kpi),
            ts=array("q", (epoch_micros(row["ts"]) for row in rows)),
            points=b",".join(parts) + b",",
            offsets=array("q", accumulate((len(part) + 1 for part in parts), initial=0)),
            older=older,
        )

    @property
    def size(self) -> int:
        return len(self.ts)

    @property
    def nbytes(self) -> int:
        return (
            len(self.points)
            + self.ts.itemsize * len(self.ts)
            + self.offsets.itemsize * len(self.offsets)
            + ENTRY_OVERHEAD_BYTES
        )

    def answer(self, start: dt.datetime | None, end: dt.datetime | None, limit: int) -> bytes | None:
        """The body of the request for the newest ``limit`` rows with ``start <= ts <= end``
        (open if None), or None if these rows do not determine it."""
        since = None if start is None else epoch_micros(start)
        first = 0 if since is None else bisect.bisect_left(self.ts, since)
        stop = self.size if end is None else bisect.bisect_right(self.ts, epoch_micros(end))
        found = stop - first
        if found > limit:  # the newest ``limit`` are here, and older ones of the window too
            first, truncated = stop - limit, True
        elif not self.older or (since is not None and since >= self.ts[0]):
            truncated = False  # the window has no row older than these
        else:
            return None
        span = self.offsets[first], self.offsets[stop] - 1  # without the last comma
        points = memoryview(self.points)[span[0] : span[1]] if found > 0 else b""
        return score_series_json(self.kpi_json, points, truncated)


class SeriesCache(HeardWrites):
    """Per KPI its newest ``points`` scored rows, least recently used out first beyond
    ``max_bytes``; served only while ``live`` (a listener hears every score write).
    Thread-safe: requests read it in the event loop, fills run in worker threads and
    invalidations in the listener's thread."""

    def __init__(self, points: int, max_bytes: int) -> None:
        super().__init__()
        self.points = points
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedSeries] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        """Configured on (it still needs a listener to be ``live``)."""
        return self.points > 0 and self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, kpi: str) -> CachedSeries | None:
        """``kpi``'s cached rows, if the cache is live and holds them."""
        with self._lock:
            entry = self._entries.get(kpi)
            if entry is not None:
                self._entries.move_to_end(kpi)
            return entry

    def load(self, kpi: str, read: SeriesRead) -> CachedSeries | None:
        """``kpi``'s newest rows read with ``read`` (blocking) and cached, unless a write of
        ``kpi`` was notified, or the listener dropped, while they were read; None (nothing
        read) if the cache is not live."""
        token = self.token(kpi)
        if token is None:
            return None
        rows, older = read(kpi, limit=self.points)
        entry = CachedSeries.of(kpi, rows, older)
        if entry.size:  # a KPI without scores (or unknown) is not kept: it costs no memory
            self._put(kpi, entry, token)
        return entry

    def _put(self, kpi: str, entry: CachedSeries, token: Token) -> None:
        with self._lock:
            if not self._unchanged_since(kpi, token):
                return  # the rows may predate a write: the next request reads again
            if entry.nbytes > self.max_bytes:
                return
            self._forget(kpi)
            self._entries[kpi] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                self._forget(next(iter(self._entries)))

    def _forget(self, kpi: str | None) -> None:
        if kpi is None:
            self._entries.clear()
            self._bytes = 0
            return
        entry = self._entries.pop(kpi, None)
        if entry is not None:
            self._bytes -= entry.nbytes


class Listener(Protocol):
    """What ``store.notifications.ScoreWriteListener`` offers the watcher."""

    def wait(self, timeout: float | None = None) -> list[str]: ...

    def interrupt(self) -> None: ...


RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
STOP_TIMEOUT_S = 5.0


WARMED, NOT_WARMED, WARMING_STOPPED = (
    "series cache warmed",
    "series cache: not warmed",
    "series cache: warming stopped",
)
"""How each warming ends in the log (``benchmarks/bench_api.py`` waits for one per worker)."""

CONFIGURED_OFF = "series cache off:"
"""How the log says a worker runs without the series cache at all (no warming to wait for)."""

WARM_SHARE = 0.9
"""Share of the cache's bound that warming fills, leaving room for the KPIs requests bring."""


class ScoreWriteWatcher:
    """The thread that keeps a ``SeriesCache`` in step with the store: it listens to score
    writes (``listen()``: a context manager giving a connected ``Listener``) and forgets each
    KPI written; without a listener the cache is dark. Reconnects with exponential backoff.
    (The same for any ``HeardWrites`` and channel: ``realtime.ScoringCache`` follows the
    writes of observations and models; ``name`` and ``source`` word its log lines.)

    Each time it starts listening, it first warms the (empty) cache, if given ``warm``: it loads
    the newest points of each KPI ``warm()`` names with ``read``, up to ``WARM_SHARE`` of the
    bound, handling the writes notified between loads, so that requests after a start or a
    reconnection find their KPIs in memory instead of each worker loading them one request at
    a time."""

    def __init__(
        self,
        cache: HeardWrites,
        listen: Callable[[], AbstractContextManager[Listener]],
        warm: Callable[[], Iterable[str]] | None = None,
        read: SeriesRead | None = None,
        name: str = "series cache",
        source: str = "series read from the database",
    ) -> None:
        self._cache = cache
        self._listen = listen
        self._warm_kpis = warm
        self._read = read
        self._name, self._source = name, source
        self._stopping = threading.Event()
        self._listener: Listener | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name} watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stopping.set()
        listener = self._listener
        if listener is not None:
            listener.interrupt()
        self._thread.join(timeout)
        self._cache.go_dark()

    def _run(self) -> None:
        delay, lost = RETRY_FIRST_S, False
        while not self._stopping.is_set():
            try:
                with self._listen() as listener:
                    self._listener = listener
                    if self._stopping.is_set():
                        break
                    self._cache.go_live()
                    logger.info("%s on: %s writes", self._name, "listening again to" if lost else "listening to")
                    delay, lost = RETRY_FIRST_S, False
                    if self._warm_kpis is not None:
                        self._warm(listener)
                    while not self._stopping.is_set():
                        self._cache.written(listener.wait())
            except Exception as error:  # whatever it is: serve from the store, and retry
                log = logger.debug if lost else logger.warning
                log(
                    "%s off (%s) until the write listener reconnects: %s; retrying in %.1f s",
                    self._name,
                    self._source,
                    first_line(error),
                    delay,
                )
                lost = True
            finally:
                self._listener = None
                self._cache.go_dark()
            if self._stopping.wait(delay):
                break
            delay = min(2 * delay, RETRY_MAX_S)

    def _warm(self, listener: Listener) -> None:
        started, loaded, largest = time.monotonic(), 0, 0
        try:
            kpis = list(self._warm_kpis())
        except Exception as error:  # the database path still serves; requests fill the cache
            logger.warning("%s: %s", NOT_WARMED, first_line(error))
            return
        for kpi in kpis:
            if self._stopping.is_set() or not self._cache.live:
                return
            # Stop before a load could push out one loaded earlier (the bound is an LRU).
            if self._cache.nbytes + largest > WARM_SHARE * self._cache.max_bytes:
                break
            # Writes committed meanwhile come first. A lost listener raises here, out of the
            # warming, so that ``_run`` darkens the cache and reconnects.
            self._cache.written(listener.wait(0))
            if self._cache.get(kpi) is not None:
                continue
            try:
                entry = self._cache.load(kpi, self._read)
            except Exception as error:  # the database path still serves the rest
                logger.warning("%s after %d KPIs: %s", WARMING_STOPPED, loaded, first_line(error))
                return
            loaded += 1
            largest = max(largest, entry.nbytes if entry is not None else 0)
        logger.info(
            "%s: %d KPIs, %.1f MiB in %.1f s",
            WARMED,
            loaded,
            self._cache.nbytes / (1 << 20),
            time.monotonic() - started,
        )
