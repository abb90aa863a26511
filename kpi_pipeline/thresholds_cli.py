"""CLI commands of feedback-adaptive thresholds: ``thresholds show`` and ``thresholds reset``;
registered on the ``kpi-pipeline`` app by ``register`` (docs/adaptive-thresholds.md)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli_common import console, friendly_errors, open_engine, require_known_kpis

thresholds = typer.Typer(
    help="Anomaly thresholds raised by analysts' false positives: show them, reset them.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``thresholds`` group to ``app`` (the ``kpi-pipeline`` CLI)."""
    app.add_typer(thresholds, name="thresholds")


@thresholds.command("show")
@friendly_errors
def show(
    ctx: typer.Context,
    kpis: Annotated[list[str] | None, typer.Argument(help="KPI names. Default: every trained KPI.")] = None,
) -> None:
    """Each KPI's threshold (surprise, -log10 tail probability): the model's, what false
    positives add (at the newest scored point), and the result."""
    engine = open_engine(ctx)
    if kpis:
        require_known_kpis(engine, kpis)
    found = pipeline.kpi_thresholds(engine, kpis or None)
    table = Table("kpi", "base", "raised by", "threshold", "false positives", "reset at")
    for row in found.values():
        table.add_row(
            row.kpi,
            f"{row.base:.2f}",
            f"{row.raised_by:+.2f} (cap {row.cap:.2f})",
            f"{row.effective:.2f}",
            str(row.false_positives),
            "" if row.reset_at is None else f"{row.reset_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@thresholds.command("reset")
@friendly_errors
def reset(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name.", show_default=False)],
) -> None:
    """Return a KPI's threshold to its model's: the false positives labelled so far stop raising
    it (they still shape training and silence their alerts); later ones raise it again."""
    engine = open_engine(ctx)
    require_known_kpis(engine, [kpi])
    at = store.reset_threshold(engine, kpi)
    console.print(f"reset the threshold of {kpi} at {at:%Y-%m-%d %H:%M:%S} UTC", markup=False)
