"""Parse and validate KPI observations from CSV files and API records.

Pure: text or records in, a DataFrame of clean observations out; no database, no Dagster. Bad
input never aborts the whole input and is never dropped silently: each bad row becomes a
``Rejection`` with its raw cells and a short, stable reason, and the good rows still land. That
includes timestamps outside the plausible range (``PlausibleTimes``, from the settings) and a
last line without a line ending, which may be half-written. Only problems with the input as a
whole (unreadable, not CSV text, no usable header, bad time zone) raise ``IngestError``.

Two CSV layouts are accepted:

- long: a KPI-name column (``kpi`` / ``metric`` / ``name``), a ``value`` column and a
  timestamp column, one observation per row; other columns are ignored;
- wide: a timestamp column plus one column per KPI, one observation per non-empty cell.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from kpi_pipeline.config import Settings, get_settings

Layout = Literal["wide", "long"]

TIMESTAMP_COLUMNS = ("date", "timestamp", "ts", "time", "datetime")
"""Header names (case-insensitive) recognised as the timestamp column; the first in the header wins."""

KPI_COLUMNS = ("kpi", "metric", "name")
"""Header names (case-insensitive) recognised as the KPI-name column of the long layout."""

VALUE_COLUMN = "value"

MAX_KPI_NAME_LENGTH = 200

TIMESTAMP_UNIT = "us"
"""Resolution of ``observations.ts``: what Postgres ``timestamptz`` stores and pandas 3's default."""

# An ISO 8601 time followed by a UTC designator or offset (Z, +02, +0200, +02:00). The time part
# is required so that the day of a date-only value ("2025-01-01") is not mistaken for an offset.
_UTC_OFFSET_SUFFIX = re.compile(r"\d[T ].*(?:Z|[+-]\d{2}(?::?\d{2})?)$")
# Database exports (BigQuery, Postgres casts) write "2025-01-01 00:00:00 UTC".
_UTC_WORD_SUFFIX = re.compile(r"\s*UTC$", re.IGNORECASE)
_NAN_LITERAL = re.compile(r"[+-]?nan", re.IGNORECASE)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class IngestError(Exception):
    """The input as a whole cannot be ingested; the message is one line meant for a human."""


@dataclass
class Rejection:
    """One input row (or, in the wide layout, one cell) that did not become an observation."""

    line: int | None
    """1-based line in the file (header = line 1), or 1-based position of an API record."""
    raw: dict[str, str]
    """The cells as they were read, as text."""
    reason: str


@dataclass
class IngestResult:
    observations: pd.DataFrame
    """Columns ``kpi`` (str), ``ts`` (datetime64[us, UTC]), ``value`` (float64); sorted by
    (kpi, ts) and unique on it."""
    rejections: list[Rejection]
    layout: Layout
    duplicates_collapsed: int
    """Rows dropped because another row had the same kpi, ts and value."""


UNTERMINATED_LAST_LINE = (
    "last line has no line ending, so it may be half-written; end the file with a newline if the line is complete"
)


@dataclass(frozen=True)
class PlausibleTimes:
    """The timestamps an input may carry: in the years ``earliest_year`` to ``latest_year``
    (UTC) and no further than ``max_ahead`` after the moment the input is validated."""

    earliest_year: int
    latest_year: int
    max_ahead: pd.Timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> PlausibleTimes:
        return cls(
            settings.ingest_earliest_year,
            settings.ingest_latest_year,
            pd.Timedelta(settings.ingest_max_ahead),
        )

    def reasons(self, instant: pd.Series, text: pd.Series) -> pd.Series:
        """Why each of the aware ``instant`` (written as ``text``) is implausible; None where
        it is plausible or NaT."""
        now = pd.Timestamp.now("UTC")
        year = instant.dt.year
        out_of_years = (year < self.earliest_year) | (year > self.latest_year)
        ahead = ~out_of_years & (instant > now + self.max_ahead)
        horizon = str(self.max_ahead).removesuffix(" 00:00:00")
        reason = pd.Series(None, index=text.index, dtype=object)
        reason[out_of_years] = (
            "timestamp '"
            + text[out_of_years]
            + f"' outside the plausible years {self.earliest_year} to {self.latest_year}"
        )
        reason[ahead] = "timestamp '" + text[ahead] + f"' more than {horizon} ahead of now ({now:%Y-%m-%d %H:%M} UTC)"
        return reason


def _plausible(times: PlausibleTimes | None) -> PlausibleTimes:
    return PlausibleTimes.from_settings(get_settings()) if times is None else times


_RawCells = Callable[[int, str], dict[str, str]]
"""Rebuilds the raw cells of a rejected candidate from its row position and KPI name."""


