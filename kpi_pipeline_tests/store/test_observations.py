"""Observations and rejections (kpi_pipeline/store/observations.py), on Postgres and SQLite."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from kpi_pipeline.store import (
    UpsertCounts,
    insert_rejections,
    list_kpis,
    load_observations,
    load_observations_from,
    observation_spans,
    observations_ingested_since,
    observations_version,
    table_counts,
    upsert_observations,
)
from kpi_pipeline.store._sql import BATCH_SIZE, upsert
from kpi_pipeline.store.schema import kpi_observations


def observations(kpi: str, start: str, values: list[float], freq: str = "D") -> pd.DataFrame:
    ts = pd.date_range(start, periods=len(values), freq=freq, tz="UTC")
    return pd.DataFrame({"kpi": kpi, "ts": ts, "value": values})


def sources(engine: sa.Engine) -> dict[tuple[str, pd.Timestamp], str]:
    table = kpi_observations
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table.c.kpi, table.c.ts, table.c.source)).all()
    return {(kpi, pd.Timestamp(ts)): source for kpi, ts, source in rows}


def test_upsert_inserts_then_leaves_identical_rows_alone_then_updates_changes(migrated_engine):
    first = pd.concat(
        [observations("sales", "2024-01-01", [1.0, 2.0, 3.0]), observations("orders", "2024-01-01", [5.0])]
    )

    assert upsert_observations(migrated_engine, first, "a.csv") == UpsertCounts(4, 0, 0)
    version = observations_version(migrated_engine)
    cursor = observations_ingested_since(migrated_engine)["max_ingested_at"].max()

    assert upsert_observations(migrated_engine, first, "b.csv") == UpsertCounts(0, 0, 4)
    assert observations_version(migrated_engine) == version
    assert observations_ingested_since(migrated_engine, cursor).empty
    assert set(sources(migrated_engine).values()) == {"a.csv"}  # unchanged rows not rewritten

    changed = first.assign(value=[1.0, 20.0, 3.0, 5.0])
    late = observations("sales", "2024-01-04", [4.0])
    counts = upsert_observations(migrated_engine, pd.concat([changed, late]), "c.csv")

    assert counts == UpsertCounts(inserted=1, updated=1, unchanged=3)
    assert observations_version(migrated_engine) != version
    fresh = observations_ingested_since(migrated_engine, cursor)
    assert fresh["kpi"].tolist() == ["sales"]
    assert fresh.loc[0, "n_rows"] == 2
    assert fresh.loc[0, "min_ts"] == pd.Timestamp("2024-01-02", tz="UTC")
    assert fresh.loc[0, "max_ts"] == pd.Timestamp("2024-01-04", tz="UTC")
    assert fresh.loc[0, "max_ingested_at"] > cursor
    assert sources(migrated_engine)[("sales", pd.Timestamp("2024-01-02", tz="UTC"))] == "c.csv"
    assert load_observations(migrated_engine, ["sales"])["value"].tolist() == [1.0, 20.0, 3.0, 4.0]


def test_timestamps_round_trip_as_utc(migrated_engine):
    local = pd.Timestamp("2024-03-10 12:00", tz="Europe/Berlin")  # +01:00
    offset = pd.Timestamp("2024-06-01T08:30:00.123456+02:00")
    df = pd.DataFrame({"kpi": ["sales", "sales"], "ts": [local, offset], "value": [1.0, 2.0]})
    upsert_observations(migrated_engine, df.astype({"ts": object}), "t")

    loaded = load_observations(migrated_engine)

    assert str(loaded["ts"].dtype) == "datetime64[us, UTC]"
    assert loaded["ts"].tolist() == [
        pd.Timestamp("2024-03-10 11:00", tz="UTC"),
        pd.Timestamp("2024-06-01 06:30:00.123456", tz="UTC"),
    ]
    # Filters accept any offset, and naive values mean UTC.
    since = load_observations(migrated_engine, since="2024-06-01T08:30:00.123456+02:00")
    until = load_observations(migrated_engine, until="2024-03-10 11:00")
    assert (since["value"].tolist(), until["value"].tolist()) == ([2.0], [1.0])


def test_load_observations_filters_inclusively_and_sorts(migrated_engine):
    upsert_observations(migrated_engine, observations("sales", "2024-01-01", [1, 2, 3, 4]), "t")
    upsert_observations(migrated_engine, observations("orders", "2024-01-01", [9, 8]), "t")

    loaded = load_observations(migrated_engine, since="2024-01-02", until="2024-01-03")

    assert loaded[["kpi", "value"]].values.tolist() == [
        ["orders", 8.0],
        ["sales", 2.0],
        ["sales", 3.0],
    ]
    assert load_observations(migrated_engine, kpis=["orders"])["value"].tolist() == [9.0, 8.0]
    assert load_observations(migrated_engine, kpis=[]).empty
    assert list_kpis(migrated_engine) == ["orders", "sales"]


def test_observations_from_start_at_the_last_one_at_or_before_the_bound(migrated_engine):
    sales = observations("sales", "2024-01-01", [1, 2, 3, 4, 5, 6]).drop(index=[2, 3])
    upsert_observations(migrated_engine, sales, "t")
    upsert_observations(migrated_engine, observations("orders", "2024-01-01", [9, 8]), "t")

    def values(since: str) -> list[float]:
        loaded = load_observations_from(migrated_engine, "sales", since)
        assert (loaded["kpi"] == "sales").all() and loaded["ts"].is_monotonic_increasing
        return loaded["value"].tolist()

    assert values("2024-01-04 12:00") == [2.0, 5.0, 6.0]  # inside the gap: from the point before
    assert values("2024-01-05") == [5.0, 6.0]  # on a point: from it
    assert values("2023-12-01") == [1.0, 2.0, 5.0, 6.0]  # before the first: all
    assert values("2024-02-01") == [6.0]


def test_observation_spans_give_each_kpis_first_and_last_time(migrated_engine):
    assert observation_spans(migrated_engine).empty
    upsert_observations(migrated_engine, observations("sales", "2024-01-01", [1, 2, 3]), "t")
    upsert_observations(migrated_engine, observations("orders", "2024-03-01", [9]), "t")

    spans = observation_spans(migrated_engine)

    assert spans.values.tolist() == [
        ["orders", pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC")],
        ["sales", pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-03", tz="UTC")],
    ]


def test_empty_store_reads_give_typed_empty_frames(migrated_engine):
    loaded = load_observations(migrated_engine)
    assert loaded.empty
    assert list(loaded.columns) == ["kpi", "ts", "value"]
    assert str(loaded["ts"].dtype) == "datetime64[us, UTC]"
    assert list_kpis(migrated_engine) == []
    assert observations_version(migrated_engine) == "0:none"
    assert observations_ingested_since(migrated_engine).empty


def test_duplicate_keys_in_one_batch_keep_the_last_value(migrated_engine):
    same_key = observations("sales", "2024-01-01", [1.0])
    df = pd.concat([same_key, same_key.assign(value=2.0)])
    assert upsert_observations(migrated_engine, df, "t") == UpsertCounts(1, 0, 0)
    assert load_observations(migrated_engine)["value"].tolist() == [2.0]


def test_null_values_are_refused(migrated_engine):
    with pytest.raises(ValueError, match="null"):
        upsert_observations(migrated_engine, observations("sales", "2024-01-01", [1.0, np.nan]), "t")
    assert load_observations(migrated_engine).empty


WRITERS = 20


@pytest.mark.parametrize("changed", [False, True], ids=["same values", "new values"])
def test_racing_writers_report_what_the_database_did(migrated_engine, changed):
    """Writers racing over the same keys: each key is counted as inserted by exactly one of
    them, and as updated only by a writer whose value replaced a different one."""
    frames = [
        observations("sales", "2024-01-01", [float(writer if changed else 1)] * 100, freq="h")
        for writer in range(WRITERS)
    ]
    start = threading.Barrier(WRITERS)

    def write(frame: pd.DataFrame) -> UpsertCounts:
        start.wait()
        return upsert_observations(migrated_engine, frame, "race")

    with ThreadPoolExecutor(WRITERS) as pool:
        counts = list(pool.map(write, frames))

    assert sum(c.inserted for c in counts) == 100
    assert all(c.inserted + c.updated + c.unchanged == 100 for c in counts)
    if not changed:
        assert sum(c.updated for c in counts) == 0
    assert table_counts(migrated_engine)["kpi_observations"] == 100


def test_large_batches_are_written_and_diffed(migrated_engine):
    n = BATCH_SIZE + 1_000  # more than one executemany batch
    df = observations("traffic", "2020-01-01", np.arange(n, dtype=float).tolist(), freq="h")
    assert upsert_observations(migrated_engine, df, "t") == UpsertCounts(n, 0, 0)
    changed = df.assign(value=df["value"].where(df.index % 3 != 0, -1.0))
    expected = UpsertCounts(inserted=0, updated=n // 3, unchanged=n - n // 3)
    assert upsert_observations(migrated_engine, changed, "t") == expected
    assert load_observations(migrated_engine)["value"].equals(changed["value"])


def test_rejections_are_recorded_once(migrated_engine):
    unparseable = {"kpi": "sales", "ts": "yesterday", "value": "1"}
    missing_value = {"raw": "sales,2024-01-01,", "reason": "missing value", "source": "a.csv"}
    bad_file = [
        {"raw": unparseable, "reason": "unparseable ts", "source": "a.csv", "line": 2},
        missing_value | {"line": 3},
        missing_value | {"line": 3},  # the same rejection twice in one batch
    ]
    assert insert_rejections(migrated_engine, bad_file) == 2
    assert insert_rejections(migrated_engine, bad_file) == 0
    assert insert_rejections(migrated_engine, [missing_value | {"source": "b.csv"}]) == 1
    assert insert_rejections(migrated_engine, []) == 0
    assert table_counts(migrated_engine)["rejected_observations"] == 3


@pytest.mark.parametrize(("update", "kept"), [(True, [3.0, 5.0]), (False, [1.0, 5.0])])
def test_a_batch_repeating_a_key_keeps_what_row_by_row_writes_would(migrated_engine, update, kept):
    """``_sql.upsert`` writes a batch as one statement of arrays on Postgres, where a key may
    not be touched twice: the last row of a repeated key wins when updating, the first when
    not, as row-by-row statements (SQLite, executemany) leave it."""
    ts = [pd.Timestamp("2024-01-01", tz="UTC").to_pydatetime(), pd.Timestamp("2024-01-02", tz="UTC").to_pydatetime()]
    now = ts[0]
    rows = [
        {"kpi": "sales", "ts": ts[0], "value": value, "ingested_at": now, "source": "t"} for value in (1.0, 2.0, 3.0)
    ]
    rows.append({"kpi": "sales", "ts": ts[1], "value": 5.0, "ingested_at": now, "source": "t"})
    with migrated_engine.begin() as connection:
        upsert(
            connection,
            kpi_observations,
            rows,
            update=["value"] if update else (),
            only_if_changed=["value"] if update else (),
        )

    assert load_observations(migrated_engine)["value"].tolist() == kept


def test_observation_windows_of_many_kpis_equal_each_kpi_read_alone(migrated_engine):
    """``load_observation_windows`` (one statement for many KPIs; on PostgreSQL each KPI's
    window crosses as two arrays) reads what ``load_observations_from`` reads KPI by KPI."""
    from kpi_pipeline.store import load_observations_from, upsert_observations
    from kpi_pipeline.store.scoring import load_observation_windows

    start = pd.Timestamp("2024-05-01", tz="UTC")
    hours = pd.date_range(start, periods=48, freq="h")
    rows = []
    # Names that sort between one another, a KPI with a gap, microsecond timestamps.
    for i, name in enumerate(["a", "a b", "aa", "A", "gappy", "fine"]):
        stamps = hours.delete(slice(10, 30)) if name == "gappy" else hours
        if name == "fine":
            stamps = stamps + pd.Timedelta(microseconds=123_457)
        rows.append(pd.DataFrame({"kpi": name, "ts": stamps, "value": np.arange(len(stamps)) * 0.1 + i / 3}))
    upsert_observations(migrated_engine, pd.concat(rows, ignore_index=True), source="test")
    since = {
        "a": hours[40],
        "a b": hours[0] - pd.Timedelta(days=1),  # before the first point: all of it
        "aa": None,  # read whole
        "gappy": hours[20],  # inside the gap: from the last point before it
        "fine": hours[47],
        "unknown": hours[3],  # no observations
    }

    got = load_observation_windows(migrated_engine, since)

    expected = pd.concat(
        [load_observations_from(migrated_engine, kpi, start) for kpi, start in since.items() if start is not None]
        + [load_observations(migrated_engine, ["aa"])],
        ignore_index=True,
    ).sort_values(["kpi", "ts"], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.groupby("kpi")["ts"].min()["gappy"] == hours[9]
    assert got.groupby("kpi").size().to_dict() == {"a": 8, "a b": 48, "aa": 48, "fine": 2, "gappy": 19}
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"
    assert load_observation_windows(migrated_engine, {"unknown": hours[3]}).empty


def test_observations_since_per_kpi_bounds_read_each_kpi_from_its_own_bound(migrated_engine):
    """``load_observations_since`` with a bound per KPI (None: the whole KPI), names that sort
    between one another, sorted by kpi and ts as one KPI's read each."""
    from kpi_pipeline.store import upsert_observations
    from kpi_pipeline.store.series import load_observations_since

    hours = pd.date_range("2024-05-01", periods=10, freq="h", tz="UTC")
    names = ["a", "a b", "aa", "A", "b"]
    upsert_observations(
        migrated_engine,
        pd.concat(
            [pd.DataFrame({"kpi": name, "ts": hours, "value": np.arange(10.0) + i}) for i, name in enumerate(names)]
        ),
        source="test",
    )
    since = {"a": hours[7], "aa": None, "A": hours[0], "b": hours[9] + pd.Timedelta(hours=1)}

    got = load_observations_since(migrated_engine, since)

    assert got.groupby("kpi", sort=False).size().to_dict() == {"A": 10, "a": 3, "aa": 10}
    assert got["ts"].is_monotonic_increasing is False  # several KPIs, each in time order
    for kpi, rows in got.groupby("kpi"):
        assert rows["ts"].is_monotonic_increasing
        assert rows["value"].tolist() == [v + names.index(kpi) for v in range(10 - len(rows), 10)]
    assert load_observations_since(migrated_engine, {"b": hours[9] + pd.Timedelta(hours=1)}).empty
