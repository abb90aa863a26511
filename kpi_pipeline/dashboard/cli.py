"""``kpi-pipeline dashboard``: serve the Streamlit dashboard on the configured database."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kpi_pipeline.cli_common import database_url, masked
from kpi_pipeline.config import get_settings

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501


def register(app: typer.Typer) -> None:
    """Add the ``dashboard`` command to the ``kpi-pipeline`` CLI."""
    app.command()(dashboard)


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = DEFAULT_PORT,
    address: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    backtest_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where `evaluate --out` results live. Default: KPI_BACKTEST_DIR, else out/.", show_default=False
        ),
    ] = None,
) -> None:
    """Serve the dashboard: every KPI with its expected band, its anomalies and triage."""
    settings = get_settings()
    # The main callback keeps --database-url in ctx.obj; Streamlit runs in a new process, so
    # the choice travels in the environment the settings are read from.
    url = database_url(ctx)
    env = {**os.environ, "KPI_DATABASE_URL": url}
    env["KPI_BACKTEST_DIR"] = str((backtest_dir or settings.backtest_dir).resolve())
    shown = "localhost" if address in {"127.0.0.1", "0.0.0.0"} else address
    typer.echo(f"dashboard on http://{shown}:{port} for {masked(url)} (Ctrl+C stops it)")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--theme.base",
        "light",
        "--client.toolbarMode",
        "viewer",
    ]
    sys.stdout.flush()
    # Become the server: Ctrl+C and a supervisor's signals reach Streamlit directly.
    os.execve(sys.executable, command, env)
