import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.config import Settings
from kpi_pipeline.ingestion import (
    UNTERMINATED_LAST_LINE,
    IngestError,
    IngestResult,
    PlausibleTimes,
    Rejection,
    read_observations_csv,
    validate_records,
)


def write_csv(tmp_path: Path, text: str, name: str = "kpis.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def observed(result: IngestResult) -> list[tuple[str, pd.Timestamp, float]]:
    return list(result.observations.itertuples(index=False, name=None))


def reasons(result: IngestResult) -> list[str]:
    return [rejection.reason for rejection in result.rejections]


def test_wide_file_gives_one_observation_per_non_empty_cell(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "date,sales,visits\n2025-01-02T00:00:00Z,20.5,200\n2025-01-01T00:00:00Z,10,\n",
    )

    result = read_observations_csv(path)

    assert result.layout == "wide"
    assert result.rejections == []
    assert result.duplicates_collapsed == 0
    assert observed(result) == [
        ("sales", utc("2025-01-01"), 10.0),
        ("sales", utc("2025-01-02"), 20.5),
        ("visits", utc("2025-01-02"), 200.0),
    ]
    dtypes = result.observations.dtypes
    assert pd.api.types.is_string_dtype(dtypes["kpi"])
    assert dtypes["ts"] == "datetime64[us, UTC]"
    assert dtypes["value"] == "float64"


def test_long_file_ignores_extra_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "kpi,timestamp,value,source\n"
        "orders,2025-01-01 01:00:00,5,shop\n"
        "orders,2025-01-01 00:00:00,4,shop\n"
        "aov,2025-01-01 00:00:00,31.25,shop\n",
    )

    result = read_observations_csv(path)

    assert result.layout == "long"
    assert result.rejections == []
    assert observed(result) == [
        ("aov", utc("2025-01-01 00:00"), 31.25),
        ("orders", utc("2025-01-01 00:00"), 4.0),
        ("orders", utc("2025-01-01 01:00"), 5.0),
    ]


def test_header_names_are_case_insensitive_and_stripped(tmp_path: Path) -> None:
    wide = write_csv(tmp_path, " DateTime , Sales \n2025-01-01,1\n", "wide.csv")
    long = write_csv(tmp_path, "METRIC,Ts,VALUE\nSales,2025-01-01,1\n", "long.csv")

    wide_result = read_observations_csv(wide)
    long_result = read_observations_csv(long)

    assert (wide_result.layout, long_result.layout) == ("wide", "long")
    assert observed(wide_result) == observed(long_result) == [("Sales", utc("2025-01-01"), 1.0)]


def test_the_first_timestamp_column_wins_and_the_others_are_kpis(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "time,date,sales\n2025-01-01,7,8\n")

    result = read_observations_csv(path)

    assert observed(result) == [
        ("date", utc("2025-01-01"), 7.0),
        ("sales", utc("2025-01-01"), 8.0),
    ]


def test_aware_timestamps_are_converted_to_utc_and_naive_ones_read_in_tz(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "kpi,date,value\n"
        "naive_winter,2025-01-15 12:00:00,1\n"
        "naive_summer,2025-07-15T12:00,2\n"
        "date_only,2025-01-15,3\n"
        "zulu,2025-01-15T12:00:00Z,4\n"
        "offset,2025-01-15T12:00:00+02:00,5\n"
        "compact_offset,2025-01-15T12:00:00-0530,6\n"
        "utc_word,2025-01-15 12:00:00 UTC,7\n",
    )

    in_utc = read_observations_csv(path)
    in_berlin = read_observations_csv(path, tz="Europe/Berlin")

    def ts_by_kpi(result: IngestResult) -> dict[str, pd.Timestamp]:
        return dict(zip(result.observations["kpi"], result.observations["ts"]))

    assert ts_by_kpi(in_utc) == {
        "naive_winter": utc("2025-01-15 12:00"),
        "naive_summer": utc("2025-07-15 12:00"),
        "date_only": utc("2025-01-15 00:00"),
        "zulu": utc("2025-01-15 12:00"),
        "offset": utc("2025-01-15 10:00"),
        "compact_offset": utc("2025-01-15 17:30"),
        "utc_word": utc("2025-01-15 12:00"),
    }
    assert ts_by_kpi(in_berlin) == {
        "naive_winter": utc("2025-01-15 11:00"),  # CET = UTC+1
        "naive_summer": utc("2025-07-15 10:00"),  # CEST = UTC+2
        "date_only": utc("2025-01-14 23:00"),
        "zulu": utc("2025-01-15 12:00"),
        "offset": utc("2025-01-15 10:00"),
        "compact_offset": utc("2025-01-15 17:30"),
        "utc_word": utc("2025-01-15 12:00"),
    }


