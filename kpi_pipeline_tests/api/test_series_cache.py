"""The per-worker cache of each KPI's newest scored points (kpi_pipeline/api/series_cache.py):
answers byte for byte what the store gives, only when its rows determine the answer; forgets a
KPI when a write of it is notified, keeps nothing a write raced with, and is off while its
listener is down (and on SQLite)."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from kpi_pipeline import store
from kpi_pipeline.api import series_cache
from kpi_pipeline.api.schemas import SCORE_SERIES_JSON
from kpi_pipeline.api.series_cache import CachedSeries, SeriesCache
from kpi_pipeline.api.state import ApiState
from kpi_pipeline.store import serving
from kpi_pipeline.store.notifications import ANY_KPI, LISTENER_NAME
from kpi_pipeline_tests.api.conftest import HOURS, TRAIN_HOURS, make_client

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
WAIT_S = 10.0
CACHED_POINTS = 48
"""Fewer than the 96 scored points of the seeded ``sales``: windows reach past the cache."""


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)


# -- the rows and their answers, without a database -----------------------------------------


def row(hour: int) -> dict:
    return {
        "ts": T0 + hour * HOUR,
        "value": hour + 0.1,
        "expected": hour * 1.5,
        "lower": None,
        "upper": float("nan"),
        "score": 0.1,
        "is_anomaly": hour % 7 == 0,
        "severity": "high" if hour % 7 == 0 else None,
        "flagged_by": 'pro"phet',
        "model_version": "v-1",
    }


STORED = [row(hour) for hour in range(0, 40, 2)]
"""A KPI's every scored row, oldest first (even hours 0..38)."""


def from_store(start: dt.datetime | None, end: dt.datetime | None, limit: int) -> bytes:
    """What ``serving.score_series`` and the endpoint give for STORED."""
    window = [r for r in STORED if (start is None or r["ts"] >= start) and (end is None or r["ts"] <= end)]
    points = window[-limit:]
    return SCORE_SERIES_JSON({"kpi": 'sa"les', "points": points, "truncated": len(window) > limit})


BOUNDS = [None, *(T0 + hour * HOUR for hour in (-1, 0, 1, 19, 20, 21, 30, 38, 39, 50))]


@pytest.mark.parametrize("cached", [1, 10, 20])
def test_an_answer_from_the_cached_rows_is_the_stores_and_given_whenever_they_determine_it(
    cached,
):
    rows = STORED[len(STORED) - cached :]
    entry = CachedSeries.of('sa"les', rows, older=cached < len(STORED))
    for start, end, limit in itertools.product(BOUNDS, BOUNDS, (1, 3, 10, 20, 1000)):
        if start is not None and end is not None and end < start:
            continue
        answer = entry.answer(start, end, limit)
        if answer is not None:
            assert answer == from_store(start, end, limit), (start, end, limit)
        in_window = [r for r in rows if (start is None or r["ts"] >= start) and (end is None or r["ts"] <= end)]
        nothing_older_in_window = not entry.older or (start is not None and start >= rows[0]["ts"])
        if len(in_window) > limit or nothing_older_in_window:
            assert answer is not None, (start, end, limit)


def test_a_window_reaching_before_the_cached_rows_is_left_to_the_store():
    entry = CachedSeries.of('sa"les', STORED[10:], older=True)  # hours 20..38 of 0..38
    assert entry.answer(None, None, 5) == from_store(None, None, 5)  # all cached
    assert entry.answer(T0 + 20 * HOUR, None, 1000) == from_store(T0 + 20 * HOUR, None, 1000)
    assert entry.answer(T0 + 19 * HOUR, None, 1000) is None  # is hour 18 there? unknown
    assert entry.answer(None, None, 10) is None  # exactly the 10 cached: truncated unknown
    assert entry.answer(None, T0 + 10 * HOUR, 1) is None  # wholly older


def test_a_kpi_without_scores_answers_every_window_empty():
    entry = CachedSeries.of("none", [], older=False)
    assert entry.answer(None, T0, 5) == b'{"kpi":"none","points":[],"truncated":false}'