@dataclass(frozen=True)
class _CsvTable:
    raw: pd.DataFrame
    """Data rows exactly as read, all cells str, blank rows removed, RangeIndex."""
    cells: pd.DataFrame
    """``raw`` with each cell stripped of surrounding whitespace."""
    lines: np.ndarray
    """Line in the file where each row starts."""


def read_observations_csv(
    path: str | PathLike[str], tz: str | None = None, times: PlausibleTimes | None = None
) -> IngestResult:
    """Read a wide or long KPI CSV; naive timestamps are wall-clock times in ``tz`` (default UTC).

    Timestamps outside ``times`` (default: the configured ``PlausibleTimes``) are rejected.
    """
    zone = _time_zone(tz)
    times = _plausible(times)
    source = Path(path)
    table, rejections = _read_table(source)
    header = list(table.raw.columns)
    timestamp_column = _find_column(header, TIMESTAMP_COLUMNS)
    kpi_column = _find_column(header, KPI_COLUMNS)
    value_column = _find_column(header, (VALUE_COLUMN,))
    if timestamp_column is None:
        raise IngestError(
            f"{source}: no timestamp column; expected one of {', '.join(TIMESTAMP_COLUMNS)} "
            f"but the header is {', '.join(header)}"
        )

    if kpi_column is not None and value_column is not None:
        candidates = _long_candidates(
            table.cells[kpi_column],
            table.cells[timestamp_column],
            table.cells[value_column],
            table.lines,
            zone,
            times,
        )
        return _assemble_result(
            candidates,
            lambda row, _kpi: table.raw.iloc[row].to_dict(),
            "long",
            rejections,
        )
    if kpi_column is not None:
        raise IngestError(f"{source}: unknown layout: KPI-name column '{kpi_column}' but no '{VALUE_COLUMN}' column")
    if len(header) == 1:
        raise IngestError(f"{source}: no value columns, only the timestamp column '{timestamp_column}'")

    candidates, bad_timestamp_rows = _wide_candidates(table, timestamp_column, zone, times)
    return _assemble_result(
        candidates,
        lambda row, kpi: {
            timestamp_column: table.raw[timestamp_column].iat[row],
            kpi: table.raw[kpi].iat[row],
        },
        "wide",
        rejections + bad_timestamp_rows,
    )


def validate_records(
    records: Iterable[Mapping[str, object]],
    tz: str | None = None,
    times: PlausibleTimes | None = None,
) -> IngestResult:
    """Validate long-shape records ``{"kpi", "timestamp", "value"}`` with the CSV rules.

    Values are validated through their text form, so ``"12.5"`` and ``12.5`` behave alike and a
    float NaN or infinity is rejected like its CSV spelling. Timestamps outside ``times``
    (default: the configured ``PlausibleTimes``) are rejected.
    """
    zone = _time_zone(tz)
    times = _plausible(times)
    rows = list(records)

    def column(name: str) -> pd.Series:
        return pd.Series([_as_text(row.get(name)) for row in rows], dtype=str).str.strip()

    candidates = _long_candidates(
        column("kpi"),
        column("timestamp"),
        column("value"),
        np.arange(1, len(rows) + 1),
        zone,
        times,
    )
    return _assemble_result(
        candidates,
        lambda row, _kpi: {str(key): _as_text(value) for key, value in rows[row].items()},
        "long",
        [],
    )


def _time_zone(tz: str | None) -> ZoneInfo:
    name = "UTC" if tz is None else tz
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise IngestError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IngestError(f"file not found: {path}") from None
    except OSError as error:
        raise IngestError(f"cannot read {path}: {error.strerror}") from None
    # Text files never contain NUL; images, archives, spreadsheets and UTF-16 files do.
    if b"\x00" in data:
        raise IngestError(f"{path} is a binary file, not CSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise IngestError(
            f"{path} is not UTF-8 text (invalid byte at offset {error.start}); save it as UTF-8 CSV"
        ) from None


def _read_table(path: Path) -> tuple[_CsvTable, list[Rejection]]:
    """Split the file into a header and equal-width rows; rows of another width are rejected.

    The csv module (rather than ``pd.read_csv``) gives the true starting line of every row, also
    across blank lines and quoted line breaks, and lets one ragged row be rejected on its own
    instead of failing the whole file.
    """
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    rejections: list[Rejection] = []
    try:
        header = next((cells for cells in reader if any(cell.strip() for cell in cells)), None)
        if header is None:
            raise IngestError(f"{path} is empty")
        names = _checked_header(header, path)
        next_line = line = reader.line_num + 1
        for cells in reader:
            line, next_line = next_line, reader.line_num + 1
            if len(cells) == len(names):
                rows.append(cells)
                lines.append(line)
            elif cells:
                rejections.append(
                    Rejection(
                        line,
                        _label_cells(names, cells),
                        f"expected {len(names)} fields, got {len(cells)}",
                    )
                )
    except csv.Error as error:
        raise IngestError(f"{path} is not a valid CSV (line {reader.line_num}): {error}") from None
    # A writer appending to the file may have stopped mid-line: "1692" of a coming "1692.25".
    if lines and lines[-1] == line and not text.endswith(("\n", "\r")):
        lines.pop()
        rejections.append(Rejection(line, dict(zip(names, rows.pop())), UNTERMINATED_LAST_LINE))

    raw = pd.DataFrame(rows, columns=names, dtype=str)
    cells = pd.DataFrame({name: column.str.strip() for name, column in raw.items()})
    # A row of empty cells (",,,") carries nothing; it is layout, not a bad observation.
    kept = (cells != "").any(axis=1).to_numpy()
    table = _CsvTable(
        raw=raw[kept].reset_index(drop=True),
        cells=cells[kept].reset_index(drop=True),
        lines=np.asarray(lines, dtype=np.int64)[kept],
    )
    return table, rejections


