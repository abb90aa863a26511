"""CLI commands of automation and alerting: ``backfill`` and ``silence``.

``kpi_pipeline.cli`` calls ``register(app)`` once its own helpers exist; they are imported at
that point, not at import time, so this module and the CLI never import each other half-made.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer


def register(app: typer.Typer) -> None:
    """Add ``backfill`` and ``silence`` to ``app`` (the ``kpi-pipeline`` CLI)."""
    from kpi_pipeline.cli import _friendly_errors

    app.command()(_friendly_errors(backfill))
    app.command()(_friendly_errors(silence))


def backfill(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="First timestamp to score (ISO 8601; naive = UTC).",
                                       show_default=False)],
    until: Annotated[str | None, typer.Option(help="Last timestamp to score (ISO 8601; naive = "
                                              "UTC). Default: the newest observation.")] = None,
    kpi: Annotated[list[str] | None, typer.Option(help="Only this KPI; repeat for several.",
                                                  show_default=False)] = None,
    retrain_every: Annotated[str, typer.Option(
        help="Retrain after every step of this length (e.g. 1d, 12h), as the daily schedule would."
    )] = "1d",
    alert: Annotated[bool, typer.Option("--alert/--no-alert", help="Alert the anomalies found "
                                        "like new ones (default: record them silently).")] = False,
) -> None:
    """Train and score a historical range, e.g. after loading a year of history.

    The range is replayed as the schedules would have run it, without look-ahead. Its anomalies
    are recorded but, unless --alert, silenced, so loading history never floods anyone.
    """
    from kpi_pipeline import pipeline, store
    from kpi_pipeline.cli import _engine, console
    from kpi_pipeline.config import get_settings
    from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig

    engine = _engine(ctx)
    first = _utc(since)
    newest = store.load_observations(engine, kpis=kpi or None, since=first)["ts"].max()
    if pd.isna(newest):
        raise ValueError(f"no observations{' of ' + ', '.join(kpi) if kpi else ''} after {first}")
    last = min(_utc(until), newest) if until else newest
    if last < first:
        raise ValueError(f"--until ({last}) is before --since ({first})")
    settings = get_settings()
    if not (alert or settings.alert_on_history):
        # Silence only the range that exists now, so live points landing later still alert.
        for pattern in kpi or ["*"]:
            store.add_silence(engine, pattern, first, last, "backfill")
    config = DetectorConfig(prophet=ProphetConfig(holidays_country=settings.holiday_country))
    results = pipeline.backfill(
        engine, config, first, last, kpis=kpi or None, retrain_every=pd.Timedelta(retrain_every),
        progress=lambda line: console.print(line, markup=False),
    )
    scored = sum(r.scored for r in results)
    found = sum(r.anomalies for r in results)
    console.print(
        f"backfill {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC: {len(results)} KPIs, "
        f"{scored} points scored, {found} anomalous"
        + ("" if alert or settings.alert_on_history else " (recorded without alerts)")
    )


def silence(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name or glob pattern ('sales*', '*').",
                                       show_default=False)],
    until: Annotated[str, typer.Option(help="End of the silence (ISO 8601; naive = UTC), or a "
                                       "duration from now such as 2h or 3d.",
                                       show_default=False)],
    since: Annotated[str | None, typer.Option(help="Start (ISO 8601). Default: now.")] = None,
    reason: Annotated[str, typer.Option(help="Why, shown with each silenced alert.")] = "silenced",
) -> None:
    """Send no alerts for anomalies of matching KPIs in a time window (they are still recorded)."""
    from kpi_pipeline import store
    from kpi_pipeline.cli import _engine, console

    now = pd.Timestamp.now("UTC")
    start = _utc(since) if since else now
    end = _end_of(until, now)
    suppressed = store.add_silence(_engine(ctx), kpi, start, end, reason)
    console.print(
        f"silenced {kpi} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
        f"({suppressed} pending alerts suppressed)",
        markup=False,
    )


def _utc(text: str) -> pd.Timestamp:
    ts = pd.Timestamp(text)
    if pd.isna(ts):
        raise ValueError(f"not a timestamp: {text!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _end_of(text: str, now: pd.Timestamp) -> pd.Timestamp:
    """``text`` as a timestamp, or as a duration (``2h``, ``3d``) added to ``now``."""
    try:
        return now + pd.Timedelta(text)
    except ValueError:
        return _utc(text)
