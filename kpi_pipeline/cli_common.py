"""What every ``kpi-pipeline`` command shares: its consoles, its one-line errors, the database
it works on and checks of the KPI names it is given.

The command modules (``cli``, ``alerts.cli``, ``api.cli``, ``dashboard.cli``) import this module
and never each other, except that ``cli`` registers the others' commands on its app.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Iterable

import click
import pandas as pd
import sqlalchemy as sa
import typer
from rich.console import Console

from kpi_pipeline import pipeline, store
from kpi_pipeline.store import serving
from kpi_pipeline.config import get_settings
from kpi_pipeline.errors import first_line

# Piped or captured output (make run, CI logs) gets a wide table instead of rich's 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

CLOSE_NAMES = 5
"""Most known KPI names suggested for an unknown one."""


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with status 1."""
    errors.print(f"error: {message}", markup=False)
    raise typer.Exit(1)


def friendly_errors(command):
    """Turn any failure of ``command`` into one ``error:`` line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as error:
            fail(first_line(error))

    return wrapper


def database_url(ctx: typer.Context) -> str:
    """The ``--database-url`` of the command line (kept in ``ctx.obj``), else the configured one."""
    return ctx.obj or get_settings().resolved_database_url()


def open_engine(ctx: typer.Context) -> sa.Engine:
    """An engine on the command's database, with its schema up to date."""
    return pipeline.open_store(database_url(ctx))


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit to print."""
    return sa.make_url(url).render_as_string(hide_password=True)


def utc_timestamp(text: str) -> pd.Timestamp:
    """An ISO 8601 time given on the command line as aware UTC (naive = UTC)."""
    ts = pd.Timestamp(text)
    if pd.isna(ts):
        raise ValueError(f"not a timestamp: {text!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def require_known_kpis(engine: sa.Engine, kpis: Iterable[str]) -> None:
    """Fail, naming the closest known KPIs, if any of ``kpis`` has no observation, score or
    model (what the API answers 404 for).

    An unknown name is almost always a typo; answering it with an empty result would read as
    "nothing happened to that KPI".
    """
    # One indexed probe per name; the full list of names is read only to suggest some.
    unknown = [kpi for kpi in dict.fromkeys(kpis) if not serving.kpi_exists(engine, kpi)]
    if not unknown:
        return
    known = store.list_kpis(engine)
    close = sorted({name for kpi in unknown for name in difflib.get_close_matches(kpi, known, n=CLOSE_NAMES)})
    if close:
        hint = f"close names: {', '.join(close)}"
    elif known:
        more = ", ..." if len(known) > CLOSE_NAMES else ""
        hint = f"known KPIs: {', '.join(known[:CLOSE_NAMES])}{more}"
    else:
        hint = "the database has no KPIs yet (kpi-pipeline ingest FILE loads some)"
    fail(f"unknown KPI {', '.join(map(repr, unknown))}; {hint}")
