"""Turn raw observations into regular, gap-aware series.

Input is the long shape ``kpi, ts, value`` (ts tz-aware UTC). Output keeps the long shape on each
KPI's own regular grid, with two flags: ``filled`` (a short gap interpolated from its neighbours)
and ``gap`` (part of a long gap: value stays NaN, we never invent data across it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

CLEANED_COLUMNS = ["kpi", "ts", "value", "filled", "gap"]


@dataclass(frozen=True)
class PreprocessConfig:
    max_fill_periods: int = 3
    """Gaps of at most this many missing points are interpolated; longer ones stay gaps."""


def infer_frequency(ts: pd.Series | pd.DatetimeIndex) -> pd.Timedelta | None:
    """The series' sampling interval: the most common positive step (robust to gaps and DST dupes).

    Returns None when there are fewer than two distinct timestamps.
    """
    index = pd.DatetimeIndex(ts).unique().sort_values()
    if len(index) < 2:
        return None
    steps = pd.Series(index[1:] - index[:-1])
    return pd.Timedelta(steps[steps > pd.Timedelta(0)].mode().iloc[0])


def step_counts(ts: pd.Series | pd.DatetimeIndex) -> dict[int, int]:
    """How often each positive step (in microseconds) occurs between the consecutive distinct
    timestamps of ``ts``: what ``infer_frequency`` takes the mode of, as counts that the steps
    of later timestamps can be added to (``add_counts``)."""
    return step_counts_us(pd.DatetimeIndex(ts).as_unit("us").asi8)


def step_counts_us(us: np.ndarray) -> dict[int, int]:
    """``step_counts`` of timestamps given as microseconds since the epoch (any order)."""
    steps = np.diff(np.unique(us))
    values, counts = np.unique(steps[steps > 0], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def add_counts(counts: Mapping[int, int], more: Mapping[int, int]) -> dict[int, int]:
    """The step counts of two stretches of one series together."""
    total = dict(counts)
    for step, count in more.items():
        total[step] = total.get(step, 0) + count
    return total


def mode_step(counts: Mapping[int, int]) -> pd.Timedelta | None:
    """The most common step of ``step_counts`` (the shortest of equally common ones), which is
    ``infer_frequency`` of the same timestamps; None without steps."""
    if not counts:
        return None
    most = max(counts.values())
    return pd.Timedelta(min(step for step, count in counts.items() if count == most), unit="us")


def regularize(
    series: pd.DataFrame,
    freq: pd.Timedelta,
    config: PreprocessConfig = PreprocessConfig(),
    origin: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Put one KPI's ``ts, value`` rows on a regular grid of step ``freq``.

    The grid runs through ``origin`` (default: the first timestamp). Duplicate timestamps are
    averaged. Off-grid timestamps snap to the nearest grid point.

    Written with numpy (real-time scoring cleans a few rows per request, where pandas' fixed
    costs were most of the time), with the arithmetic of the pandas formulation it replaces:
    pandas' grouped mean for duplicates and ``np.interp`` on the nanosecond timestamps, as
    ``interpolate(method="time", limit_area="inside")`` does (tests compare the two exactly).
    """
    grid, value, short_gap, long_gap = _regularized(
        pd.DatetimeIndex(series["ts"]), series["value"].to_numpy(dtype=float), freq, config, origin
    )
    return pd.DataFrame({"ts": grid, "value": value, "filled": short_gap, "gap": long_gap})


def _regularized(
    ts: pd.DatetimeIndex,
    values: np.ndarray,
    freq: pd.Timedelta,
    config: PreprocessConfig,
    origin: pd.Timestamp | None,
) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]:
    """``regularize``'s columns (ts, value, filled, gap) as arrays."""
    if len(ts) == 0:
        return ts, values, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    start = ts.min() if origin is None else origin
    slots = Grid(start, freq).slots(ts)
    occupied, first_row, counts = np.unique(slots, return_index=True, return_counts=True)
    if (counts > 1).any():
        # In the rows' own order: the order of a sum decides its last bit.
        means = pd.Series(values).groupby(slots, sort=True).mean().to_numpy(dtype=float)
    else:
        means = values[first_row]
    first_slot = int(occupied[0])
    grid = pd.date_range(start + first_slot * freq, periods=int(occupied[-1]) - first_slot + 1, freq=freq)
    value, short_gap, long_gap = fill_slots(occupied, means, grid.asi8, config)
    return grid, value, short_gap, long_gap


