"""CLI commands of per-KPI parameters: ``tune`` and ``params show|keys|pin|unpin``; registered
on the ``kpi-pipeline`` app by ``register``."""

from __future__ import annotations

import json
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from kpi_pipeline import store
from kpi_pipeline.cli_common import console, fail, friendly_errors, open_engine, require_known_kpis
from kpi_pipeline.detection.parameters import describe_type, parameter_types, parse_assignment
from kpi_pipeline.detection.tuning import TuningSettings
from kpi_pipeline.tune import run_config, tune_kpis

params_app = typer.Typer(
    name="params",
    no_args_is_help=True,
    help="Show, pin and unpin each KPI's detector parameters (tuned or pinned by hand).",
)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and the ``params`` group to ``app`` (the ``kpi-pipeline`` CLI)."""
    app.command()(friendly_errors(tune))
    app.add_typer(params_app)


def tune(
    ctx: typer.Context,
    kpi: Annotated[
        list[str] | None, typer.Option(help="Only this KPI; repeat for several. Default: every KPI.")
    ] = None,
    budget_seconds: Annotated[
        float, typer.Option(help="Time per KPI after which no new trial starts.", min=0)
    ] = TuningSettings.budget_seconds,
    trials: Annotated[
        int, typer.Option(help="Most trials per KPI (the first is the current configuration).", min=1)
    ] = TuningSettings.max_trials,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = TuningSettings.seed,
) -> None:
    """Search each KPI's Prophet and forest parameters on its own history and store them.

    The next training run uses them (docs/tuning.md). Pinned parameters are kept and not searched.
    """
    engine = open_engine(ctx)
    require_known_kpis(engine, kpi or [])
    settings = TuningSettings(budget_seconds=budget_seconds, max_trials=trials, seed=seed)
    results = tune_kpis(
        engine, run_config(), kpi or None, settings, progress=lambda line: console.print(line, markup=False)
    )
    if not results:
        fail("no KPIs to tune (kpi-pipeline ingest FILE loads some)")
    tuned = [r for r in results if r.status == "tuned"]
    better = [r for r in tuned if r.result is not None and r.result.improved]
    console.print(
        f"tuned {len(tuned)} of {len(results)} KPIs ({len(better)} better than their defaults on "
        "their folds); the next training run uses the parameters (kpi-pipeline params show)"
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        fail(f"{len(failed)} KPIs could not be tuned: {', '.join(r.kpi for r in failed)}")


@params_app.command("show")
@friendly_errors
def show(
    ctx: typer.Context,
    kpi: Annotated[str | None, typer.Argument(help="KPI name. Default: every KPI with parameters.")] = None,
) -> None:
    """Each KPI's stored parameters: tuned (with the objective) and pinned; pins win."""
    engine = open_engine(ctx)
    if kpi:
        require_known_kpis(engine, [kpi])
    rows = store.load_parameter_rows(engine, [kpi] if kpi else None)
    if rows.empty:
        console.print(f"no parameters stored{' for ' + kpi if kpi else ''}: every KPI trains with the defaults")
        return
    table = Table("kpi", "source", "parameters", "objective", "defaults", "trials (pruned)", "updated (UTC)")
    for row in rows.itertuples(index=False):
        tuned = row.source == "tuned"
        table.add_row(
            row.kpi,
            row.source,
            "\n".join(f"{key}={json.dumps(value)}" for key, value in sorted(row.params.items())),
            f"{row.objective} {row.objective_value:.4g}" if tuned else "",
            f"{row.default_value:.4g}" if tuned else "",
            f"{int(row.trials)} ({int(row.pruned_trials)})" if tuned else "",
            "" if pd.isna(row.updated_at) else f"{row.updated_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@params_app.command("keys")
def keys() -> None:
    """Every parameter a KPI can override, with the type it takes."""
    for key, hint in parameter_types().items():
        console.print(f"{key}: {describe_type(hint)}", markup=False)


@params_app.command("pin")
@friendly_errors
def pin(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name.", show_default=False)],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="key=value pairs, e.g. prophet.changepoint_prior_scale=0.2 threshold=4 "
            "(values read as JSON, else as text; kpi-pipeline params keys lists the keys).",
            show_default=False,
        ),
    ],
) -> None:
    """Fix parameters of a KPI by hand: they win over tuned ones and tuning leaves them alone."""
    parsed = dict(parse_assignment(text) for text in assignments)
    engine = open_engine(ctx)
    require_known_kpis(engine, [kpi])
    pinned = store.pin_parameters(engine, kpi, parsed)
    console.print(
        f"pinned for {kpi}: {', '.join(f'{k}={json.dumps(v)}' for k, v in sorted(pinned.items()))}; "
        "the next training run uses them",
        markup=False,
    )


@params_app.command("unpin")
@friendly_errors
def unpin(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name.", show_default=False)],
    keys: Annotated[list[str] | None, typer.Argument(help="Keys to unpin. Default: all of them.")] = None,
) -> None:
    """Remove pins of a KPI (its tuned values, or the defaults, apply again)."""
    engine = open_engine(ctx)
    try:
        removed = store.unpin_parameters(engine, kpi, keys or None)
    except KeyError as error:
        fail(str(error.args[0]))
    console.print(f"unpinned for {kpi}: {', '.join(removed) if removed else 'nothing was pinned'}", markup=False)
