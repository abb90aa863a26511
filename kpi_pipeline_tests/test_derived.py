"""Incremental maintenance of ``kpi_cleaned`` and ``kpi_features`` (kpi_pipeline/derived.py):
after every ingest, the tables equal a full build from every observation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kpi_pipeline import derived, store
from kpi_pipeline.detection.features import build_features
from kpi_pipeline.detection.preprocess import clean_observations
from kpi_pipeline.store import series

HOUR = pd.Timedelta(hours=1)
START = pd.Timestamp("2024-03-01", tz="UTC")
COUNTRY = "US"


def _hourly(kpi: str, first: int, last: int, seed: int = 0) -> pd.DataFrame:
    """Hourly points ``first`` .. ``last`` hours after START, a daily cycle plus noise."""
    hours = np.arange(first, last + 1)
    noise = np.random.default_rng(seed + first).normal(0, 3, len(hours))
    return pd.DataFrame(
        {
            "kpi": kpi,
            "ts": START + hours * HOUR,
            "value": 100 + 20 * np.sin(2 * np.pi * hours / 24) + noise,
        }
    )


def _full_build(engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every observation cleaned, and the features of every cleaned series: the reference."""
    cleaned, steps = clean_observations(store.load_observations(engine))
    features = [
        pd.concat(
            [
                rows[["kpi", "ts"]].reset_index(drop=True),
                build_features(rows["ts"], rows["value"], steps.get(str(kpi)), COUNTRY),
            ],
            axis=1,
        )
        for kpi, rows in cleaned.groupby("kpi", sort=True)
    ]
    return cleaned.reset_index(drop=True), pd.concat(features, ignore_index=True)


def _maintain(engine) -> tuple[derived.CleaningRun, derived.FeatureRun]:
    cleaning = derived.clean_new_observations(engine)
    return cleaning, derived.build_new_features(engine, COUNTRY)


def _assert_equal_to_full_build(engine) -> None:
    cleaned, features = _full_build(engine)
    pd.testing.assert_frame_equal(series.load_cleaned_rows(engine), cleaned, check_exact=False, rtol=1e-9, atol=1e-9)
    stored = series.load_features(engine)
    pd.testing.assert_frame_equal(
        stored, features.astype(stored.dtypes.to_dict()), check_exact=False, rtol=1e-9, atol=1e-9
    )


def test_incremental_maintenance_equals_a_full_build_after_every_ingest(migrated_engine):
    engine = migrated_engine
    orders = _hourly("orders", 0, 240)
    orders = orders.drop(index=[50, 51, 120, *range(150, 160)])  # a short gap and a long one
    # Two observations on one slot: a late copy, and one just before the last slot.
    doubles = orders.loc[[30, 240]].assign(
        ts=lambda f: f["ts"] + [pd.Timedelta(seconds=30), pd.Timedelta(minutes=-10)],
        value=lambda f: f["value"] + 7,
    )
    visits = pd.DataFrame({"kpi": "visits", "ts": START + np.array([0, 2, 4, 6]) * HOUR, "value": [5.0, 6.0, 7.0, 8.0]})
    store.upsert_observations(engine, pd.concat([orders, doubles, visits]), "t")
    cleaning, features = _maintain(engine)
    assert sorted(cleaning.kpis) == ["orders", "visits"]
    assert cleaning.rows == 241 + 4 and features.rows == 241 + 4
    assert cleaning.rebuilt == {"orders": "new KPI", "visits": "new KPI"}
    _assert_equal_to_full_build(engine)

    # New points after a gap of two slots; visits turns hourly, which changes its step: it is
    # rebuilt on the new grid.
    store.upsert_observations(
        engine,
        pd.concat(
            [
                _hourly("orders", 243, 260),
                pd.DataFrame({"kpi": "visits", "ts": START + np.arange(7, 20) * HOUR, "value": 9.0}),
            ]
        ),
        "t",
    )
    cleaning, features = _maintain(engine)
    assert cleaning.rebuilt == {"visits": "its most common step changed from 0 days 02:00:00 to 0 days 01:00:00"}
    assert cleaning.rows == 20 + 21  # orders: its last observed slot (240), then 241 .. 260
    _assert_equal_to_full_build(engine)

    # An old value corrected (just after the short gap, which is filled from it), a point on the
    # last slot (averaged with it), and a KPI that appears later, with one observation.
    store.upsert_observations(
        engine,
        pd.concat(
            [
                orders.loc[[52]].assign(value=500.0),
                _hourly("orders", 260, 260).assign(ts=START + 260 * HOUR + pd.Timedelta(minutes=10)),
                pd.DataFrame({"kpi": "signups", "ts": [START], "value": [3.0]}),
            ]
        ),
        "t",
    )
    cleaning, features = _maintain(engine)
    assert cleaning.rebuilt == {
        "orders": f"a value corrected at {(START + 52 * HOUR).isoformat()}",
        "signups": "new KPI",
    }
    assert cleaning.rows == (260 - 49 + 1) + 1  # orders from the slot before the short gap
    _assert_equal_to_full_build(engine)

    # The single observation gets company; an observation lands inside the long gap.
    store.upsert_observations(
        engine,
        pd.concat(
            [
                pd.DataFrame(
                    {
                        "kpi": "signups",
                        "ts": START + np.arange(1, 30) * pd.Timedelta(days=1),
                        "value": np.arange(1.0, 30.0),
                    }
                ),
                pd.DataFrame({"kpi": "orders", "ts": [START + 155 * HOUR], "value": [90.0]}),
            ]
        ),
        "t",
    )
    cleaning, features = _maintain(engine)
    assert cleaning.rebuilt == {
        "signups": "had a single observation",
        "orders": "observations inserted into its history",
    }
    _assert_equal_to_full_build(engine)

    # Nothing new: nothing read beyond the changes, nothing written.
    cleaning, features = _maintain(engine)
    assert (cleaning.kpis, cleaning.rows, features.kpis, features.rows) == ([], 0, [], 0)
    _assert_equal_to_full_build(engine)