def test_mixed_offsets_and_a_bad_timestamp_do_not_spoil_the_other_rows(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "date,sales\n"
        "2025-01-01T00:00:00+01:00,1\n"
        "2025-01-01T00:00:00-05:00,2\n"
        "2025-01-01T00:00:00,3\n"
        "2025-01-01T00:00:00+99:99,4\n"
        "01/02/2025,5\n",
    )

    result = read_observations_csv(path)

    assert observed(result) == [
        ("sales", utc("2024-12-31 23:00"), 1.0),
        ("sales", utc("2025-01-01 00:00"), 3.0),
        ("sales", utc("2025-01-01 05:00"), 2.0),
    ]
    assert reasons(result) == [
        "unparsable timestamp '2025-01-01T00:00:00+99:99'",
        "unparsable timestamp '01/02/2025'",
    ]


def test_local_times_that_do_not_exist_or_repeat_are_rejected(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "date,sales\n2025-03-30 01:30,1\n2025-03-30 02:30,2\n2025-10-26 02:30,3\n2025-10-26 02:30+01:00,4\n",
    )

    in_berlin = read_observations_csv(path, tz="Europe/Berlin")
    in_utc = read_observations_csv(path)

    assert observed(in_berlin) == [
        ("sales", utc("2025-03-30 00:30"), 1.0),
        ("sales", utc("2025-10-26 01:30"), 4.0),
    ]
    assert [(r.line, r.reason) for r in in_berlin.rejections] == [
        (3, "nonexistent local time '2025-03-30 02:30' in Europe/Berlin (DST gap)"),
        (4, "ambiguous local time '2025-10-26 02:30' in Europe/Berlin (DST overlap)"),
    ]
    assert len(in_utc.observations) == 4
    assert in_utc.rejections == []


def test_each_bad_long_row_is_rejected_with_its_reason_and_raw_cells(tmp_path: Path) -> None:
    long_name = "k" * 201
    path = write_csv(
        tmp_path,
        "kpi,timestamp,value\n"
        "sales,2025-01-01,1e3\n"
        "sales,2025-01-02, 12.5 \n"
        "sales,2025-01-03,-3\n"
        "sales,yesterday,1\n"
        "sales,,1\n"
        "sales,2025-01-04,abc\n"
        'sales,2025-01-05,"1,234"\n'
        "sales,2025-01-06,NaN\n"
        "sales,2025-01-07,-inf\n"
        "sales,2025-01-08,\n"
        " ,2025-01-09,1\n"
        f"{long_name},2025-01-10,1\n"
        '"sa\tles",2025-01-11,1\n',
    )

    result = read_observations_csv(path)

    assert observed(result) == [
        ("sales", utc("2025-01-01"), 1000.0),
        ("sales", utc("2025-01-02"), 12.5),
        ("sales", utc("2025-01-03"), -3.0),
    ]
    assert [(r.line, r.reason) for r in result.rejections] == [
        (5, "unparsable timestamp 'yesterday'"),
        (6, "empty timestamp"),
        (7, "non-numeric value 'abc'"),
        (8, "non-numeric value '1,234'"),
        (9, "value is NaN"),
        (10, "value is infinite"),
        (11, "empty value"),
        (12, "empty KPI name"),
        (13, f"KPI name longer than 200 characters: '{'k' * 40}...'"),
        (14, "KPI name contains control characters: 'sa\\tles'"),
    ]
    raw_by_line = {rejection.line: rejection.raw for rejection in result.rejections}
    assert raw_by_line[8] == {"kpi": "sales", "timestamp": "2025-01-05", "value": "1,234"}
    assert raw_by_line[11] == {"kpi": "sales", "timestamp": "2025-01-08", "value": ""}


