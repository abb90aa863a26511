"""CLI command of alerting: ``silence``; registered on the ``kpi-pipeline`` app by ``register``."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer

from kpi_pipeline import store
from kpi_pipeline.cli_common import console, friendly_errors, open_engine, utc_timestamp


def register(app: typer.Typer) -> None:
    """Add ``silence`` to ``app`` (the ``kpi-pipeline`` CLI)."""
    app.command()(friendly_errors(silence))


def silence(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name or glob pattern ('sales*', '*').", show_default=False)],
    until: Annotated[
        str,
        typer.Option(
            help="End of the silence (ISO 8601; naive = UTC), or a duration from now such as 2h or 3d.",
            show_default=False,
        ),
    ],
    since: Annotated[str | None, typer.Option(help="Start (ISO 8601). Default: now.")] = None,
    reason: Annotated[str, typer.Option(help="Why, shown with each silenced alert.")] = "silenced",
) -> None:
    """Send no alerts for anomalies of matching KPIs in a time window (they are still recorded)."""
    now = pd.Timestamp.now("UTC")
    start = utc_timestamp(since) if since else now
    end = _end_of(until, now)
    suppressed = store.add_silence(open_engine(ctx), kpi, start, end, reason)
    console.print(
        f"silenced {kpi} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
        f"({suppressed} pending alerts suppressed)",
        markup=False,
    )


def _end_of(text: str, now: pd.Timestamp) -> pd.Timestamp:
    """``text`` as a timestamp, or as a duration (``2h``, ``3d``) added to ``now``."""
    try:
        return now + pd.Timedelta(text)
    except ValueError:
        return utc_timestamp(text)
