"""``kpi-pipeline api`` and ``bench-api`` (kpi_pipeline/api/cli.py)."""

from __future__ import annotations

import os

import pytest
import uvicorn
from typer.testing import CliRunner

from kpi_pipeline.api import cli as api_cli
from kpi_pipeline.cli import app
from kpi_pipeline.config import get_settings


@pytest.fixture
def served(monkeypatch) -> dict:
    """What uvicorn was asked to run, instead of running it."""
    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **options: calls.update(target=target, **options))
    for name in ("KPI_DATABASE_URL", "KPI_API_PORT", "KPI_API_WORKERS", "KPI_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    yield calls
    get_settings.cache_clear()


def test_api_serves_the_app_factory_on_the_given_database_with_configured_defaults(served, monkeypatch, sqlite_url):
    monkeypatch.setenv("KPI_API_WORKERS", "3")

    result = CliRunner().invoke(app, ["--database-url", sqlite_url, "api", "--port", "9123"])

    assert result.exit_code == 0, result.output
    assert f"database: {sqlite_url}" in result.output
    assert served["target"] == "kpi_pipeline.api.app:create_app" and served["factory"]
    assert (served["host"], served["port"], served["workers"]) == ("127.0.0.1", 9123, 3)
    assert served["access_log"] is False
    # Worker processes build their app from the environment.
    assert os.environ["KPI_DATABASE_URL"] == sqlite_url
    monkeypatch.delenv("KPI_DATABASE_URL")


def test_bench_api_forwards_its_options_to_the_benchmark_script(monkeypatch):
    commands = []

    class Done:
        returncode = 0

    monkeypatch.setattr(api_cli.subprocess, "run", lambda command: commands.append(command) or Done)

    result = CliRunner().invoke(app, ["bench-api", "--duration", "3", "--kpis", "10"])

    assert result.exit_code == 0, result.output
    assert commands[0][1:] == [str(api_cli.BENCHMARK_SCRIPT), "--duration", "3", "--kpis", "10"]
    assert api_cli.BENCHMARK_SCRIPT.is_file()
