"""The in-memory snapshot of every KPI's latest score (kpi_pipeline/api/snapshot.py): never
older than its bound, counted from when its read started; one read at a time; errors reach the
caller once the snapshot has expired."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time

import pytest

from kpi_pipeline.api.snapshot import LatestScoreSnapshot, Snapshot

MAX_AGE = 10.0
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A stand-in for ``serving.latest_scores``: one row per KPI, counting its reads."""

    def __init__(self, clock: Clock, read_seconds: float = 0.0) -> None:
        self.clock, self.read_seconds = clock, read_seconds
        self.value, self.reads = 1.0, 0

    def __call__(self) -> list[dict]:
        self.reads += 1
        value = self.value  # what the read sees is what was committed when it started
        self.clock.now += self.read_seconds
        return [row("sales", value)]


def row(kpi: str, value: float) -> dict:
    return {
        "kpi": kpi,
        "ts": T0,
        "value": value,
        "expected": value,
        "lower": None,
        "upper": None,
        "score": 0.1,
        "is_anomaly": False,
        "severity": None,
        "flagged_by": None,
        "model_version": "v1",
        "scored_at": T0,
    }


def served_value(snapshot: LatestScoreSnapshot, read: Store) -> float:
    scores = asyncio.run(snapshot.get(read)).scores
    return json.loads(scores["sales"])["value"]


def test_a_snapshot_is_served_until_it_is_max_age_old_then_read_again():
    clock = Clock()
    snapshot, read = LatestScoreSnapshot(MAX_AGE, clock), Store(clock)

    assert served_value(snapshot, read) == 1.0
    read.value = 2.0  # new scores land
    clock.now += 0.5 * MAX_AGE
    assert served_value(snapshot, read) == 1.0 and read.reads == 1
    clock.now += 0.5 * MAX_AGE  # exactly max_age: too old
    assert served_value(snapshot, read) == 2.0 and read.reads == 2


def test_the_age_counts_from_when_the_read_started():
    clock = Clock()
    snapshot, read = LatestScoreSnapshot(MAX_AGE, clock), Store(clock, read_seconds=0.6 * MAX_AGE)

    served_value(snapshot, read)  # the read took 0.6 max_age
    read.value = 2.0
    clock.now += 0.5 * MAX_AGE  # 0.5 after the read returned, 1.1 after it started

    assert served_value(snapshot, read) == 2.0


def test_close_to_max_age_a_request_is_served_at_once_and_a_background_read_starts():
    clock = Clock()
    snapshot, read = LatestScoreSnapshot(MAX_AGE, clock), Store(clock)

    async def scenario() -> tuple[float, float]:
        await snapshot.get(read)
        read.value = 2.0
        clock.now += 0.9 * MAX_AGE
        before = (await snapshot.get(read)).scores  # served from memory, re-read started
        await snapshot._refresh
        after = (await snapshot.get(read)).scores
        return json.loads(before["sales"])["value"], json.loads(after["sales"])["value"]

    assert asyncio.run(scenario()) == (1.0, 2.0)
    assert read.reads == 2


def test_concurrent_requests_on_an_expired_snapshot_share_one_read():
    snapshot = LatestScoreSnapshot(MAX_AGE)
    reads, started = [], threading.Event()

    def slow_read() -> list[dict]:
        reads.append(1)
        started.set()
        time.sleep(0.2)
        return [row("sales", 1.0)]

    async def scenario() -> None:
        await asyncio.gather(*(snapshot.get(slow_read) for _ in range(8)))

    asyncio.run(scenario())
    assert len(reads) == 1


def test_a_failed_read_reaches_the_caller_once_the_snapshot_expired():
    clock = Clock()
    snapshot, read = LatestScoreSnapshot(MAX_AGE, clock), Store(clock)
    served_value(snapshot, read)

    def broken() -> list[dict]:
        raise ConnectionError("database down")

    clock.now += 0.5 * MAX_AGE
    assert asyncio.run(snapshot.get(broken)).scores  # still within the bound
    clock.now += 0.5 * MAX_AGE
    with pytest.raises(ConnectionError):
        asyncio.run(snapshot.get(broken))


def test_a_selection_keeps_the_stores_kpi_order_and_leaves_out_kpis_without_scores():
    snapshot = Snapshot(0.0, {"b": b"1", "A": b"2", "c": b"3"})  # the store's collation order

    assert list(snapshot.of(["c", "A", "nope", "b", "A"])) == ["b", "A", "c"]
    assert snapshot.of(None) == snapshot.scores
    assert snapshot.of([]) == {}
