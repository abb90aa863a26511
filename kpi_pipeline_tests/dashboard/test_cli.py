"""``kpi-pipeline dashboard`` (kpi_pipeline/dashboard/cli.py) and the hint ``run`` ends with."""

import sys

from typer.testing import CliRunner

from kpi_pipeline.cli import app
from kpi_pipeline.dashboard import cli as dashboard_cli
from kpi_pipeline_tests.defs.synthetic import hourly_kpis, to_wide_csv


def test_dashboard_serves_the_app_on_the_chosen_port_and_database(monkeypatch, tmp_path):
    launched = {}
    monkeypatch.setattr(
        dashboard_cli.os,
        "execve",
        lambda path, argv, env: launched.update(path=path, argv=argv, env=env),
    )
    url = f"sqlite:///{tmp_path / 'kpi.db'}"

    result = CliRunner().invoke(
        app, ["--database-url", url, "dashboard", "--port", "8765", "--backtest-dir", str(tmp_path / "runs")]
    )

    assert result.exit_code == 0, result.output
    assert "http://localhost:8765" in result.output
    argv = launched["argv"]
    assert launched["path"] == sys.executable
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4] == str(dashboard_cli.APP)
    assert argv[argv.index("--server.port") + 1] == "8765"
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert launched["env"]["KPI_DATABASE_URL"] == url
    assert launched["env"]["KPI_BACKTEST_DIR"] == str(tmp_path / "runs")


def test_dashboard_help_lists_the_port_option():
    result = CliRunner().invoke(app, ["dashboard", "--help"])
    assert result.exit_code == 0 and "--port" in result.output


def test_run_ends_by_naming_the_dashboard_command(tmp_path):
    csv = tmp_path / "kpis.csv"
    csv.write_text(to_wide_csv(hourly_kpis(days=3)))
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'kpi.db'}"
    assert runner.invoke(app, ["--database-url", url, "ingest", str(csv)]).exit_code == 0

    result = runner.invoke(app, ["--database-url", url, "run"])

    assert result.exit_code == 0, result.output
    assert result.output.rstrip().splitlines()[-1] == ("open the dashboard: kpi-pipeline --database-url URL dashboard")
