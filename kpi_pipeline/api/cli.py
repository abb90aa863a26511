"""``kpi-pipeline api`` and ``kpi-pipeline bench-api``: registered on the main CLI by ``register``.

FastAPI and uvicorn are imported when a command runs, so the other commands start fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from kpi_pipeline.cli_common import console, database_url, friendly_errors, masked
from kpi_pipeline.config import PROJECT_ROOT, get_settings

BENCHMARK_SCRIPT = PROJECT_ROOT / "benchmarks" / "bench_api.py"

WORKER_STARTUP_TIMEOUT_S = 60

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict:
    """Uvicorn's own loggers plus ours (``kpi_pipeline.api``: access lines with request IDs)."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "kpi_pipeline")
        },
    }


def serve(database_url: str, host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Run the API with uvicorn; unset options come from the configuration."""
    import uvicorn

    # Each worker process builds its app from the environment, so hand it the database there.
    os.environ["KPI_DATABASE_URL"] = database_url
    get_settings.cache_clear()
    settings = get_settings()
    uvicorn.run(
        "kpi_pipeline.api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers or settings.api_workers,
        log_config=log_config(log_level),
        log_level=log_level,
        access_log=False,  # ours (kpi_pipeline.api.access) carries the request ID
        server_header=False,
        # A worker imports Prophet and scikit-learn before it can answer the supervisor's
        # pings: several seconds when the workers start together on a small machine.
        timeout_worker_healthcheck=WORKER_STARTUP_TIMEOUT_S,
    )


def register(app: typer.Typer) -> None:
    """Add the API commands to the ``kpi-pipeline`` app."""

    @app.command()
    @friendly_errors
    def api(
        ctx: typer.Context,
        host: Annotated[
            str | None, typer.Option(help="Address to listen on. Default: KPI_API_HOST (127.0.0.1).")
        ] = None,
        port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port. Default: KPI_API_PORT (8000).")] = None,
        workers: Annotated[
            int | None, typer.Option(min=1, help="Worker processes. Default: KPI_API_WORKERS (1).")
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Serve the HTTP API: latest scores, anomalies, ingestion, real-time scoring.

        Keys come from KPI_API_KEYS (comma-separated); OpenAPI docs are at /docs.
        """
        url = database_url(ctx)
        console.print(f"database: {masked(url)}", markup=False)
        serve(url, host, port, workers, log_level)

    @app.command(
        "bench-api",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def bench_api(ctx: typer.Context) -> None:
        """Load-test the API on a scratch Postgres database (see bench-api --help).

        Runs benchmarks/bench_api.py, passing every option through.
        """
        if not BENCHMARK_SCRIPT.is_file():
            console.print(f"error: {BENCHMARK_SCRIPT} not found: bench-api needs a source checkout", markup=False)
            raise typer.Exit(1)
        completed = subprocess.run([sys.executable, str(BENCHMARK_SCRIPT), *ctx.args])
        raise typer.Exit(completed.returncode)
