"""``kpi-pipeline tune`` and ``kpi-pipeline params``, through typer's CliRunner on SQLite."""

import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline_tests.defs.synthetic import hourly_kpis


@pytest.fixture
def engine(sqlite_url):
    engine = pipeline.open_store(sqlite_url)
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    yield engine
    engine.dispose()


@pytest.fixture
def invoke(sqlite_url, engine):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["--database-url", sqlite_url, *map(str, args)])


def _one_line_error(result, expected: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr


@pytest.mark.parametrize("command", [["tune"], ["params"], ["params", "show"], ["params", "pin"], ["params", "unpin"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_tune_reports_progress_per_kpi_and_stores_the_parameters(invoke, engine):
    result = invoke("tune", "--kpi", "orders", "--trials", "2", "--budget-seconds", "600")

    assert result.exit_code == 0, result.output
    assert "[1/1] orders: trial 1: forecast_mae" in result.output
    assert "[1/1] orders: trial 2: " in result.output
    assert "tuned 1 of 1 KPIs" in result.output
    assert set(store.load_parameters(engine)) == {"orders"}
    shown = invoke("params", "show", "orders")
    assert shown.exit_code == 0 and "prophet.changepoint_prior_scale=" in shown.output and "tuned" in shown.output


def test_pin_show_and_unpin(invoke, engine):
    pinned = invoke("params", "pin", "orders", "prophet.seasonality_mode=multiplicative", "threshold=4")
    assert pinned.exit_code == 0, pinned.output
    assert store.load_parameters(engine) == {"orders": {"prophet.seasonality_mode": "multiplicative", "threshold": 4.0}}
    assert 'prophet.seasonality_mode="multiplicative"' in invoke("params", "show").output

    unpinned = invoke("params", "unpin", "orders", "threshold")
    assert unpinned.exit_code == 0 and "unpinned for orders: threshold" in unpinned.output
    assert store.load_parameters(engine) == {"orders": {"prophet.seasonality_mode": "multiplicative"}}
    assert invoke("params", "unpin", "orders").exit_code == 0
    assert "trains with the defaults" in invoke("params", "show", "orders").output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pin", "orders", "prophet.changepoint=0.1"], "unknown parameter 'prophet.changepoint'"),
        (["pin", "orders", "iforest.n_estimators=many"], "iforest.n_estimators must be int, not 'many'"),
        (["pin", "orders", "prophet.seasonality_mode=loud"], "must be 'additive' or 'multiplicative'"),
        (["pin", "orders", "threshold"], "expected key=value"),
        (["pin", "ordrs", "threshold=4"], "unknown KPI 'ordrs'; close names: orders"),
        (["unpin", "orders", "threshold"], "orders has no pinned threshold"),
        (["show", "ordrs"], "unknown KPI 'ordrs'"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(invoke, engine, args, expected):
    _one_line_error(invoke("params", *args), expected)
    assert store.load_parameters(engine) == {}


def test_tune_of_an_unknown_kpi_fails_before_tuning(invoke):
    _one_line_error(invoke("tune", "--kpi", "ordrs"), "unknown KPI 'ordrs'")
