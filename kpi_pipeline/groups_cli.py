"""``kpi-pipeline groups``: list, suggest and judge KPI groups, read and evaluate group events;
registered on the ``kpi-pipeline`` app by ``register``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from kpi_pipeline import groups, store
from kpi_pipeline.cli_common import console, fail, friendly_errors, open_engine
from kpi_pipeline.config import get_settings
from kpi_pipeline.evaluation.groups import group_event_metrics, kpi_event_metrics
from kpi_pipeline.store import groups as group_store

app = typer.Typer(no_args_is_help=True, help="KPI groups judged jointly (KPI_GROUPS_FILE, docs/multivariate.md).")


def register(main: typer.Typer) -> None:
    """Add ``groups`` and its commands to ``main`` (the ``kpi-pipeline`` CLI)."""
    main.add_typer(app, name="groups")


def _declared() -> list[groups.KpiGroup]:
    path = get_settings().groups_file
    if not path:
        fail("no groups declared: set KPI_GROUPS_FILE to a groups file (docs/multivariate.md)")
    return groups.load_groups(path)


@app.command("list")
@friendly_errors
def list_groups(ctx: typer.Context) -> None:
    """The groups of KPI_GROUPS_FILE, checked against the stored KPIs, with how far each has been judged."""
    declared = _declared()
    engine = open_engine(ctx)
    groups.check_members_known(declared, set(store.list_kpis(engine)))
    states = group_store.load_group_states(engine)
    table = Table("group", "members", "judged until", "versions", "events")
    for group in declared:
        state = states.get(group.name)
        judged = "never" if state is None or state.scored_until is None else f"{state.scored_until:%Y-%m-%d %H:%M}"
        versions = len(group_store.load_group_models(engine, group.name))
        events = len(group_store.load_group_events(engine, group.name))
        table.add_row(group.name, ", ".join(group.members), judged, str(versions), str(events))
    console.print(table)


@app.command()
@friendly_errors
def suggest(
    ctx: typer.Context,
    threshold: Annotated[
        float, typer.Option(help="Least absolute residual correlation (Spearman) that links two KPIs.")
    ] = 0.3,
    min_points: Annotated[int, typer.Option(help="Least timestamps two KPIs must share to be compared.")] = 168,
) -> None:
    """Propose groups from the correlation of the KPIs' residuals (value against the expected
    value of their latest models, from the stored scores); prints a groups file."""
    if not 0.0 < threshold <= 1.0:
        fail(f"--threshold must be in (0, 1], not {threshold}")
    scores = store.load_scores(open_engine(ctx))
    if scores.empty:
        fail("no scored points yet: run the pipeline first (kpi-pipeline run)")
    found = groups.suggest_groups(scores, threshold, min_points)
    if not found:
        console.print(f"# no KPIs whose residuals correlate at {threshold} or more", markup=False)
        return
    console.print(groups.groups_yaml(found), markup=False, end="")


@app.command()
@friendly_errors
def update(ctx: typer.Context) -> None:
    """Judge the groups' newly scored points now (the ``group_events`` asset's step)."""
    declared = _declared()
    engine = open_engine(ctx)
    groups.check_members_known(declared, set(store.list_kpis(engine)))
    results = groups.update_groups(engine, declared, progress=lambda line: console.print(line, markup=False))
    if any(result.status == "failed" for result in results):
        raise typer.Exit(1)


@app.command()
@friendly_errors
def events(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    limit: Annotated[int, typer.Option(help="Newest events shown.")] = 20,
) -> None:
    """Group events, newest first, with the members that moved and by how much."""
    found = group_store.load_group_events(open_engine(ctx), group)
    table = Table("group", "start", "end", "points", "peak score", "members that moved")
    for row in found.head(limit).itertuples(index=False):
        table.add_row(
            row.group_name,
            f"{row.start:%Y-%m-%d %H:%M}",
            f"{row.end:%Y-%m-%d %H:%M}",
            str(row.points),
            f"{row.peak_score:.2f}",
            groups.describe_members(row.members),
        )
    console.print(table)
    console.print(f"{len(found)} group events", markup=False)


@app.command()
@friendly_errors
def evaluate(
    ctx: typer.Context,
    group_labels: Annotated[Path, typer.Option(help="group, start, end[, members] CSV (datagen's group_labels.csv).")],
    labels: Annotated[
        Path | None, typer.Option(help="kpi, start, end CSV: also per-KPI events, groups off vs on.")
    ] = None,
) -> None:
    """Event recall and precision of the stored group events against labels (and, with
    --labels, of every KPI's events without and with its group component)."""
    declared = _declared()
    engine = open_engine(ctx)
    members = [kpi for group in declared for kpi in group.members]
    scores = store.load_scores(engine)
    mv = group_store.load_member_scores(engine, members)
    judged = mv[mv["multivariate_score"].notna()]
    owner = {kpi: group.name for group in declared for kpi in group.members}
    judged_from = judged.assign(group=judged["kpi"].map(owner)).groupby("group")["ts"].min().to_dict()
    found = group_store.load_group_events(engine)
    result = group_event_metrics(found, pd.read_csv(group_labels), judged_from)
    _print_metrics("group events", result)
    if labels is not None:
        with_mv = scores.merge(mv[["kpi", "ts", "multivariate_score"]], on=["kpi", "ts"], how="left")
        kpi_labels = pd.read_csv(labels)
        _print_metrics("per-KPI events, groups off", kpi_event_metrics(with_mv, kpi_labels, with_groups=False))
        _print_metrics("per-KPI events, groups on", kpi_event_metrics(with_mv, kpi_labels, with_groups=True))


def _print_metrics(name: str, m) -> None:
    console.print(
        f"{name}: recall {m.recall:.3f} ({m.tp_events}/{m.tp_events + m.fn_events}), "
        f"precision {m.precision:.3f} ({m.fp_events} false), F1 {m.f1:.3f}",
        markup=False,
    )