class Reads:
    """A stand-in for ``serving.score_series``: STORED, with something happening mid-read."""

    def __init__(self, during: Callable[[], object] = lambda: None) -> None:
        self.during, self.calls = during, 0

    def __call__(self, kpi: str, limit: int) -> tuple[list[dict], bool]:
        self.calls += 1
        self.during()
        return STORED[-limit:], len(STORED) > limit


def live_cache(points: int = 10, max_bytes: int = 1 << 20) -> SeriesCache:
    cache = SeriesCache(points, max_bytes)
    cache.go_live()
    return cache


def test_a_load_reads_the_newest_points_once_and_keeps_them():
    cache, read = live_cache(), Reads()

    loaded = cache.load("sales", read)

    assert cache.get("sales") is loaded and loaded.size == 10 and loaded.older
    assert read.calls == 1


@pytest.mark.parametrize("event", ["this KPI written", "any KPI written", "listener lost", "listener lost and back"])
def test_rows_read_while_a_write_is_notified_or_the_listener_drops_are_not_kept(event):
    cache = live_cache()
    happen = {
        "this KPI written": lambda: cache.written(["sales"]),
        "any KPI written": lambda: cache.written([ANY_KPI]),
        "listener lost": cache.go_dark,
        "listener lost and back": lambda: (cache.go_dark(), cache.go_live()),
    }[event]

    loaded = cache.load("sales", Reads(during=happen))

    assert loaded is not None and loaded.size == 10  # still answers the request that read it
    assert cache.get("sales") is None
    if cache.live:
        assert cache.load("sales", Reads()) is cache.get("sales") is not None  # the next stays


def test_a_write_of_another_kpi_does_not_spoil_a_load():
    cache = live_cache()
    cache.load("sales", Reads(during=lambda: cache.written(["orders"])))
    assert cache.get("sales") is not None


def test_a_notified_write_drops_its_kpi_and_a_lost_listener_everything():
    cache = live_cache()
    for kpi in ("sales", "orders", "visits"):
        cache.load(kpi, Reads())

    cache.written(["sales"])
    assert cache.get("sales") is None and cache.get("orders") is not None
    cache.written([ANY_KPI])
    assert cache.get("orders") is None and cache.get("visits") is None and cache.nbytes == 0

    cache.load("sales", Reads())
    cache.go_dark()
    assert cache.get("sales") is None and not cache.live
    read = Reads()
    assert cache.load("sales", read) is None and read.calls == 0  # nothing read while dark


def test_memory_is_bounded_least_recently_read_out_first():
    one = CachedSeries.of("a", STORED[-10:], True).nbytes
    cache = live_cache(max_bytes=int(2.5 * one))
    cache.load("a", Reads())
    cache.load("b", Reads())
    cache.get("a")  # b is now the least recently read

    cache.load("c", Reads())

    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes <= cache.max_bytes
    small = live_cache(max_bytes=one - 1)
    assert small.load("a", Reads()) is not None and small.get("a") is None  # too big to keep


# -- the endpoint on Postgres ---------------------------------------------------------------


class QueuedListener:
    """A stand-in listener: hands out queued notifications, blocks (until interrupted) when
    there are none and no timeout is given."""

    def __init__(self, queued: list[list[str]] | None = None) -> None:
        self.queued = list(queued or [])
        self.woken = threading.Event()

    def __enter__(self) -> QueuedListener:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def wait(self, timeout: float | None = None) -> list[str]:
        if self.queued:
            return self.queued.pop(0)
        if timeout is None:
            self.woken.wait()
        return []

    def interrupt(self) -> None:
        self.woken.set()


def watched(cache: SeriesCache, listener: QueuedListener, kpis: list[str], read) -> Iterator:
    watcher = series_cache.ScoreWriteWatcher(cache, lambda: listener, warm=lambda: kpis, read=read)
    watcher.start()
    return watcher