def test_wide_bad_timestamp_rejects_the_row_once_and_bad_cells_individually(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path,
        "date,sales,visits,orders\n"
        "2025-01-01,1,10,\n"
        "not a date,2,20,x\n"
        ",3,,\n"
        "2025-01-02,oops,30,\n"
        "2025-01-03,,,\n"
        ",,,\n",
    )

    result = read_observations_csv(path)

    assert observed(result) == [
        ("sales", utc("2025-01-01"), 1.0),
        ("visits", utc("2025-01-01"), 10.0),
        ("visits", utc("2025-01-02"), 30.0),
    ]
    assert result.rejections == [
        Rejection(
            3,
            {"date": "not a date", "sales": "2", "visits": "20", "orders": "x"},
            "unparsable timestamp 'not a date'",
        ),
        Rejection(4, {"date": "", "sales": "3", "visits": "", "orders": ""}, "empty timestamp"),
        Rejection(5, {"date": "2025-01-02", "sales": "oops"}, "non-numeric value 'oops'"),
    ]


def test_conflicting_duplicates_are_all_rejected_and_exact_ones_collapse(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "kpi,timestamp,value\n"
        "sales,2025-01-01T00:00:00Z,1\n"
        "sales,2025-01-01T01:00:00+01:00,1.0\n"
        "sales,2025-01-01 00:00:00,1\n"
        "orders,2025-01-01,5\n"
        "orders,2025-01-01T00:00:00Z,6\n"
        "orders,2025-01-02,7\n",
    )

    result = read_observations_csv(path)

    assert observed(result) == [
        ("orders", utc("2025-01-02"), 7.0),
        ("sales", utc("2025-01-01"), 1.0),
    ]
    assert result.duplicates_collapsed == 2
    conflict = "conflicting duplicate for (orders, 2025-01-01T00:00:00+00:00): values 5.0 vs 6.0"
    assert [(r.line, r.reason) for r in result.rejections] == [(5, conflict), (6, conflict)]


def test_rows_with_the_wrong_number_of_fields_are_rejected_alone(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "date,sales,visits\n2025-01-01,1,2\n2025-01-02,3\n2025-01-03,4,5,6\n2025-01-04,7,8\n",
    )

    result = read_observations_csv(path)

    assert len(result.observations) == 4
    assert result.rejections == [
        Rejection(3, {"date": "2025-01-02", "sales": "3"}, "expected 3 fields, got 2"),
        Rejection(
            4,
            {"date": "2025-01-03", "sales": "4", "visits": "5", "column 4": "6"},
            "expected 3 fields, got 4",
        ),
    ]


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        '\nkpi,timestamp,value\n"sales",2025-01-01,1\n\n"multi\nline",2025-01-01,2\nsales,2025-01-02,bad\n',
    )

    result = read_observations_csv(path)

    assert [(r.line, r.reason) for r in result.rejections] == [
        (5, "KPI name contains control characters: 'multi\\nline'"),
        (7, "non-numeric value 'bad'"),
    ]


def test_utf8_bom_and_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffDate,Sales\r\n2025-01-01,1\r\n".encode())

    assert observed(read_observations_csv(path)) == [("Sales", utc("2025-01-01"), 1.0)]


def test_header_only_file_gives_no_observations(tmp_path: Path) -> None:
    result = read_observations_csv(write_csv(tmp_path, "date,sales\n"))

    assert result.observations.empty
    assert list(result.observations.columns) == ["kpi", "ts", "value"]
    assert result.observations["ts"].dtype == "datetime64[us, UTC]"
    assert result.rejections == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n  \n\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file, not CSV text"),
        ("date,ventes\n2025-01-01,1\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        (b"day,sales\n2025-01-01,1\n", "no timestamp column; expected one of date, timestamp"),
        (b"date\n2025-01-01\n", "no value columns, only the timestamp column 'date'"),
        (b"date,,visits\n2025-01-01,1,2\n", "header column 2 has no name"),
        (b"date,sales,sales\n2025-01-01,1,2\n", "duplicate column name(s) in the header: sales"),
        (b"kpi,date,amount\nsales,2025-01-01,1\n", "unknown layout"),
    ],
)
def test_file_level_problems_raise_ingest_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.csv"
    path.write_bytes(content)

    with pytest.raises(IngestError, match=re.escape(message)) as error:
        read_observations_csv(path)

    assert "\n" not in str(error.value)


