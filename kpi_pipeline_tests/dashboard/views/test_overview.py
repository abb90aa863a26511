"""The overview page (kpi_pipeline/dashboard/views/overview.py) on seeded databases."""

import pandas as pd
import pytest

from kpi_pipeline import derived, store
from kpi_pipeline.dashboard import data
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.dashboard.helpers import assert_no_exception, metrics, select_rows, texts


def _expected_counts(kpi: seed.SeedKpi) -> tuple[int, int]:
    """Anomalies of a seed KPI in the 24 h and 7 days up to the seed's newest point."""
    hours = [incident.hours_before_end for incident in kpi.incidents]
    return sum(h < 24 for h in hours), sum(h < 24 * 7 for h in hours)


def test_overview_lists_every_kpi_with_its_latest_point_and_counts(open_page, seeded_pg):
    app = open_page(seeded_pg)

    table = app.dataframe[0].value.set_index("KPI")
    assert set(table.index) == {kpi.name for kpi in seed.KPIS}
    # Severity order: the KPIs whose newest point is anomalous come first, worst first.
    assert list(table.index[:2]) == ["orders", "revenue"]
    assert table.loc["orders", "Status"] == "anomalous · critical"
    assert table.loc["revenue", "Status"] == "anomalous · high"
    assert table.loc[seed.QUIET_KPI, "Status"] == "ok"
    for kpi in seed.KPIS:
        newest = seed.kpi_scores(kpi).iloc[-1]
        row = table.loc[kpi.name]
        assert row["Value"] == pytest.approx(newest["value"])
        assert row["Expected"] == pytest.approx(newest["expected"])
        assert (row["24 h"], row["7 d"]) == _expected_counts(kpi)
        assert len(row["Last 7 days"]) == 168  # one sparkline point per hour
    assert table.loc["orders", "Deviation"] == pytest.approx(90.0)
    assert table.loc["orders", "Last anomaly"] == "2025-03-31 23:00"
    assert table.loc[seed.QUIET_KPI, "Last anomaly"] == ""

    tiles = metrics(app)
    assert tiles["KPIs"] == str(len(seed.KPIS))
    assert tiles["Anomalous points, last 24 h"] == str(sum(_expected_counts(k)[0] for k in seed.KPIS))
    assert tiles["Anomalous points, last 7 days"] == str(sum(_expected_counts(k)[1] for k in seed.KPIS))
    assert not app.get("pagination")  # everything fits on one page


def test_search_and_sort_by_name(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite)
    app.selectbox[0].set_value("name").run()
    assert list(app.dataframe[0].value["KPI"]) == sorted(kpi.name for kpi in seed.KPIS)

    app.text_input[0].input("REV").run()
    assert list(app.dataframe[0].value["KPI"]) == ["revenue"]

    app.text_input[0].input("no such kpi").run()
    assert_no_exception(app)
    assert not app.dataframe
    assert any("No KPI name contains" in text for text in texts(app.info))


def test_recency_sort_puts_the_newest_anomaly_first(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite)
    app.selectbox[0].set_value("recency").run()
    shown = list(app.dataframe[0].value["KPI"])
    # orders and revenue both alert at the newest hour (ties by name), sessions 15 h before.
    assert shown[:3] == ["orders", "revenue", "sessions"]


def test_a_thousand_kpis_are_paginated(open_page, sqlite_url):
    names = [f"kpi_{number:04d}" for number in range(1000)]
    ts = pd.date_range(end=seed.END, periods=6, freq="h")
    scores = pd.DataFrame({"kpi": [name for name in names for _ in ts], "ts": list(ts) * len(names)}).assign(
        value=1.0, expected=1.0, score=0.1, is_anomaly=False
    )
    engine = store.make_engine(sqlite_url)
    store.migrate(engine)
    store.upsert_scores(engine, scores)
    engine.dispose()

    app = open_page(sqlite_url)

    assert len(app.dataframe[0].value) == 50
    [pages] = app.get("pagination")
    assert pages.num_pages == 20
    pages.set_value(20)
    app.run()
    assert list(app.dataframe[0].value["KPI"]) == names[-50:]