def test_on_connecting_the_watcher_warms_the_cache_with_every_kpi_named():
    cache, read = SeriesCache(10, 1 << 20), Reads()
    watcher = watched(cache, QueuedListener(), ["a", "b", "c"], read)
    try:
        wait_until(lambda: all(cache.get(kpi) for kpi in "abc"), "every KPI is warm")
        assert read.calls == 3  # one read each, before any request
    finally:
        watcher.stop()
    assert not cache.live and cache.get("a") is None


def test_warming_stops_short_of_the_bound_and_handles_writes_notified_meanwhile():
    one = CachedSeries.of("x", Reads()("x", 10)[0], older=True).nbytes
    cache, read = SeriesCache(10, int(4.5 * one)), Reads()
    # Before warming's second load, a write of "a" (loaded first) is notified.
    listener = QueuedListener([[], ["a"]])
    watcher = watched(cache, listener, [*"abcdefgh"], read)
    try:
        wait_until(lambda: read.calls >= 4, "warming loads")
        time.sleep(0.2)
        assert read.calls == 5  # a..e: loads stop once 0.9 of the bound is used
        assert cache.get("a") is None  # forgotten: its write came after its load
        assert [kpi for kpi in "bcde" if cache.get(kpi)] == [*"bcde"]
        assert cache.nbytes <= cache.max_bytes
    finally:
        watcher.stop()


def api_state(client: TestClient) -> ApiState:
    return client.app.state.api


def iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def live_client(engine: sa.Engine, points: int = CACHED_POINTS) -> Iterator[TestClient]:
    """A client whose app's series cache is on and listening."""
    with make_client(engine, api_series_cache_points=points) as client:
        wait_until(lambda: api_state(client).series.live, "the series cache listens")
        yield client


@contextmanager
def direct_client(engine: sa.Engine) -> Iterator[TestClient]:
    """A client whose app reads every series from the store."""
    with make_client(engine, api_series_cache_points=0) as client:
        yield client


