import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.preprocess import (
    CLEANED_COLUMNS,
    Grid,
    PreprocessConfig,
    add_counts,
    clean_observations,
    clean_series,
    infer_frequency,
    mode_step,
    reclean,
    reclean_many,
    reclean_since,
    regularize,
    step_counts,
)

HOUR = pd.Timedelta(hours=1)


def utc(*stamps: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(stamps), utc=True, format="ISO8601"))


def hourly_rows(hours: list[int], values: list[float] | None = None) -> pd.DataFrame:
    ts = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(hours, unit="h")
    values = [float(h) for h in hours] if values is None else values
    return pd.DataFrame({"ts": ts, "value": values})


def observations(**series: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([rows.assign(kpi=kpi) for kpi, rows in series.items()], ignore_index=True)


# -- infer_frequency -------------------------------------------------------------------------


def test_frequency_is_the_most_common_step_despite_gaps():
    ts = hourly_rows([0, 1, 2, 3, 4, 10, 11, 30])["ts"]
    assert infer_frequency(ts) == HOUR


def test_frequency_ignores_duplicate_timestamps_and_order():
    ts = utc("2025-01-01 00:10", "2025-01-01 00:00", "2025-01-01 00:05", "2025-01-01 00:05")
    assert infer_frequency(ts) == pd.Timedelta(minutes=5)


@pytest.mark.parametrize("stamps", [[], ["2025-01-01"], ["2025-01-01", "2025-01-01"]])
def test_frequency_is_none_without_two_distinct_timestamps(stamps):
    assert infer_frequency(utc(*stamps)) is None


# -- regularize ------------------------------------------------------------------------------


def test_short_gap_is_interpolated_and_marked_filled():
    out = regularize(hourly_rows([0, 1, 4, 5], [0.0, 10.0, 40.0, 50.0]), HOUR)
    assert out["value"].tolist() == pytest.approx([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    assert out["filled"].tolist() == [False, False, True, True, False, False]
    assert not out["gap"].any()


def test_long_gap_stays_missing_and_is_marked_gap():
    out = regularize(hourly_rows([0, 1, 6, 7]), HOUR, PreprocessConfig(max_fill_periods=3))
    missing = slice(2, 6)  # hours 2-5: four missing points, one more than may be filled
    assert len(out) == 8
    assert out["value"].iloc[missing].isna().all()
    assert out["gap"].iloc[missing].all() and out["gap"].sum() == 4
    assert not out["filled"].any()
    assert out["value"].drop(out.index[missing]).tolist() == [0.0, 1.0, 6.0, 7.0]


def test_gap_of_exactly_max_fill_periods_is_filled():
    out = regularize(hourly_rows([0, 4]), HOUR, PreprocessConfig(max_fill_periods=3))
    assert out["filled"].sum() == 3 and not out["gap"].any()
    assert out["value"].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])


def test_duplicate_timestamps_are_averaged():
    out = regularize(hourly_rows([0, 1, 1, 2], [1.0, 2.0, 4.0, 5.0]), HOUR)
    assert out["value"].tolist() == [1.0, 3.0, 5.0]
    assert out["ts"].is_unique


def test_off_grid_timestamps_snap_to_the_nearest_grid_point():
    rows = pd.DataFrame(
        {
            "ts": utc("2025-01-01 00:00", "2025-01-01 01:00:40", "2025-01-01 01:58", "2025-01-01 03:00"),
            "value": [0.0, 1.0, 2.0, 3.0],
        }
    )
    out = regularize(rows, HOUR)
    assert list(out["ts"]) == list(pd.date_range("2025-01-01", periods=4, freq="h", tz="UTC"))
    assert out["value"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not (out["filled"].any() or out["gap"].any())


# -- clean_observations ----------------------------------------------------------------------


def test_each_kpi_gets_its_own_grid_and_frequency():
    five_min = pd.DataFrame({"ts": pd.date_range("2025-01-01", periods=6, freq="5min", tz="UTC"), "value": 1.0})
    raw = observations(hourly=hourly_rows([0, 1, 3]), fast=five_min.drop(index=2))
    cleaned, frequencies = clean_observations(raw.sample(frac=1.0, random_state=0))

    assert list(cleaned.columns) == CLEANED_COLUMNS
    assert frequencies == {"fast": pd.Timedelta(minutes=5), "hourly": HOUR}
    for kpi, rows in cleaned.groupby("kpi"):
        steps = rows["ts"].diff().dropna()
        assert (steps == frequencies[kpi]).all() and rows["ts"].is_monotonic_increasing
    assert cleaned.groupby("kpi").size().to_dict() == {"fast": 6, "hourly": 4}
    assert cleaned.loc[cleaned["kpi"] == "fast", "filled"].sum() == 1
    assert cleaned.loc[cleaned["kpi"] == "hourly", "value"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_single_point_kpi_is_kept_without_a_frequency():
    raw = observations(lonely=hourly_rows([5], [42.0]), busy=hourly_rows([0, 1, 2]))
    cleaned, frequencies = clean_observations(raw)
    lonely = cleaned[cleaned["kpi"] == "lonely"]
    assert "lonely" not in frequencies and frequencies["busy"] == HOUR
    assert len(lonely) == 1
    assert lonely["value"].item() == 42.0
    assert not lonely["filled"].item() and not lonely["gap"].item()


def test_missing_values_are_dropped_before_regularising():
    raw = observations(k=hourly_rows([0, 1, 2, 3, 4, 5], [0.0, 1.0, np.nan, np.nan, 4.0, 5.0]))
    cleaned, frequencies = clean_observations(raw)
    assert frequencies == {"k": HOUR}
    assert cleaned["value"].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert cleaned["filled"].tolist() == [False, False, True, True, False, False]


def test_no_observations_give_an_empty_frame_with_the_contract_columns():
    empty = pd.DataFrame(columns=["kpi", "ts", "value"])
    cleaned, frequencies = clean_observations(empty)
    assert cleaned.empty and list(cleaned.columns) == CLEANED_COLUMNS
    assert frequencies == {}


def _messy_hourly_series(n_slots: int, seed: int) -> pd.DataFrame:
    """Hourly observations as they arrive: some off the grid, some slots twice, short and long
    gaps."""
    rng = np.random.default_rng(seed)
    slots = np.arange(n_slots)
    keep = np.ones(n_slots, dtype=bool)
    for start in rng.choice(n_slots - 10, size=n_slots // 40, replace=False):
        keep[start : start + rng.integers(1, 8)] = False  # gaps of 1 to 7 points
    keep[0] = True
    slots = np.concatenate([slots[keep], rng.choice(slots[keep], size=n_slots // 30)])
    jitter = rng.integers(-20 * 60, 20 * 60, size=len(slots)) * (rng.random(len(slots)) < 0.2)
    ts = (
        pd.Timestamp("2025-01-01 00:00:17", tz="UTC")
        + pd.to_timedelta(slots, unit="h")
        + pd.to_timedelta(jitter, unit="s")
    )
    values = 100 + 10 * np.sin(2 * np.pi * slots / 24) + rng.normal(0, 1, len(slots))
    return pd.DataFrame({"kpi": "k", "ts": ts, "value": values}).sort_values("ts")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_recent_window_on_the_series_grid_cleans_like_the_whole_series(seed):
    raw = _messy_hourly_series(1500, seed)
    whole, frequencies = clean_observations(raw)
    assert frequencies == {"k": HOUR}
    grid = {"k": Grid(raw["ts"].min(), HOUR)}
    reach = PreprocessConfig().max_fill_periods + 1
    for first in range(100, len(raw) - 400, 97):
        cleaned, _ = clean_observations(raw.iloc[first:], grids=grid)

        settled = cleaned.iloc[reach:].reset_index(drop=True)
        expected = whole[whole["ts"] >= settled["ts"].iloc[0]].reset_index(drop=True)
        pd.testing.assert_frame_equal(settled, expected, check_exact=True)


def test_without_the_series_grid_a_window_starting_off_grid_lands_on_another_grid():
    raw = _messy_hourly_series(500, seed=0)
    whole, _ = clean_observations(raw)
    off_grid = int(np.flatnonzero(raw["ts"].dt.second != 17)[5])
    cleaned, _ = clean_observations(raw.iloc[off_grid:])
    assert not cleaned["ts"].isin(whole["ts"]).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_counts_added_up_give_infer_frequency_of_the_whole(seed):
    raw = _messy_hourly_series(300, seed)
    ts = raw["ts"]
    for cut in (1, 2, 50, 299):
        # The later stretch starts at the earlier one's last timestamp: the step between them.
        counts = add_counts(step_counts(ts.iloc[:cut]), step_counts(ts.iloc[cut - 1 :]))
        assert counts == step_counts(ts)
        assert mode_step(counts) == infer_frequency(ts)
    assert mode_step(step_counts(ts.iloc[:1])) is None


def test_mode_step_takes_the_shortest_of_equally_common_steps():
    ts = utc("2025-01-01T00:00", "2025-01-01T02:00", "2025-01-01T03:00", "2025-01-01T05:00", "2025-01-01T06:00")
    assert mode_step(step_counts(ts)) == infer_frequency(ts) == HOUR


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recleaning_from_a_changed_slot_gives_the_whole_series_rows(seed):
    raw = _messy_hourly_series(600, seed)
    grid = Grid(raw["ts"].min(), HOUR)
    whole = clean_series(raw, grid)
    slots = grid.slots(raw["ts"])
    # A changed slot is an observed one, or the one after the last (the series grew).
    for changed in [*np.unique(slots)[1::23], slots.max() + 1]:
        window = raw[raw["ts"] >= reclean_since(grid, changed)]
        rows = reclean(window, grid, changed)
        first = int(grid.slots(rows["ts"].iloc[:1])[0])
        # From the last observed slot before the change (if near enough) on, nothing before.
        observed_before = slots[(slots < changed) & (slots >= changed - 5)]
        assert first == (observed_before.max() if len(observed_before) else changed)
        expected = whole[grid.slots(whole["ts"]) >= first].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, expected, check_exact=True)


def test_recleaning_many_kpis_at_once_equals_recleaning_each():
    """``reclean_many`` (one pass over a chunk of KPIs) gives each KPI what ``reclean`` gives it,
    for changed slots inside the history, on a gap, and after the last slot; and slots of
    timestamps in numpy equal the pandas arithmetic."""
    windows, plans, expected = [], {}, []
    for seed in range(6):
        kpi = f"kpi {seed}" if seed % 2 else f"k{seed}"  # names that sort between one another
        raw = _messy_hourly_series(400, seed)
        grid = Grid(raw["ts"].min(), HOUR)
        slots = grid.slots(raw["ts"])
        np.testing.assert_array_equal(grid.slots_of_ns(pd.DatetimeIndex(raw["ts"]).as_unit("ns").asi8), slots)
        changed = [int(np.unique(slots)[150]), int(slots.max()) + 1, int(slots.max()) - 2][seed % 3]
        window = raw[raw["ts"] >= reclean_since(grid, changed)]
        windows.append(window.assign(kpi=kpi))
        plans[kpi] = (grid, changed)
        expected.append(reclean(window, grid, changed).assign(kpi=kpi)[CLEANED_COLUMNS])
    observations = pd.concat(windows, ignore_index=True).sample(frac=1.0, random_state=0)  # any order

    got = reclean_many(observations, plans)

    want = pd.concat(expected, ignore_index=True).sort_values(["kpi", "ts"], ignore_index=True)
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), check_exact=True)
    assert reclean_many(observations.iloc[:0], plans).empty


def _regularize_with_pandas(series, freq, config=PreprocessConfig(), origin=None):
    """The pandas formulation ``regularize`` replaced: the oracle it must match exactly."""
    frame = series[["ts", "value"]].copy()
    start = frame["ts"].min() if origin is None else origin
    frame["ts"] = start + pd.Index(Grid(start, freq).slots(frame["ts"])) * freq
    values = frame.groupby("ts")["value"].mean()
    grid = pd.date_range(values.index.min(), values.index.max(), freq=freq)
    values = values.reindex(grid)
    missing = values.isna()
    run_id = (missing != missing.shift()).cumsum()
    run_length = missing.groupby(run_id).transform("size")
    short_gap = missing & (run_length <= config.max_fill_periods)
    long_gap = missing & ~short_gap
    filled_values = values.interpolate(method="time", limit_area="inside")
    values = values.where(~short_gap, filled_values)
    return pd.DataFrame(
        {"ts": grid, "value": values.to_numpy(dtype=float), "filled": short_gap.to_numpy(), "gap": long_gap.to_numpy()}
    )


@pytest.mark.parametrize("seed", range(6))
def test_regularize_matches_the_pandas_formulation_exactly(seed):
    rng = np.random.default_rng(seed)
    raw = _messy_hourly_series(int(rng.integers(5, 400)), seed)[["ts", "value"]]
    if seed % 2:  # unique slots only: the path without a grouped mean
        raw = raw.loc[~pd.Series(Grid(raw["ts"].min(), HOUR).slots(raw["ts"])).duplicated().to_numpy()]
    if seed == 4:  # a missing value at either end, and one inside
        raw = raw.copy()
        raw.iloc[[0, len(raw) // 2, -1], raw.columns.get_loc("value")] = np.nan
    origin = raw["ts"].min() - 3 * HOUR if seed == 5 else None
    shuffled = raw.sample(frac=1.0, random_state=seed)  # rows in any order, duplicates included
    for rows in (raw, shuffled):
        for config in (PreprocessConfig(), PreprocessConfig(max_fill_periods=1)):
            pd.testing.assert_frame_equal(
                regularize(rows, HOUR, config, origin=origin),
                _regularize_with_pandas(rows, HOUR, config, origin=origin),
                check_exact=True,
            )


def test_regularize_of_nothing_is_empty():
    empty = pd.DataFrame({"ts": pd.DatetimeIndex([], tz="UTC"), "value": np.zeros(0)})
    out = regularize(empty, HOUR)
    assert out.empty and list(out.columns) == ["ts", "value", "filled", "gap"]


def test_filling_between_known_slots_in_python_gives_fill_slots_bits():
    from kpi_pipeline.detection.preprocess import fill_between, fill_slots

    rng = np.random.default_rng(8)
    origin = pd.Timestamp("2025-03-01T00:17:00Z")
    for unit, step in [("ns", pd.Timedelta(minutes=5)), ("us", pd.Timedelta(hours=1)), ("s", pd.Timedelta(days=1))]:
        for _ in range(200):
            slots = np.cumsum(rng.integers(1, 7, size=rng.integers(1, 8)))
            slots = np.concatenate([[0], slots]) + int(rng.integers(0, 10_000))
            values = rng.lognormal(5, 2, len(slots)) * rng.choice([-1, 1], len(slots))
            x = (
                pd.date_range(origin + slots[0] * step, periods=int(slots[-1] - slots[0]) + 1, freq=step)
                .as_unit(unit)
                .asi8
            )
            value, _, gap = fill_slots(slots, values, x)
            got, got_gap = fill_between(slots.tolist(), values.tolist(), x.tolist())
            np.testing.assert_array_equal(np.array(got), value)
            assert got_gap == gap.tolist()


def test_slots_of_integer_timestamps_are_the_slots_of_timestamps():
    rng = np.random.default_rng(9)
    for step in (pd.Timedelta(minutes=5), pd.Timedelta(hours=1), pd.Timedelta(days=1)):
        grid = Grid(pd.Timestamp("2024-02-29T00:17:00Z"), step)
        offsets = rng.integers(-400, 40_000, 300) * step.value // 2  # half-way points, too
        offsets = np.concatenate([offsets, rng.integers(-(10**16), 10**18, 300)])
        ts = pd.DatetimeIndex(grid.origin.value + offsets, tz="UTC")
        assert grid.slots_ns(ts.asi8.tolist()) == grid.slots(ts).tolist()


@pytest.mark.parametrize("with_grids", [False, True])
def test_cleaning_many_kpis_at_once_equals_cleaning_each_alone(with_grids):
    rng = np.random.default_rng(3)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    frames = []
    for i, name in enumerate(["a", "a b", "aa", "b"]):
        ts = start + pd.to_timedelta(np.sort(rng.choice(200, 150, replace=False)), unit="h")
        frame = pd.DataFrame({"kpi": name, "ts": ts, "value": rng.normal(100 + i, 5, len(ts))})
        duplicates = frame.sample(15, random_state=i).assign(value=lambda f: f["value"] + 1)
        off_grid = frame.sample(5, random_state=10 + i).assign(ts=lambda f: f["ts"] + pd.Timedelta(minutes=10))
        frames += [frame, duplicates, off_grid]
    frames.append(pd.DataFrame({"kpi": ["solo"], "ts": [start], "value": [3.0]}))
    observations = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=0, ignore_index=True)
    observations.loc[observations.sample(20, random_state=1).index, "value"] = np.nan
    grids = {"a": Grid(start - 3 * HOUR, HOUR), "b": Grid(start, 2 * HOUR)} if with_grids else None

    cleaned, steps = clean_observations(observations, grids=grids)

    expected, expected_steps = [], {}
    for name, rows in observations.sort_values(["kpi", "ts"]).groupby("kpi"):
        rows = rows.dropna(subset=["value"])
        grid = (grids or {}).get(name)
        step = grid.step if grid else infer_frequency(rows["ts"])
        if step is None:
            expected.append(rows[["ts", "value"]].assign(filled=False, gap=False, kpi=name))
            continue
        expected_steps[name] = step
        expected.append(clean_series(rows, grid or Grid(rows["ts"].min(), step)).assign(kpi=name))
    pd.testing.assert_frame_equal(cleaned, pd.concat(expected, ignore_index=True)[CLEANED_COLUMNS], check_exact=True)
    assert steps == expected_steps


def test_cleaning_rows_without_a_known_value_gives_no_rows_with_their_types():
    ts = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    cleaned, steps = clean_observations(pd.DataFrame({"kpi": "a", "ts": ts, "value": np.nan}))
    assert cleaned.empty and list(cleaned.columns) == CLEANED_COLUMNS
    assert str(cleaned["ts"].dtype).startswith("datetime64") and cleaned["value"].dtype == float
    assert cleaned["filled"].dtype == bool and steps == {}