def _checked_header(header: list[str], path: Path) -> list[str]:
    names = [cell.strip() for cell in header]
    for position, name in enumerate(names, start=1):
        if not name:
            raise IngestError(f"{path}: header column {position} has no name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise IngestError(f"{path}: duplicate column name(s) in the header: {', '.join(repeated)}")
    return names


def _label_cells(names: list[str], cells: list[str]) -> dict[str, str]:
    """Key a ragged row's cells by header name; surplus cells by their 1-based position."""
    return {names[index] if index < len(names) else f"column {index + 1}": cell for index, cell in enumerate(cells)}


def _find_column(header: list[str], accepted: tuple[str, ...]) -> str | None:
    return next((name for name in header if name.lower() in accepted), None)


def _as_text(value: object) -> str:
    return "" if value is None else str(value)


def _long_candidates(
    kpi: pd.Series,
    timestamp: pd.Series,
    value: pd.Series,
    lines: np.ndarray,
    zone: ZoneInfo,
    times: PlausibleTimes,
) -> pd.DataFrame:
    """One candidate per row; ``reason`` holds the row's first failed check, or None."""
    ts, timestamp_reason = _parse_timestamps(timestamp, zone, times)
    values, value_reason = _parse_values(value)
    reason = _kpi_name_reasons(kpi).combine_first(timestamp_reason).combine_first(value_reason)
    return pd.DataFrame(
        {
            "row": np.arange(len(kpi)),
            "line": lines,
            "kpi": kpi.to_numpy(),
            "ts": ts.array,
            "value": values.to_numpy(),
            "reason": reason.to_numpy(),
        }
    )


def _wide_candidates(
    table: _CsvTable, timestamp_column: str, zone: ZoneInfo, times: PlausibleTimes
) -> tuple[pd.DataFrame, list[Rejection]]:
    """One candidate per non-empty KPI cell of a row with a valid timestamp.

    A row whose timestamp is bad is rejected once, whole, rather than once per cell.
    """
    ts, timestamp_reason = _parse_timestamps(table.cells[timestamp_column], zone, times)
    bad_rows = np.flatnonzero(timestamp_reason.notna().to_numpy())
    row_rejections = [
        Rejection(int(table.lines[row]), table.raw.iloc[row].to_dict(), timestamp_reason.iat[row]) for row in bad_rows
    ]

    kpi_names = np.array([name for name in table.cells.columns if name != timestamp_column])
    good_rows = np.flatnonzero(timestamp_reason.isna().to_numpy())
    cells = table.cells[list(kpi_names)].to_numpy(dtype=object)[good_rows]
    filled = cells != ""
    # nonzero and boolean indexing both walk the matrix row-major, so their outputs line up.
    row_offsets, kpi_positions = np.nonzero(filled)
    rows = good_rows[row_offsets]
    kpi = pd.Series(kpi_names[kpi_positions], dtype=str)
    values, value_reason = _parse_values(pd.Series(cells[filled], dtype=str))
    candidates = pd.DataFrame(
        {
            "row": rows,
            "line": table.lines[rows],
            "kpi": kpi.to_numpy(),
            "ts": ts.array[rows],
            "value": values.to_numpy(),
            "reason": _kpi_name_reasons(kpi).combine_first(value_reason).to_numpy(),
        }
    )
    return candidates, row_rejections


def _parse_timestamps(text: pd.Series, zone: ZoneInfo, times: PlausibleTimes) -> tuple[pd.Series, pd.Series]:
    """Parse ISO 8601 text to UTC; naive values are wall-clock times in ``zone``; implausible
    ones (outside ``times``) get a reason.

    Returns the timestamps (NaT where invalid) and a reason per element (None where valid).
    Everything is parsed with ``utc=True`` so that rows with different offsets, or with and
    without one, never break each other; naive rows are then re-read as local wall time.
    Only ISO 8601 is accepted: "01/02/2025" could be either day first or month first.
    """
    normalised = text.str.replace(_UTC_WORD_SUFFIX, "Z", regex=True)
    instant = pd.to_datetime(normalised, format="ISO8601", utc=True, errors="coerce")
    instant = instant.dt.as_unit(TIMESTAMP_UNIT)
    empty = text == ""
    unparsable = instant.isna() & ~empty

    naive = ~normalised.str.contains(_UTC_OFFSET_SUFFIX) & ~instant.isna()
    wall_time = instant[naive].dt.tz_localize(None)
    local = wall_time.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    instant[naive] = local.dt.tz_convert("UTC")
    not_local = local.isna().reindex(text.index, fill_value=False)
    # Shifting gap times forward leaves only the overlap times as NaT, which tells the two apart.
    shifted = wall_time[not_local].dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
    ambiguous = shifted.isna().reindex(text.index, fill_value=False)
    nonexistent = not_local & ~ambiguous

    reason = pd.Series(None, index=text.index, dtype=object)
    reason[empty] = "empty timestamp"
    reason[unparsable] = "unparsable timestamp '" + text[unparsable] + "'"
    reason[nonexistent] = "nonexistent local time '" + text[nonexistent] + f"' in {zone.key} (DST gap)"
    reason[ambiguous] = "ambiguous local time '" + text[ambiguous] + f"' in {zone.key} (DST overlap)"
    return instant, reason.combine_first(times.reasons(instant, text))


def _parse_values(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse numbers strictly: "1,234" is non-numeric rather than guessed at.

    Returns float64 values and a reason per element (None where valid).
    """
    values = pd.to_numeric(text, errors="coerce").astype("float64")
    empty = text == ""
    unparsed = values.isna() & ~empty
    nan_literal = text[unparsed].str.fullmatch(_NAN_LITERAL).reindex(text.index, fill_value=False)
    non_numeric = unparsed & ~nan_literal

    reason = pd.Series(None, index=text.index, dtype=object)
    reason[empty] = "empty value"
    reason[nan_literal] = "value is NaN"
    reason[non_numeric] = "non-numeric value '" + text[non_numeric] + "'"
    reason[np.isinf(values)] = "value is infinite"
    return values, reason


def _kpi_name_reasons(kpi: pd.Series) -> pd.Series:
    """A reason per element (None where valid), checked once per distinct name."""
    problems = {name: _kpi_name_problem(name) for name in kpi.unique()}
    return kpi.map(problems).astype(object)


def _kpi_name_problem(name: str) -> str | None:
    if not name:
        return "empty KPI name"
    if len(name) > MAX_KPI_NAME_LENGTH:
        return f"KPI name longer than {MAX_KPI_NAME_LENGTH} characters: '{name[:40]}...'"
    if _CONTROL_CHARACTER.search(name):
        return f"KPI name contains control characters: {name!r}"
    return None


def _assemble_result(
    candidates: pd.DataFrame, raw_cells: _RawCells, layout: Layout, rejections: list[Rejection]
) -> IngestResult:
    """Reject invalid and conflicting candidates, collapse exact duplicates, sort the rest."""
    invalid = candidates["reason"].notna()
    valid = candidates[~invalid]
    distinct_values = valid.groupby(["kpi", "ts"], sort=False)["value"].transform("nunique")
    conflicting = valid[distinct_values > 1]
    agreeing = valid[distinct_values <= 1]
    landed = agreeing.drop_duplicates(["kpi", "ts"])

    rejected = pd.concat([candidates[invalid], conflicting.assign(reason=_conflict_reasons(conflicting))])
    rejections = rejections + [
        Rejection(int(line), raw_cells(int(row), kpi), reason)
        for row, line, kpi, reason in rejected[["row", "line", "kpi", "reason"]].itertuples(index=False)
    ]
    observations = pd.DataFrame(
        {
            "kpi": landed["kpi"].astype(str),
            "ts": landed["ts"],
            "value": landed["value"].astype("float64"),
        }
    ).sort_values(["kpi", "ts"], ignore_index=True)
    return IngestResult(
        observations=observations,
        rejections=sorted(rejections, key=lambda rejection: rejection.line or 0),
        layout=layout,
        duplicates_collapsed=len(agreeing) - len(landed),
    )


def _conflict_reasons(conflicting: pd.DataFrame) -> pd.Series:
    """Every row of a (kpi, ts) with different values is rejected: none can be trusted."""
    reasons = pd.Series(None, index=conflicting.index, dtype=object)
    for (kpi, ts), group in conflicting.groupby(["kpi", "ts"], sort=False):
        values = " vs ".join(str(value) for value in group["value"].unique())
        reasons[group.index] = f"conflicting duplicate for ({kpi}, {ts.isoformat()}): values {values}"
    return reasons