class CountedReads:
    """Counts ``serving.score_series`` calls (from either path of the endpoint)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, read = 0, serving.score_series

        def counted(*args, **kwargs):
            self.calls += 1
            return read(*args, **kwargs)

        monkeypatch.setattr(serving, "score_series", counted)


@pytest.mark.parametrize("points", [CACHED_POINTS, 720])
def test_cached_bodies_are_byte_for_byte_the_stores(module_seeded, points, monkeypatch):
    ts = module_seeded.ts
    first_cached = HOURS - CACHED_POINTS
    bounds = [
        None,
        ts[0],
        ts[TRAIN_HOURS],
        ts[first_cached - 1],
        ts[first_cached],
        ts[first_cached] + pd.Timedelta(minutes=30),
        ts[HOURS - 5],
        ts[-1],
        ts[-1] + pd.Timedelta(hours=1),
    ]
    limits = [1, 5, CACHED_POINTS, CACHED_POINTS + 1, HOURS - TRAIN_HOURS, 1000]
    reads = CountedReads(monkeypatch)
    with live_client(module_seeded.engine, points) as client, direct_client(module_seeded.engine) as direct:
        series = api_state(client).series
        client.get("/v1/kpis/sales/scores")
        entry = series.get("sales")
        assert entry is not None and entry.size == min(points, HOURS - TRAIN_HOURS)
        from_memory = 0
        for start, end, limit in itertools.product(bounds, bounds, limits):
            if start is not None and end is not None and end < start:
                continue
            params = (
                {"limit": limit}
                | ({"start": iso(start)} if start is not None else {})
                | ({"end": iso(end)} if end is not None else {})
            )
            before = reads.calls
            served = client.get("/v1/kpis/sales/scores", params=params)
            memory = reads.calls == before
            expected = direct.get("/v1/kpis/sales/scores", params=params)
            assert served.status_code == expected.status_code == 200
            assert served.content == expected.content, params
            assert served.headers["content-type"] == expected.headers["content-type"]
            # From memory exactly when the cached rows determine the answer.
            assert memory == (entry.answer(start, end, limit) is not None), params
            from_memory += memory
        assert series.get("sales") is entry  # nothing was written: never reloaded
        assert from_memory > 0
        if points == 720:  # every scored point is cached: nothing goes to the store
            assert all(entry.answer(s, e, 1) is not None for s in bounds for e in bounds)

        never_scored, unknown = client.get("/v1/kpis/orders/scores"), client.get("/v1/kpis/nope/scores")
        assert never_scored.content == direct.get("/v1/kpis/orders/scores").content
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
        assert series.get("orders") is None and series.get("nope") is None


def newest_points(client: TestClient, limit: int = 24) -> list[dict]:
    response = client.get("/v1/kpis/sales/scores", params={"limit": limit})
    assert response.status_code == 200
    return response.json()["points"]


def score_frame(ts: pd.Timestamp, value: float, anomalous: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kpi": ["sales"],
            "ts": [ts],
            "value": [value],
            "expected": [value / 2],
            "score": [0.99 if anomalous else 0.1],
            "is_anomaly": [anomalous],
            "severity": ["critical" if anomalous else None],
            "model_version": ["v-test-2"],
        }
    )


def test_a_written_score_is_served_once_its_notification_arrived(seeded):
    newer, old = seeded.ts[-1] + pd.Timedelta(hours=1), seeded.ts[-20]
    with live_client(seeded.engine) as client, direct_client(seeded.engine) as direct:
        series = api_state(client).series
        assert newest_points(client)[-1]["timestamp"] == iso(seeded.ts[-1])
        assert series.get("sales") is not None

        store.upsert_scores(seeded.engine, score_frame(newer, 1.5))
        wait_until(lambda: newest_points(client)[-1]["timestamp"] == iso(newer), "the new point is served")

        # A rescoring of an old point (a backfill) inside the cached rows.
        store.upsert_scores(seeded.engine, score_frame(old, 12345.5, anomalous=True))
        wait_until(
            lambda: {p["timestamp"]: p["value"] for p in newest_points(client)}[iso(old)] == 12345.5,
            "the rewritten point is served",
        )

        assert series.get("sales") is not None  # cached again, with the new rows
        for limit in (24, 1000):
            assert newest_points(client, limit) == newest_points(direct, limit)
        served = client.get("/v1/kpis/sales/scores", params={"limit": 24})
        assert served.content == direct.get("/v1/kpis/sales/scores", params={"limit": 24}).content


def listener_pid(engine: sa.Engine) -> int | None:
    with engine.connect() as connection:
        return connection.scalar(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"),
            {"name": LISTENER_NAME},
        )


def test_with_its_listener_lost_series_come_from_the_store_until_it_is_back(seeded, monkeypatch):
    monkeypatch.setattr(series_cache, "RETRY_FIRST_S", 2.0)  # a dark spell long enough to see
    newer = seeded.ts[-1] + pd.Timedelta(hours=1)
    with live_client(seeded.engine) as client, direct_client(seeded.engine) as direct:
        series = api_state(client).series
        newest_points(client)
        assert series.get("sales") is not None
        lost = listener_pid(seeded.engine)

        with seeded.engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": lost})
        wait_until(lambda: not series.live, "the cache goes dark")
        store.upsert_scores(seeded.engine, score_frame(newer, 1.5))  # nobody hears this one

        assert newest_points(client)[-1]["timestamp"] == iso(newer)  # read from the store
        assert series.get("sales") is None  # and not kept

        wait_until(lambda: series.live, "the listener reconnects")
        assert listener_pid(seeded.engine) not in (None, lost)
        assert newest_points(client) == newest_points(direct)
        assert series.get("sales") is not None  # cached again


def test_on_sqlite_the_cache_stays_off_and_series_are_read_from_the_store(sqlite_url):
    engine = store.make_engine(sqlite_url)
    store.migrate(engine)
    hours = pd.date_range("2025-01-01", periods=5, freq="h", tz="UTC")
    store.upsert_scores(
        engine,
        pd.DataFrame(
            {
                "kpi": "sales",
                "ts": hours,
                "value": 1.0,
                "score": 0.1,
                "is_anomaly": False,
            }
        ),
    )
    with make_client(engine) as client:
        body = client.get("/v1/kpis/sales/scores", params={"limit": 3}).json()
        unknown = client.get("/v1/kpis/nope/scores")

        assert [p["timestamp"] for p in body["points"]] == [iso(ts) for ts in hours[2:]]
        assert body["truncated"] is True and unknown.status_code == 404
        series = api_state(client).series
        assert series.enabled and not series.live and series.get("sales") is None
    engine.dispose()


class LostListener(QueuedListener):
    """A listener whose connection is lost at its ``lose_after``-th wait: that wait raises, and
    like a closed socket in a selector, later ones hear nothing (block until interrupted)."""

    def __init__(self, lose_after: int) -> None:
        super().__init__()
        self.lose_after = lose_after

    def wait(self, timeout: float | None = None) -> list[str]:
        self.lose_after -= 1
        if self.lose_after == -1:
            raise sa.exc.OperationalError("LISTEN", None, ConnectionError("lost"))
        return super().wait(timeout)


def test_a_listener_lost_while_warming_darkens_the_cache_and_reconnects(monkeypatch):
    monkeypatch.setattr(series_cache, "RETRY_FIRST_S", 0.05)
    cache, read = SeriesCache(10, 1 << 20), Reads()
    listeners = [LostListener(lose_after=2), QueuedListener()]
    connects = []

    def listen():
        connects.append(len(connects))
        return listeners[min(len(connects) - 1, 1)]

    watcher = series_cache.ScoreWriteWatcher(cache, listen, warm=lambda: [*"abcdef"], read=read)
    watcher.start()
    try:
        # The first listener is lost at the third KPI: the cache goes dark (dropping a and b),
        # and the second connection warms every KPI again.
        wait_until(lambda: len(connects) == 2 and all(cache.get(k) for k in "abcdef"), "reconnected and warm")
        assert read.calls == 2 + 6
    finally:
        watcher.stop()


@pytest.mark.postgres
def test_a_listener_killed_while_warming_darkens_the_cache(seeded):
    from kpi_pipeline.store.notifications import ScoreWriteListener

    cache = SeriesCache(48, 1 << 20)
    slow = Reads(during=lambda: time.sleep(0.05))
    watcher = series_cache.ScoreWriteWatcher(
        cache,
        lambda: ScoreWriteListener(seeded.engine),
        warm=lambda: [f"k{i}" for i in range(400)],
        read=slow,
    )
    watcher.start()
    try:
        wait_until(lambda: cache.live and slow.calls >= 2, "warming under way")
        pid = listener_pid(seeded.engine)
        with seeded.engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        wait_until(lambda: listener_pid(seeded.engine) not in (None, pid), "the watcher noticed and reconnected")
        assert slow.calls < 400  # the first warming did not run to its end deaf
    finally:
        watcher.stop()


def test_the_app_warms_every_scored_kpi_before_any_request(seeded, monkeypatch):
    reads = CountedReads(monkeypatch)
    with live_client(seeded.engine) as client, direct_client(seeded.engine) as direct:
        series = api_state(client).series
        wait_until(lambda: series.get("sales") is not None, "sales is warm")
        warmed = reads.calls
        assert warmed >= 1
        assert (
            client.get("/v1/kpis/sales/scores?limit=24").content == direct.get("/v1/kpis/sales/scores?limit=24").content
        )
        assert reads.calls == warmed + 1  # only the direct client read the store


def test_where_notifications_do_not_arrive_the_cache_stays_off(seeded, monkeypatch):
    from kpi_pipeline.store import notifications

    monkeypatch.setattr(notifications, "_send_probe", lambda engine, token: None)
    monkeypatch.setattr(notifications, "PROBE_TIMEOUT_S", 0.2)
    with (
        make_client(seeded.engine, api_series_cache_points=CACHED_POINTS) as client,
        direct_client(seeded.engine) as direct,
    ):
        time.sleep(1.0)  # several probes fail meanwhile
        series = api_state(client).series
        assert not series.live
        assert newest_points(client) == newest_points(direct)
        assert series.get("sales") is None