def test_selecting_a_row_opens_its_kpi_page(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite)
    select_rows(app, "overview_table", [0])
    assert_no_exception(app)
    assert app.title[0].value == "orders"
    assert app.selectbox(key="kpi").value == "orders"


def test_empty_database_explains_how_to_load_data(open_page, sqlite_url):
    app = open_page(sqlite_url)
    assert not app.dataframe
    assert any("No KPIs in this database yet" in text for text in texts(app.info))


def test_kpis_without_scores_are_listed_as_not_scored(open_page, sqlite_url):
    engine = store.make_engine(sqlite_url)
    store.migrate(engine)
    store.upsert_observations(engine, pd.DataFrame({"kpi": "fresh", "ts": [seed.END], "value": [3.0]}), "test")
    engine.dispose()

    app = open_page(sqlite_url)

    assert app.dataframe[0].value["Status"].tolist() == ["not scored yet"]
    assert any("Nothing is scored yet" in text for text in texts(app.caption))


def test_a_failing_kpi_is_named_with_its_reason_above_the_table(open_page, seeded_sqlite):
    assert not open_page(seeded_sqlite).warning  # nothing failing: no warning

    engine = store.make_engine(seeded_sqlite)
    store.record_kpi_outcomes(
        engine,
        "training",
        {"revenue": "RuntimeError: fit diverged"},
        ["revenue"],
        at=pd.Timestamp("2025-04-01 02:30", tz="UTC"),
    )
    engine.dispose()
    data.clear_caches()  # as the TTL would, later
    app = open_page(seeded_sqlite)

    [warning] = texts(app.warning)
    assert "1 KPI(s) failing" in warning
    assert "revenue" in warning and "training: RuntimeError: fit diverged" in warning
    assert "since 2025-04-01 02:30 UTC, 1 attempt(s)" in warning
    assert set(app.dataframe[0].value["KPI"]) == {kpi.name for kpi in seed.KPIS}


def test_outages_are_counted_apart_from_anomalies(open_page, seeded_sqlite):
    engine = store.make_engine(seeded_sqlite)
    # sales (no anomaly) stopped reporting 50 hours ago: one outage row, flagged gap.
    at = seed.END - 50 * seed.HOUR
    outage = seed.kpi_scores(next(k for k in seed.KPIS if k.name == seed.QUIET_KPI))
    outage = outage[outage["ts"] == at].assign(
        value=None,
        is_anomaly=True,
        severity="high",
        flagged_by="gap",
        score=0.7,
        event_id=f"{seed.QUIET_KPI}@{at.isoformat()}",
    )
    store.upsert_scores(engine, outage)
    engine.dispose()
    data.clear_caches()

    app = open_page(seeded_sqlite)

    table = app.dataframe[0].value.set_index("KPI")
    assert (table.loc[seed.QUIET_KPI, "7 d"], table.loc[seed.QUIET_KPI, "Outages 7 d"]) == (0, 1)
    assert table.loc["orders", "Outages 7 d"] == 0
    tiles = metrics(app)
    assert tiles["Anomalous points, last 7 days"] == str(sum(_expected_counts(k)[1] for k in seed.KPIS))
    assert any("outages (data missing), counted apart: 1" in text for text in texts(app.caption))


def test_a_kpi_that_stopped_reporting_is_named_above_the_table(open_page, seeded_sqlite):
    """Judged at the newest scored point, as the rest of the page: a KPI whose data ended 10
    hours before the others' is named with its last point; the others (all current) are not."""
    engine = store.make_engine(seeded_sqlite)
    derived.clean_new_observations(engine)
    assert not open_page(seeded_sqlite).warning  # every KPI reports up to the newest point
    ts = pd.date_range(seed.END - 60 * seed.HOUR, seed.END - 10 * seed.HOUR, freq="h")
    store.upsert_observations(engine, pd.DataFrame({"kpi": "pageviews", "ts": ts, "value": 3.0}), "test")
    derived.clean_new_observations(engine)
    engine.dispose()
    data.clear_caches()

    [warning] = texts(open_page(seeded_sqlite).warning)
    assert warning.startswith("1 KPI(s) stopped reporting: **pageviews**")
    assert f"no point since {(seed.END - 10 * seed.HOUR):%Y-%m-%d %H:%M}" in warning and "10 missing" in warning
