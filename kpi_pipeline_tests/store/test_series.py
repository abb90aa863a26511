"""The derived series tables (kpi_pipeline/store/series.py): kpi_cleaned, kpi_features and
kpi_series, on Postgres and SQLite."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kpi_pipeline.detection.features import FEATURE_COLUMNS
from kpi_pipeline.store import series, table_counts, upsert_observations
from kpi_pipeline.store.series import SeriesState

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _cleaned(kpi: str, hours: range, value: float = 1.0) -> pd.DataFrame:
    ts = [T0 + h * HOUR for h in hours]
    values = [np.nan if h % 5 == 4 else value for h in hours]  # every fifth point in a gap
    return pd.DataFrame({"kpi": kpi, "ts": ts, "value": values, "filled": False, "gap": [h % 5 == 4 for h in hours]})


def _state(kpi: str, cleaned_at: pd.Timestamp, **changes) -> SeriesState:
    fields = dict(
        kpi=kpi,
        origin=T0,
        step=HOUR,
        step_counts={3_600_000_000: 9},
        observations=10,
        duplicates=1,
        last_observed=T0 + 9 * HOUR,
        ingested_through=T0 + 20 * HOUR,
        cleaned_at=cleaned_at,
        changed_from=T0,
    )
    return SeriesState(**(fields | changes))


def test_cleaned_rows_and_states_round_trip_and_rewriting_them_changes_nothing(migrated_engine):
    rows = pd.concat([_cleaned("orders", range(10)), _cleaned("sales", range(3))])
    states = [_state("orders", T0 + 30 * HOUR), _state("sales", T0 + 30 * HOUR, step=None, step_counts={})]
    series.save_cleaned(migrated_engine, rows, states)
    series.save_cleaned(migrated_engine, rows, states)

    pd.testing.assert_frame_equal(series.load_cleaned_rows(migrated_engine), rows.reset_index(drop=True))
    assert table_counts(migrated_engine)["kpi_cleaned"] == 13
    assert series.load_series(migrated_engine) == {state.kpi: state for state in states}
    assert series.load_series(migrated_engine, ["sales"]) == {"sales": states[1]}


def test_cleaned_rows_are_read_per_kpi_since_a_time(migrated_engine):
    rows = pd.concat([_cleaned("orders", range(10)), _cleaned("sales", range(10))])
    series.save_cleaned(migrated_engine, rows, [])

    both = series.load_cleaned_rows(migrated_engine, since=T0 + 8 * HOUR)
    assert both.groupby("kpi").size().to_dict() == {"orders": 2, "sales": 2}
    each = series.load_cleaned_rows(
        migrated_engine, ["orders", "sales", "none"], since={"orders": T0 + 7 * HOUR, "sales": None}
    )
    assert each.groupby("kpi").size().to_dict() == {"orders": 3, "sales": 10}
    assert series.load_cleaned_rows(migrated_engine, ["sales"])["kpi"].unique().tolist() == ["sales"]
    assert series.load_cleaned_rows(migrated_engine, [], since={}).empty


def test_rebuilding_a_kpi_drops_its_old_rows(migrated_engine):
    series.save_cleaned(migrated_engine, _cleaned("orders", range(10)), [])
    shifted = _cleaned("orders", range(3)).assign(ts=lambda f: f["ts"] + pd.Timedelta(minutes=30))
    series.save_cleaned(migrated_engine, shifted, [], rebuilt=["orders"])

    assert series.load_cleaned_rows(migrated_engine)["ts"].tolist() == shifted["ts"].tolist()


def test_features_follow_the_cleaning_they_were_built_for(migrated_engine):
    first, second = T0 + 30 * HOUR, T0 + 31 * HOUR
    series.save_cleaned(
        migrated_engine, _cleaned("orders", range(3)), [_state("orders", first), _state("sales", first)]
    )
    assert series.features_due(migrated_engine).keys() == {"orders", "sales"}
    assert series.newest_cleaning(migrated_engine).keys() == {"orders", "sales"}

    features = pd.DataFrame(
        {"kpi": "orders", "ts": [T0, T0 + HOUR], **{name: [np.nan, 0.5] for name in FEATURE_COLUMNS}}
    )
    features[["is_weekend", "is_holiday"]] = 1
    series.save_features(migrated_engine, features, {"orders": first})
    assert series.features_due(migrated_engine).keys() == {"sales"}
    assert series.load_series(migrated_engine)["orders"].features_current
    pd.testing.assert_frame_equal(series.load_features(migrated_engine), features, check_dtype=False)

    # A later cleaning of orders: due again, and the newest cleaning is orders alone. Saving
    # the cleaning keeps features_through.
    series.save_cleaned(migrated_engine, _cleaned("orders", range(4)), [_state("orders", second)])
    assert series.features_due(migrated_engine).keys() == {"orders", "sales"}
    assert series.newest_cleaning(migrated_engine).keys() == {"orders"}
    assert series.load_series(migrated_engine)["orders"].features_through == first

    series.save_features(migrated_engine, features.iloc[:1], {"orders": second}, rebuilt=["orders"])
    assert len(series.load_features(migrated_engine)) == 1


def test_observation_changes_are_the_rows_ingested_after_each_kpis_watermark(migrated_engine):
    ts = pd.date_range(T0, periods=5, freq="h")
    upsert_observations(migrated_engine, pd.DataFrame({"kpi": "orders", "ts": ts, "value": 1.0}), "t")
    changes = series.observation_changes(migrated_engine, pd.Timedelta(minutes=15))
    assert changes[["kpi", "first_ts", "last_ts"]].values.tolist() == [["orders", ts[0], ts[-1]]]

    cleaned_through = changes["ingested_through"].iloc[0]
    series.save_cleaned(
        migrated_engine, _cleaned("orders", range(0)), [_state("orders", T0, ingested_through=cleaned_through)]
    )
    assert series.observation_changes(migrated_engine, pd.Timedelta(minutes=15)).empty

    upsert_observations(
        migrated_engine, pd.DataFrame({"kpi": ["orders", "sales"], "ts": [ts[1], ts[0]], "value": [2.0, 1.0]}), "t"
    )
    changes = series.observation_changes(migrated_engine, pd.Timedelta(minutes=15))
    assert changes[["kpi", "first_ts", "last_ts"]].values.tolist() == [
        ["orders", ts[1], ts[1]],
        ["sales", ts[0], ts[0]],
    ]
    assert (changes["ingested_through"] > cleaned_through).all()
    assert series.count_observations(migrated_engine, {"orders": ts[2], "none": ts[2]}) == {"orders": 3, "none": 0}


def test_the_features_table_has_a_column_per_feature(migrated_engine):
    assert list(series.FEATURE_COLUMNS)[2:] == FEATURE_COLUMNS


def test_observations_are_read_since_each_kpis_time(migrated_engine):
    ts = pd.date_range(T0, periods=5, freq="h")
    frame = pd.concat([pd.DataFrame({"kpi": kpi, "ts": ts, "value": 1.0}) for kpi in ("a", "b")])
    upsert_observations(migrated_engine, frame, "t")
    read = series.load_observations_since(migrated_engine, {"a": ts[3], "b": None})
    assert read.groupby("kpi").size().to_dict() == {"a": 2, "b": 5}
