"""Conversions between pandas frames and database rows.

Every timestamp leaving the store is a tz-aware UTC pandas Timestamp at microsecond
resolution (what both Postgres and SQLite keep), whatever the dialect returned; the
database side of this is ``schema.UtcDateTime``. Naive input is taken to be UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import pandas as pd
import sqlalchemy as sa

Kind = Literal["str", "utc", "float", "bool", "int"]

TimeLike: TypeAlias = pd.Timestamp | dt.datetime | dt.date | str
"""Anything ``pd.Timestamp`` parses; naive values are UTC."""


def to_utc(value: TimeLike) -> pd.Timestamp:
    """One datetime-like scalar as a tz-aware UTC Timestamp."""
    ts = pd.Timestamp(value)
    if pd.isna(ts):
        raise ValueError(f"not a timestamp: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def utc_column(values: Any) -> pd.Series:
    """Datetime-likes as a ``datetime64[us, UTC]`` Series."""
    column = pd.to_datetime(pd.Series(values), utc=True)
    return column.dt.floor("us").dt.as_unit("us")


_CONVERTERS = {
    "str": lambda column: column.astype("str"),
    "utc": utc_column,
    "float": lambda column: column.astype("float64"),
    "bool": lambda column: column.astype("bool"),
    "int": lambda column: column.astype("int64"),
}


def coerce(frame: pd.DataFrame, columns: Mapping[str, Kind]) -> pd.DataFrame:
    """``frame`` with ``columns`` converted to their kind's dtype; missing values stay missing."""
    return frame.assign(**{name: _CONVERTERS[kind](frame[name]) for name, kind in columns.items()})


def build_frame(rows: Iterable[tuple[Any, ...] | sa.Row[Any]], columns: Mapping[str, Kind]) -> pd.DataFrame:
    """A DataFrame with the same dtypes on every dialect, even when there are no rows.

    Rows are made plain tuples first: ``from_records`` probes each SQLAlchemy ``Row`` for
    attributes it lacks, which costs about 4 s per million rows."""
    records = [tuple(row) for row in rows]
    return coerce(pd.DataFrame.from_records(records, columns=list(columns)), columns)


def to_records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values for executemany; missing values become None."""
    values = {}
    for name in columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            column = column.dt.to_pydatetime()
        values[name] = column.astype(object).where(column.notna(), None).tolist()
    return [dict(zip(columns, row, strict=True)) for row in zip(*values.values(), strict=True)]


def utc_now() -> pd.Timestamp:
    """The current time as a UTC Timestamp at the resolution the databases keep."""
    return pd.Timestamp.now("UTC").floor("us")