def fill_slots(
    occupied: np.ndarray,
    means: np.ndarray,
    x: np.ndarray,
    config: PreprocessConfig = PreprocessConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``regularize``'s grid filling on plain arrays: the values of the increasing grid slots
    ``occupied`` laid out from the first to the last slot, short gaps interpolated in time,
    long ones left NaN. ``x``: those slots' timestamps as integers (``DatetimeIndex.asi8`` of
    the grid, in its unit: interpolation's last bits depend on it). Returns the values and the
    ``filled`` and ``gap`` flags."""
    first_slot = int(occupied[0])
    n = int(occupied[-1]) - first_slot + 1
    value = np.full(n, np.nan)
    value[occupied - first_slot] = means
    missing = np.isnan(value)
    short_gap = np.zeros(n, dtype=bool)
    long_gap = np.zeros(n, dtype=bool)
    if missing.any():
        edges = np.flatnonzero(np.diff(np.concatenate(([0], missing.view(np.int8), [0]))))
        for run_start, run_end in zip(edges[::2], edges[1::2]):
            short = run_end - run_start <= config.max_fill_periods
            (short_gap if short else long_gap)[run_start:run_end] = True
        valid = np.flatnonzero(~missing)
        if len(valid):
            inside = short_gap.copy()
            inside[: valid[0]] = inside[valid[-1] + 1 :] = False
            value[inside] = np.interp(x[inside], x[valid], value[valid])
    return value, short_gap, long_gap


def fill_between(
    slots: list[int], values: list[float], x: list[int], config: PreprocessConfig = PreprocessConfig()
) -> tuple[list[float], list[bool]]:
    """``fill_slots`` in plain Python, for increasing slots whose values are all known (the few
    slots of real-time scoring, where numpy's cost per call dwarfs the arithmetic): the values
    from the first slot to the last, each gap between two slots interpolated in time if it is
    short (``np.interp``'s arithmetic, so the same bits), NaN if long. ``x``: the timestamps
    (integers, as for ``fill_slots``) of every slot from the first to the last. Returns the
    values and the long-gap flags."""
    first = slots[0]
    out, gap = [values[0]], [False]
    for s0, v0, s1, v1 in zip(slots, values, slots[1:], values[1:]):
        missing = s1 - s0 - 1
        if 0 < missing <= config.max_fill_periods:
            x0, x1 = float(x[s0 - first]), float(x[s1 - first])
            slope = (v1 - v0) / (x1 - x0)
            for s in range(s0 + 1, s1):
                at = float(x[s - first])
                value = slope * (at - x0) + v0
                if value != value:  # as np.interp: the other way round, then the flat value
                    value = slope * (at - x1) + v1
                    if value != value and v0 == v1:
                        value = v0
                out.append(value)
            gap += [False] * missing
        elif missing:
            out += [np.nan] * missing
            gap += [True] * missing
        out.append(v1)
        gap.append(False)
    return out, gap


@dataclass(frozen=True)
class Grid:
    """A series' regular time grid: the points ``origin + k * step``."""

    origin: pd.Timestamp
    """The series' first timestamp."""
    step: pd.Timedelta

    def slots(self, ts) -> np.ndarray:
        """The slot ``k`` each timestamp snaps to (the nearest grid point)."""
        offsets = (pd.DatetimeIndex(ts) - self.origin) / self.step
        # pandas-stubs type this Index[float] without the round() that pandas gives it.
        return offsets.round().to_numpy(dtype=np.int64)  # type: ignore[attr-defined]

    def slots_ns(self, ns: list[int]) -> list[int]:
        """``slots`` of timestamps given as nanoseconds since the epoch, in plain Python (for
        the few points of real-time scoring): the same arithmetic, the integers' difference as
        a float divided by the step, rounded half to even."""
        origin, step = self._ns
        return [round(float(stamp - origin) / step) for stamp in ns]

    def slots_of_ns(self, ns: np.ndarray) -> np.ndarray:
        """``slots_ns`` of an array of nanoseconds since the epoch, with numpy: the same
        arithmetic (the difference as a float divided by the step, rounded half to even)."""
        origin, step = self._ns
        return np.rint((np.asarray(ns, dtype=np.int64) - origin).astype(np.float64) / step).astype(np.int64)

    def stamps(self, first: int, last: int) -> np.ndarray:
        """The grid points of slots ``first`` to ``last`` as naive UTC ``datetime64``, in the
        unit of the grids ``regularize`` builds (whose integers its interpolation uses)."""
        dtype, origin, step = self._in_unit
        return np.array([origin + slot * step for slot in range(first, last + 1)], dtype=dtype)

    @cached_property
    def _ns(self) -> tuple[int, int]:
        return self.origin.value, self.step.value

    @cached_property
    def _in_unit(self) -> tuple[np.dtype, int, int]:
        grid = pd.date_range(self.origin, periods=2, freq=self.step)
        unit = np.dtype(f"datetime64[{grid.unit}]")
        return unit, int(grid.asi8[0]), int(grid.asi8[1] - grid.asi8[0])


def clean_series(observations: pd.DataFrame, grid: Grid, config: PreprocessConfig = PreprocessConfig()) -> pd.DataFrame:
    """One KPI's observations (ts, value) cleaned on ``grid``: the rows (ts, value, filled, gap)
    ``clean_observations`` gives that KPI, without its grouping by KPI name."""
    rows = observations[["ts", "value"]].sort_values("ts", kind="stable").dropna(subset=["value"])
    return regularize(rows, grid.step, config, origin=grid.origin)


def reclean_since(grid: Grid, changed_slot: int, config: PreprocessConfig = PreprocessConfig()) -> pd.Timestamp:
    """The earliest observation ``reclean`` needs to re-clean a series from ``changed_slot``:
    every observation of the ``max_fill_periods + 2`` slots before it (a short gap before the
    changed slot is filled from the last observed slot before it)."""
    return grid.origin + (changed_slot - config.max_fill_periods - 3) * grid.step


def reclean(
    observations: pd.DataFrame,
    grid: Grid,
    changed_slot: int,
    config: PreprocessConfig = PreprocessConfig(),
) -> pd.DataFrame:
    """One KPI's cleaned rows (ts, value, filled, gap) from the last observed slot before
    ``changed_slot`` on: the rows cleaning the whole series on ``grid`` gives there, from its
    observations since ``reclean_since`` alone.

    ``changed_slot`` is the first slot whose observations changed, or the slot after the last
    observed one when the series only grew. The rows before the returned ones are unchanged:
    they end in the last observed slot before the change, or in a gap too long to fill, which
    stays a gap whatever follows it.
    """
    cleaned = clean_series(observations, grid, config)
    slots = grid.slots(cleaned["ts"])
    observed = ~(cleaned["filled"].to_numpy() | cleaned["gap"].to_numpy())
    # Slots from here on have every observation in the window (it starts a slot earlier).
    complete = slots >= changed_slot - config.max_fill_periods - 2
    anchors = slots[complete & observed & (slots < changed_slot)]
    start = anchors[-1] if len(anchors) else changed_slot
    return cleaned[slots >= start].reset_index(drop=True)


def kpi_slices(names: np.ndarray) -> list[tuple[int, int]]:
    """The ``(first, end)`` positions of each run of equal names in ``names`` (an array of a
    frame's ``kpi`` column sorted by KPI): each KPI's rows as a slice, where a ``groupby``
    would build a frame per KPI."""
    if len(names) == 0:
        return []
    starts = np.concatenate(([0], np.flatnonzero(names[1:] != names[:-1]) + 1))
    ends = np.append(starts[1:], len(names))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def reclean_many(
    observations: pd.DataFrame,
    plans: Mapping[str, tuple[Grid, int]],
    config: PreprocessConfig = PreprocessConfig(),
) -> pd.DataFrame:
    """``reclean`` of many KPIs at once. ``observations`` (kpi, ts, value) holds each KPI's
    observations from its ``reclean_since`` on, ``plans`` its grid and changed slot; returns
    the rows (kpi, ts, value, filled, gap) ``reclean`` gives each KPI, sorted by KPI and time:
    one cleaning pass over plain arrays (``clean_observations``, which gives each KPI the rows
    ``clean_series`` does) instead of a frame per KPI."""
    cleaned, _ = clean_observations(observations, config, grids={kpi: grid for kpi, (grid, _) in plans.items()})
    if cleaned.empty:
        return cleaned
    names = cleaned["kpi"].to_numpy(dtype=object)
    stamps = pd.DatetimeIndex(cleaned["ts"]).as_unit("ns").asi8
    observed = ~(cleaned["filled"].to_numpy(dtype=bool) | cleaned["gap"].to_numpy(dtype=bool))
    keep = np.zeros(len(cleaned), dtype=bool)
    for first, end in kpi_slices(names):
        grid, changed_slot = plans[names[first]]
        slots = grid.slots_of_ns(stamps[first:end])
        # As ``reclean``: from the last observed slot before the change whose window is complete.
        complete = slots >= changed_slot - config.max_fill_periods - 2
        anchors = slots[complete & observed[first:end] & (slots < changed_slot)]
        start = anchors[-1] if len(anchors) else changed_slot
        keep[first:end] = slots >= start
    return cleaned[keep].reset_index(drop=True)


def clean_observations(
    observations: pd.DataFrame,
    config: PreprocessConfig = PreprocessConfig(),
    grids: Mapping[str, Grid] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.Timedelta]]:
    """Sort, de-duplicate and regularise every KPI; returns the cleaned rows and each KPI's step.

    Each KPI's step is inferred from its rows and its grid starts at its first row, unless
    ``grids`` gives its grid: that is for KPIs whose rows are only a recent window of their
    series, which then land on the grid of the whole series. A window's rows equal the whole
    series' rows except in its first ``config.max_fill_periods + 1`` grid slots (duplicates
    from before the window are missing from its first slot, and short gaps just after it are
    filled from that slot).
    """
    grids = grids or {}
    # A KPI with a given grid has that step even if none of its values is known.
    frequencies = {str(kpi): grids[str(kpi)].step for kpi in observations["kpi"].unique() if str(kpi) in grids}
    rows = observations.sort_values(["kpi", "ts"])
    rows = rows[rows["value"].notna()]
    if observations.empty:
        return pd.DataFrame(columns=CLEANED_COLUMNS), frequencies
    if rows.empty:  # rows, none of them known: no rows, with the columns' types
        typed = rows[["kpi", "ts", "value"]].assign(kpi=rows["kpi"].astype("str"), filled=False, gap=False)
        return typed[CLEANED_COLUMNS].reset_index(drop=True), frequencies
    # One pass over plain arrays, each KPI a slice of them (a frame per KPI cost more than
    # cleaning it).
    names = rows["kpi"].astype(str).to_numpy(dtype=object)
    ts = pd.DatetimeIndex(rows["ts"])
    values = rows["value"].to_numpy(dtype=float)
    kpis: list[str] = []
    lengths: list[int] = []
    stamps: list[pd.DatetimeIndex] = []
    columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for first, end in kpi_slices(names):
        kpi = names[first]
        # Stable by time within the KPI, as ``clean_series`` sorts them.
        order = np.argsort(ts[first:end].asi8, kind="stable")
        kpi_ts, kpi_values = ts[first:end][order], values[first:end][order]
        grid = grids.get(kpi)
        freq = grid.step if grid is not None else infer_frequency(kpi_ts)
        if freq is None:
            # A single point has no grid; keep it as is so it is still visible downstream.
            filled = np.zeros(len(kpi_ts), dtype=bool)
            cleaned = kpi_ts, kpi_values, filled, filled.copy()
        else:
            frequencies[kpi] = freq
            cleaned = _regularized(kpi_ts, kpi_values, freq, config, grid.origin if grid else kpi_ts.min())
        kpis.append(kpi)
        lengths.append(len(cleaned[0]))
        stamps.append(cleaned[0])
        columns.append(cleaned[1:])
    cleaned_ts = stamps[0].append(stamps[1:]) if len(stamps) > 1 else stamps[0]
    cleaned_frame = pd.DataFrame(
        {
            "kpi": pd.Series(np.repeat(np.array(kpis, dtype=object), lengths)).astype("str"),
            "ts": cleaned_ts,
            "value": np.concatenate([c[0] for c in columns]),
            "filled": np.concatenate([c[1] for c in columns]),
            "gap": np.concatenate([c[2] for c in columns]),
        }
    )
    return cleaned_frame[CLEANED_COLUMNS], frequencies