def test_missing_file_and_unknown_time_zone_raise_ingest_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(IngestError, match="file not found: .*nope.csv"):
        read_observations_csv(missing)

    good = write_csv(tmp_path, "date,sales\n2025-01-01,1\n")
    with pytest.raises(IngestError, match="unknown time zone 'Mars/Olympus'"):
        read_observations_csv(good, tz="Mars/Olympus")
    with pytest.raises(IngestError, match="unknown time zone"):
        validate_records([], tz="")


def test_validate_records_applies_the_csv_rules(tmp_path: Path) -> None:
    rows = [
        ("sales", "2025-01-01 00:00", "1"),
        ("sales", "2025-01-01T00:00:00+01:00", "1"),
        ("sales", "2025-03-30 02:30", "2"),
        ("sales", "garbage", "3"),
        ("sales", "2025-01-03", "1,5"),
        ("", "2025-01-04", "4"),
        ("orders", "2025-01-05", "5"),
        ("orders", "2025-01-05", "6"),
    ]
    path = write_csv(tmp_path, "kpi,timestamp,value\n" + "".join(f'{k},{t},"{v}"\n' for k, t, v in rows))

    from_file = read_observations_csv(path, tz="Europe/Berlin")
    from_records = validate_records([{"kpi": k, "timestamp": t, "value": v} for k, t, v in rows], tz="Europe/Berlin")

    pd.testing.assert_frame_equal(from_records.observations, from_file.observations)
    assert observed(from_records) == [("sales", utc("2024-12-31 23:00"), 1.0)]
    assert from_records.duplicates_collapsed == from_file.duplicates_collapsed == 1
    assert reasons(from_records) == reasons(from_file)
    # A record's line is its 1-based position; in the file the header takes line 1.
    assert [r.line for r in from_records.rejections] == [r.line - 1 for r in from_file.rejections]
    assert from_records.layout == "long"


def test_validate_records_accepts_python_values_and_rejects_missing_ones() -> None:
    result = validate_records(
        [
            {"kpi": "sales", "timestamp": pd.Timestamp("2025-01-01", tz="UTC"), "value": 12},
            {"kpi": "sales", "timestamp": "2025-01-02T00:00:00Z", "value": 2.5},
            {"kpi": "sales", "timestamp": "2025-01-03T00:00:00Z", "value": float("nan")},
            {"kpi": "sales", "timestamp": "2025-01-04T00:00:00Z", "value": float("inf")},
            {"kpi": "sales", "timestamp": "2025-01-05T00:00:00Z", "value": True},
            {"kpi": "sales", "timestamp": None, "value": 1},
            {"timestamp": "2025-01-06T00:00:00Z", "value": 1, "note": "x"},
        ]
    )

    assert observed(result) == [
        ("sales", utc("2025-01-01"), 12.0),
        ("sales", utc("2025-01-02"), 2.5),
    ]
    assert [(r.line, r.reason) for r in result.rejections] == [
        (3, "value is NaN"),
        (4, "value is infinite"),
        (5, "non-numeric value 'True'"),
        (6, "empty timestamp"),
        (7, "empty KPI name"),
    ]
    assert result.rejections[-1].raw == {
        "timestamp": "2025-01-06T00:00:00Z",
        "value": "1",
        "note": "x",
    }


