"""The model page (kpi_pipeline/dashboard/views/model.py): versions, Prophet components and
backtests."""

import json

import pandas as pd
import pytest

from kpi_pipeline import pipeline, store
from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline_tests.dashboard import seed
from kpi_pipeline_tests.dashboard.helpers import metrics, plotly_traces, texts
from kpi_pipeline_tests.defs.synthetic import hourly_kpis


def test_model_page_shows_training_metrics_and_versions(open_page, seeded_pg):
    app = open_page(seeded_pg, "model", kpi="orders")

    assert app.title[0].value == "Models of orders"
    tiles = metrics(app)
    assert tiles["Model versions"] == "1"
    assert tiles["Points in newest model"] == "1,416"
    assert tiles["Residual scale"] == "0.031"
    [versions] = app.dataframe
    row = versions.value.iloc[0]
    assert row["Version"] == seed.VERSION and row["In-sample MAE"] == pytest.approx(0.024)
    # The seed stores no artifacts, so there is nothing to decompose; and no backtest ran.
    info = texts(app.info)
    assert any("artifacts of version" in text for text in info)
    assert any("No backtest of orders" in text for text in info)


def test_prophet_components_of_a_trained_model(open_page, sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    store.upsert_observations(engine, hourly_kpis(days=4), "test")
    cleaned, _ = pipeline.load_cleaned(engine)
    # Three days of history: enough for Prophet to fit a daily cycle.
    config = DetectorConfig(min_train_points=72)
    [orders, _sessions] = pipeline.train_models(engine, cleaned, config)
    engine.dispose()

    app = open_page(sqlite_url, "model", kpi="orders")

    assert metrics(app)["Model versions"] == str(len(orders.versions))
    assert app.selectbox(key="model_version").value == orders.versions[-1]
    traces = plotly_traces(app, index=len(app.get("plotly_chart")) - 1)
    assert {"trend", "daily"} <= set(traces)
    daily = traces["daily"]["y"]
    # A daily cycle of +-30 % around the level, shown as a percentage in log space.
    assert max(daily) == pytest.approx(30, abs=8) and min(daily) == pytest.approx(-30, abs=8)
    assert len(traces["trend"]["x"]) == 14 * 24 + 1


def test_backtest_results_are_found_under_the_backtest_directory(open_page, seeded_sqlite, tmp_path):
    run = tmp_path / "backtests" / "sample"
    run.mkdir(parents=True)
    summary = {
        "corpus": "dataset/kpi_data.csv",
        "events": {"precision": 1.0, "recall": 0.9, "f1": 0.947, "tp_events": 27, "fn_events": 3, "fp_events": 0},
        "per_kpi": {
            "orders": {"precision": 0.8, "recall": 0.5, "f1": 0.615, "tp_events": 4, "fn_events": 4, "fp_events": 1}
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame(
        {
            "timestamp": ["2025-03-01 00:00:00", "2025-03-01 01:00:00"],
            "value": [1.0, 9.0],
            "anomaly_score": [0.1, 0.9],
            "is_anomaly": [0, 1],
            "alert": [0, 1],
        }
    ).to_csv(run / "orders.csv", index=False)

    app = open_page(seeded_sqlite, "model", backtest_dir=tmp_path / "backtests", kpi="orders")

    tiles = metrics(app)
    assert tiles["Precision (orders alone)"] == "0.800"
    assert tiles["Recall (orders alone)"] == "0.500"
    assert tiles["Incidents caught / missed / false"] == "4/4/1"
    assert plotly_traces(app, index=-1)["flagged"]["y"] == [9.0]

    other = open_page(seeded_sqlite, "model", backtest_dir=tmp_path / "backtests", kpi="sales")
    assert any("No backtest of sales" in text for text in texts(other.info))


def test_kpi_without_models_says_so(open_page, sqlite_url):
    engine = store.make_engine(sqlite_url)
    store.migrate(engine)
    store.upsert_observations(engine, pd.DataFrame({"kpi": "fresh", "ts": [seed.END], "value": [3.0]}), "test")
    engine.dispose()

    app = open_page(sqlite_url, "model", kpi="fresh")

    assert any("No model is trained for fresh yet" in text for text in texts(app.info))


def test_empty_database_explains_how_to_load_data(open_page, sqlite_url):
    app = open_page(sqlite_url, "model")
    assert any("No KPIs in this database yet" in text for text in texts(app.info))


def test_model_page_shows_the_kpis_parameters_and_which_are_used(open_page, seeded_sqlite):
    engine = store.make_engine(seeded_sqlite)
    store.save_tuned_parameters(
        engine,
        "orders",
        {"prophet.changepoint_prior_scale": 0.2, "prophet.seasonality_mode": "additive"},
        objective="forecast_mae",
        objective_value=1.25,
        default_value=2.5,
        trials=9,
        pruned_trials=4,
    )
    store.pin_parameters(engine, "orders", {"prophet.seasonality_mode": "multiplicative"})
    engine.dispose()

    app = open_page(seeded_sqlite, "model", kpi="orders")

    table = next(frame.value for frame in app.dataframe if "Parameter" in frame.value)
    used = {(row.Parameter, row.Value, row.Source) for row in table.itertuples() if row.Used}
    assert used == {
        ("prophet.changepoint_prior_scale", "0.2", "tuned"),
        ("prophet.seasonality_mode", "multiplicative", "pinned"),
    }
    assert any(
        "forecast_mae 2.5 with the defaults, 1.25 tuned" in text and "9 trials (4 pruned)" in text
        for text in texts(app.caption)
    )


def test_model_page_says_when_a_kpi_trains_with_the_defaults(open_page, seeded_sqlite):
    app = open_page(seeded_sqlite, "model", kpi="orders")
    assert any("orders trains with the default parameters" in text for text in texts(app.caption))
