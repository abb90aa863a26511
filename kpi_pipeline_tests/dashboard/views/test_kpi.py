"""The KPI page (kpi_pipeline/dashboard/views/kpi.py): chart, anomaly table and triage."""

import pandas as pd
import pytest

from kpi_pipeline import store
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.dashboard.helpers import (
    assert_no_exception,
    metrics,
    plotly_traces,
    select_rows,
    texts,
)

ORDERS = next(kpi for kpi in seed.KPIS if kpi.name == "orders")


def _incidents(kpi: seed.SeedKpi) -> pd.DataFrame:
    """The seed's anomalous points of ``kpi``, newest first."""
    scores = seed.kpi_scores(kpi)
    return scores[scores["is_anomaly"]].sort_values("ts", ascending=False, ignore_index=True)


def test_kpi_page_shows_values_band_and_anomalies(open_page, seeded_pg):
    app = open_page(seeded_pg, "kpi", kpi="orders")

    assert app.title[0].value == "orders"
    expected = _incidents(ORDERS)
    newest = expected.iloc[0]
    tiles = metrics(app)
    assert tiles["Latest value, Mar 31, 23:00"] == f"{newest['value']:,.4g}"
    assert tiles["Latest point"] == "Critical"
    assert tiles["Anomalous points in range"] == "3"  # all three incidents are in the last 14 days

    traces = plotly_traces(app)
    assert {"expected band", "expected", "actual", "critical", "high", "low"} <= set(traces)
    assert len(traces["actual"]["x"]) == 14 * 24 + 1
    assert traces["critical"]["y"] == [pytest.approx(newest["value"])]

    table = app.dataframe[0].value
    assert list(table["Severity"]) == list(expected["severity"])
    assert table["Value"].tolist() == pytest.approx(expected["value"].tolist())
    assert table["Expected"].tolist() == pytest.approx(expected["expected"].tolist())
    assert table["Deviation"].iloc[0] == pytest.approx(90.0)
    assert list(table["Flagged by"]) == list(expected["flagged_by"])
    assert list(table["Feedback"]) == ["", "", ""]


def test_time_range_and_severity_filter_narrow_the_table(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite, "kpi", kpi="orders")
    app.button_group(key="kpi_range").set_value("24 h").run()
    assert app.dataframe[0].value["Severity"].tolist() == ["critical"]
    assert len(plotly_traces(app)["actual"]["x"]) == 25

    app.button_group(key="kpi_range").set_value("All").run()
    app.selectbox(key="kpi_min_severity").set_value("high").run()
    assert app.dataframe[0].value["Severity"].tolist() == ["critical", "high"]


def test_custom_date_range(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite, "kpi", kpi="orders")
    app.button_group(key="kpi_range").set_value("Custom").run()
    day = (seed.END - pd.Timedelta(hours=30)).date()
    app.date_input[0].set_value((day, day)).run()

    assert_no_exception(app)
    assert app.dataframe[0].value["Severity"].tolist() == ["high"]
    assert len(plotly_traces(app)["actual"]["x"]) == 24


def test_marking_a_false_positive_writes_feedback(open_page, seeded_pg):
    app = open_page(seeded_pg, "kpi", kpi="orders")
    select_rows(app, "anomaly_table", [1])
    app.text_input(key="kpi_feedback_note").input("planned maintenance")
    app.button(key="label_false_positive").click().run()

    assert_no_exception(app)
    assert texts(app.success) == ["Recorded false positive for 1 point of orders."]
    engine = store.make_engine(seeded_pg)
    labelled = store.load_anomalies(engine, "orders").set_index("ts")
    engine.dispose()
    second = _incidents(ORDERS)["ts"].iloc[1]
    assert labelled.loc[second, "feedback"] == "false_positive"
    assert labelled.loc[second, "feedback_note"] == "planned maintenance"
    assert labelled["feedback"].notna().sum() == 1
    # The table and the chart show the label at once (the write cleared the cached reads).
    table = app.dataframe[0].value
    assert table["Feedback"].tolist() == ["", "false positive", ""]
    traces = set(plotly_traces(app))
    assert "false positive" in traces and "high" not in traces

    app.selectbox(key="kpi_feedback_filter").set_value("not labelled yet").run()
    assert len(app.dataframe[0].value) == 2


def test_true_positive_labels_every_selected_row(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite, "kpi", kpi="orders")
    select_rows(app, "anomaly_table", [0, 2])
    app.button(key="label_true_positive").click().run()

    engine = store.make_engine(seeded_sqlite)
    labels = store.load_anomalies(engine, "orders")["feedback"].tolist()
    engine.dispose()
    assert (labels[0], labels[2]) == ("true_positive", "true_positive")
    assert pd.isna(labels[1])


def test_kpi_without_anomalies_says_so(open_page, seeded_pg):
    app = open_page(seeded_pg, "kpi", kpi=seed.QUIET_KPI)

    assert app.title[0].value == seed.QUIET_KPI
    assert not app.dataframe
    assert any(f"No anomalies for {seed.QUIET_KPI} in this range" in t for t in texts(app.info))
    assert app.get("plotly_chart")  # its chart is still drawn


def test_kpi_without_scores_shows_its_values(open_page, sqlite_url):
    engine = store.make_engine(sqlite_url)
    store.migrate(engine)
    ts = pd.date_range(end=seed.END, periods=10, freq="h")
    store.upsert_observations(engine, pd.DataFrame({"kpi": "fresh", "ts": ts, "value": 5.0}), "t")
    engine.dispose()

    app = open_page(sqlite_url, "kpi", kpi="fresh")

    assert any("No point of fresh is scored yet" in text for text in texts(app.info))
    assert plotly_traces(app)["actual"]["y"] == [5.0] * 10


def test_empty_database_explains_how_to_load_data(open_page, sqlite_url):
    app = open_page(sqlite_url, "kpi")
    assert any("No KPIs in this database yet" in text for text in texts(app.info))
    assert not app.get("plotly_chart")


def test_kpi_page_shows_the_threshold_false_positives_raised(open_page, seeded_sqlite):
    from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
    from kpi_pipeline_tests.detection.synthetic import daily_sine

    engine = store.make_engine(seeded_sqlite)
    ts, values = daily_sine(24 * 10)
    detector = EnsembleDetector(DetectorConfig()).fit(ts, values)
    newest = _incidents(ORDERS).iloc[0]
    for kind, artifact in detector.to_artifacts().items():
        store.save_model(
            engine,
            kpi="orders",
            kind=kind,
            version="real",
            trained_at=pd.Timestamp.now("UTC"),
            train_start=ts[0],
            train_end=newest["ts"] + pd.Timedelta(days=365),  # the newest model
            n_points=len(ts),
            params=detector.config.to_dict(),
            metrics=detector.metrics_,
            artifact=artifact,
        )
    store.set_feedback(engine, "orders", _incidents(ORDERS).iloc[1]["ts"], "false_positive")
    engine.dispose()
    page = open_page(seeded_sqlite, "kpi", kpi="orders")
    [caption] = [text for text in texts(page.caption) if text.startswith("Anomaly threshold")]
    assert "from 1 false positive (at most 1.00)" in caption
    assert caption.startswith("Anomaly threshold: 3.50 + 0.2")