def test_timestamps_outside_the_plausible_range_are_rejected_on_both_paths(tmp_path: Path) -> None:
    now = pd.Timestamp.now("UTC")
    rows = [
        ("sales", "0001-01-01T00:00:00Z", "outside the plausible years 1900 to 2199"),
        ("sales", "1899-12-31T23:59:59Z", "outside the plausible years 1900 to 2199"),
        ("sales", "9999-12-31T23:00:00Z", "outside the plausible years 1900 to 2199"),
        ("sales", "2199-12-31T23:00:00Z", "more than 7 days ahead of now"),
        ("sales", (now + pd.Timedelta(days=8)).isoformat(), "more than 7 days ahead of now"),
        ("sales", "1900-01-01T00:00:00Z", None),
        ("sales", (now + pd.Timedelta(days=6)).isoformat(), None),
    ]
    path = write_csv(tmp_path, "kpi,timestamp,value\n" + "".join(f"{k},{t},1\n" for k, t, _ in rows))

    for result in (
        read_observations_csv(path),
        validate_records([{"kpi": k, "timestamp": t, "value": 1} for k, t, _ in rows]),
    ):
        assert len(result.observations) == 2
        rejected = [(r.raw["timestamp"], r.reason) for r in result.rejections]
        assert [timestamp for timestamp, _ in rejected] == [t for _, t, why in rows if why]
        for (timestamp, reason), why in zip(rejected, [why for *_, why in rows if why]):
            assert reason.startswith(f"timestamp '{timestamp}' {why}")


def test_wide_rows_with_an_implausible_timestamp_are_rejected_once(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "date,sales,visits\n9999-01-01,1,2\n2025-01-01,3,4\n")

    result = read_observations_csv(path)

    assert len(result.observations) == 2
    assert [(r.line, r.raw) for r in result.rejections] == [(2, {"date": "9999-01-01", "sales": "1", "visits": "2"})]


def test_the_plausible_range_is_configurable() -> None:
    settings = Settings(ingest_earliest_year=2000, ingest_latest_year=2100, ingest_max_ahead="P400D")
    times = PlausibleTimes.from_settings(settings)
    soon = (pd.Timestamp.now("UTC") + pd.Timedelta(days=300)).isoformat()
    records = [{"kpi": "sales", "timestamp": t, "value": 1} for t in ("1999-12-31", "2000-01-01", soon)]

    result = validate_records(records, times=times)

    assert len(result.observations) == 2
    assert reasons(result) == ["timestamp '1999-12-31' outside the plausible years 2000 to 2100"]
    with pytest.raises(ValueError, match="KPI_INGEST_EARLIEST_YEAR"):
        Settings(ingest_earliest_year=2101, ingest_latest_year=2100)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_a_last_line_without_a_line_ending_is_rejected_as_maybe_half_written(tmp_path: Path, ending: str) -> None:
    # A writer appending "sales,2025-01-01T02:00:00Z,1692.25" was read after "...,1692".
    lines = ["kpi,timestamp,value", "sales,2025-01-01T00:00:00Z,10", "sales,2025-01-01T01:00:00Z,11"]
    partial = write_csv(tmp_path, ending.join([*lines, "sales,2025-01-01T02:00:00Z,1692"]))
    complete = write_csv(tmp_path, ending.join([*lines, ""]), name="complete.csv")

    result = read_observations_csv(partial)

    assert [value for *_, value in observed(result)] == [10.0, 11.0]
    assert [(r.line, r.raw["value"], r.reason) for r in result.rejections] == [(4, "1692", UNTERMINATED_LAST_LINE)]
    assert read_observations_csv(complete).rejections == []


def test_a_ragged_unterminated_last_line_keeps_its_width_reason(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "kpi,timestamp,value\nsales,2025-01-01T00:00:00Z,10\nsales,2025-01")

    result = read_observations_csv(path)

    assert len(result.observations) == 1
    assert reasons(result) == ["expected 3 fields, got 2"]


def test_a_year_of_hourly_wide_data_parses_quickly(tmp_path: Path) -> None:
    kpis = ["sales", "revenue", "sessions", "orders", "conversion_rate"]
    hours = pd.date_range("2024-01-01", periods=8760, freq="h", tz="UTC")
    values = np.random.default_rng(0).normal(100, 10, size=(len(hours), len(kpis))).round(2)
    frame = pd.DataFrame(values, columns=kpis).assign(date=hours.strftime("%Y-%m-%dT%H:%M:%SZ"))
    path = tmp_path / "kpi_data.csv"
    frame[["date", *kpis]].to_csv(path, index=False)

    started = time.perf_counter()
    result = read_observations_csv(path)
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0
    assert len(result.observations) == 8760 * 5
    assert result.rejections == []
    orders = result.observations[result.observations["kpi"] == "orders"]
    assert orders["value"].to_numpy() == pytest.approx(values[:, 3])
    assert orders["ts"].tolist() == hours.tolist()
