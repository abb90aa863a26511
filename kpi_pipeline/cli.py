"""``kpi-pipeline``: set up the database, load KPIs, run the pipeline and read its results.

Every command is a thin shell over ``kpi_pipeline.pipeline``, ``store`` and ``evaluation``.
Failures print one ``error: ...`` line on stderr and exit with status 1, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import click
import pandas as pd
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from kpi_pipeline import pipeline, store
from kpi_pipeline.config import get_settings
from kpi_pipeline.ingestion import read_observations_csv

app = typer.Typer(
    name="kpi-pipeline",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or captured output (make run, CI logs) gets a wide table instead of rich's 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

SHOWN_REJECTIONS = 5
"""Rejection reasons ``ingest`` prints; all of them are stored."""

Severity = Enum("Severity", {level: level for level in store.SEVERITIES}, type=str)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _one_line(error: Exception) -> str:
    """What went wrong, in one line, without the SQL or stack a library attached."""
    if isinstance(error, sa.exc.DBAPIError) and error.orig is not None:
        error = error.orig
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _friendly_errors(command):
    """Turn any failure of ``command`` into one ``error:`` line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as error:
            _fail(_one_line(error))

    return wrapper


def _fail(message: str) -> None:
    errors.print(f"error: {message}", markup=False)
    raise typer.Exit(1)


def _database_url(ctx: typer.Context) -> str:
    return ctx.obj or get_settings().resolved_database_url()


def _engine(ctx: typer.Context) -> sa.Engine:
    return pipeline.open_store(_database_url(ctx))


def _masked(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL of the KPI database. Default: KPI_DATABASE_URL, "
            "else the embedded SQLite file .kpi/kpi.db.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Self-hosted KPI anomaly detection: ingest KPIs, train, score and review anomalies."""
    ctx.obj = database_url


@app.command()
@_friendly_errors
def init(ctx: typer.Context) -> None:
    """Create or upgrade the database schema. Safe to run again."""
    url = _database_url(ctx)
    console.print(f"database: {_masked(url)}", markup=False)
    applied = store.migrate(url)
    console.print(
        f"applied migrations: {', '.join(applied)}" if applied else "schema already up to date"
    )


@app.command()
@_friendly_errors
def ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV file, wide (timestamp + one column per KPI) "
                                        "or long (kpi, timestamp, value).", show_default=False)],
    tz: Annotated[str | None, typer.Option(help="Time zone of timestamps without an offset, "
                                            "e.g. Europe/Berlin. Default: UTC.")] = None,
    source: Annotated[str | None, typer.Option(help="Source name stored with the rows. "
                                                "Default: the file name.")] = None,
) -> None:
    """Load observations from a CSV file; rows that fail validation are stored as rejections."""
    result = read_observations_csv(file, tz=tz)
    counts = pipeline.store_ingested(_engine(ctx), result, source or file.name)
    loaded = counts.inserted + counts.updated + counts.unchanged
    console.print(
        f"{file}: {loaded} observations of {result.observations['kpi'].nunique()} KPIs "
        f"({result.layout} layout)",
        markup=False,
    )
    console.print(
        f"accepted {counts.inserted}, updated {counts.updated}, unchanged {counts.unchanged}, "
        f"rejected {len(result.rejections)}"
    )
    for rejection in result.rejections[:SHOWN_REJECTIONS]:
        console.print(f"  line {rejection.line}: {rejection.reason}", markup=False)
    if len(result.rejections) > SHOWN_REJECTIONS:
        console.print(f"  ... and {len(result.rejections) - SHOWN_REJECTIONS} more "
                      "(all stored in rejected_observations)")
    if loaded == 0:
        _fail(f"no valid observations in {file}")


@app.command()
@_friendly_errors
def run(ctx: typer.Context) -> None:
    """Clean, train, score and summarise anomalies once, in this process."""
    url = _database_url(ctx)
    # Reaching and migrating the database first reports its problems in one line.
    pipeline.open_store(url).dispose()
    summary = _materialize_all(url)
    console.print(
        f"KPIs scored: {len(summary['kpis_scored'])}, points scored: {summary['points_scored']}, "
        f"anomalies found: {summary['anomalies']}"
    )
    short = summary["insufficient_history"]
    console.print(f"insufficient history: {', '.join(short) if short else 'none'}", markup=False)
    database = " --database-url URL" if ctx.obj else ""
    console.print(f"open the dashboard: kpi-pipeline{database} dashboard", markup=False)


def _materialize_all(url: str) -> dict:
    """Materialize every asset against ``url``, printing progress lines; returns the scoring
    metadata, with the KPIs too short to model or score as ``insufficient_history``."""
    # Dagster is imported here so that the other commands start fast.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"dagster(\.|$)")  # beta notices, not for users
        import dagster as dg

        from kpi_pipeline.defs.assets import ASSETS
        from kpi_pipeline.defs.resources import KpiStore

    progress = logging.getLogger(dg.get_dagster_logger().name)
    handler = _ConsoleHandler()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    try:
        # The default instance is ephemeral: this one-off run leaves no Dagster history. Its
        # console logger stays quiet; a failure is reported below in one line.
        result = dg.materialize(
            ASSETS,
            resources={"store": KpiStore(database_url=url)},
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            raise_on_error=False,
        )
    finally:
        progress.removeHandler(handler)
    if not result.success:
        failure = result.get_step_failure_events()[0]
        _fail(f"{failure.step_key} failed: {_root_cause(failure.step_failure_data.error)}")
    metadata = {
        event.asset_key.to_user_string(): {
            key: value.value for key, value in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    scores = metadata["anomaly_scores"]
    short = {*metadata["kpi_models"]["insufficient_history"], *scores["insufficient_history"]}
    return {**scores, "insufficient_history": sorted(short)}


def _root_cause(error) -> str:
    """The first line of the innermost error of a Dagster ``SerializableErrorInfo``."""
    while error is not None and error.cause is not None:
        error = error.cause
    lines = error.message.strip().splitlines() if error is not None else []
    return lines[0] if lines else "unknown error"


class _ConsoleHandler(logging.Handler):
    """Prints the assets' progress lines (``get_dagster_logger``) as they come."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(record.getMessage(), markup=False)


@app.command()
@_friendly_errors
def anomalies(
    ctx: typer.Context,
    kpi: Annotated[list[str] | None, typer.Option(help="Only this KPI; repeat for several.",
                                                   show_default=False)] = None,
    since: Annotated[str | None, typer.Option(help="Only anomalies at or after this time "
                                               "(ISO 8601; naive = UTC).")] = None,
    severity: Annotated[Severity | None, typer.Option(help="Only anomalies at least this "
                                                       "severe.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
        OutputFormat.table
    ),
    limit: Annotated[int, typer.Option(min=1, help="Newest N anomalies.")] = 50,
) -> None:
    """List detected anomalies, newest first, with any feedback."""
    found = store.load_anomalies(
        _engine(ctx),
        kpi=kpi or None,
        since=since,
        min_severity=severity.value if severity else None,
    )
    found = found.head(limit)
    if output is OutputFormat.json:
        typer.echo(found.to_json(orient="records", date_format="iso", indent=2))
    elif output is OutputFormat.csv:
        typer.echo(found.to_csv(index=False), nl=False)
    elif found.empty:
        console.print("no anomalies found")
    else:
        console.print(_anomaly_table(found))


def _anomaly_table(found: pd.DataFrame) -> Table:
    """The columns a person reads first; ``--format json/csv`` give them all."""
    table = Table(box=None)
    for header in ("kpi", "time (UTC)", "value", "expected", "deviation", "band", "score",
                   "severity"):
        table.add_column(header, no_wrap=True)
    table.add_column("flagged by", overflow="fold")
    table.add_column("feedback", overflow="fold")
    for row in found.itertuples(index=False):
        table.add_row(
            row.kpi,
            row.ts.strftime("%Y-%m-%d %H:%M"),
            _number(row.value),
            _number(row.expected),
            _deviation(row.value, row.expected),
            f"{_number(row.lower)}..{_number(row.upper)}" if pd.notna(row.lower) else "",
            _number(row.score),
            _text(row.severity),
            _text(row.flagged_by),
            _text(row.feedback),
        )
    return table


def _number(value: float) -> str:
    if pd.isna(value):
        return ""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _deviation(value: float, expected: float) -> str:
    if pd.isna(value) or pd.isna(expected) or expected == 0:
        return ""
    return f"{(value - expected) / abs(expected):+.0%}"


def _text(value: object) -> str:
    return "" if pd.isna(value) else str(value)


@app.command()
@_friendly_errors
def evaluate(
    data: Annotated[list[str], typer.Option(help="NAB data directory (<category>/<file>.csv) or "
                                             "a KPI CSV file; repeat it to evaluate several as "
                                             "folds (a KPI file's labels are then kpi_labels.csv "
                                             "beside it). NAME=PATH names a fold.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option(help="Directory for per-series scores and the summary.",
                                       show_default=False)],
    windows: Annotated[Path | None, typer.Option(help="NAB windows.json. Default: "
                                                  "windows.json beside or inside --data.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (kpi, start, end) for a "
                                                 "KPI CSV file.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel processes. "
                                                 "Default: one per CPU.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="An earlier folds.json: the fold report "
                                                  "shows each figure's change.")] = None,
) -> None:
    """Backtest the detector on labelled corpora and print NAB scores, precision and recall,
    per fold (each NAB category, each KPI file)."""
    from kpi_pipeline.evaluation.runner import evaluate_dataset, evaluate_folds, evaluate_nab

    sources = [_fold_source(item) for item in data]
    for _, path in sources:
        if not path.exists():
            _fail(f"not found: {path}")
    out.mkdir(parents=True, exist_ok=True)
    if len(sources) > 1:
        evaluate_folds(sources, out, workers=workers, baseline=baseline, progress=typer.echo)
        typer.echo((out / "folds.md").read_text())
        return
    name, path = sources[0]
    if path.is_dir():
        windows = windows or next(
            (p for p in (path / "windows.json", path.parent / "windows.json") if p.is_file()), None
        )
        if windows is None:
            _fail(f"no windows.json beside or inside {path}: pass --windows")
        evaluate_nab(path, windows, out, workers=workers, progress=typer.echo)
    else:
        if labels is None:
            _fail("a KPI CSV file needs --labels")
        evaluate_dataset(path, labels, out, workers=workers, progress=typer.echo, fold=name)
    typer.echo((out / "summary.md").read_text())


def _fold_source(item: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, separator, path = item.partition("=")
    return (name, Path(path)) if separator and "/" not in name else (None, Path(item))


@app.command()
@_friendly_errors
def feedback(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name.", show_default=False)],
    ts: Annotated[str, typer.Argument(help="Timestamp of the scored point (ISO 8601; "
                                       "naive = UTC).", show_default=False)],
    false_positive: Annotated[bool, typer.Option("--false-positive", help="The point was "
                                                  "normal.")] = False,
    true_positive: Annotated[bool, typer.Option("--true-positive", help="The point was a real "
                                                 "incident.")] = False,
    note: Annotated[str | None, typer.Option(help="Free-text note.")] = None,
) -> None:
    """Label a scored point as a real incident or a false alarm (used by later training)."""
    if false_positive == true_positive:
        _fail("pass exactly one of --false-positive and --true-positive")
    engine = _engine(ctx)
    if store.load_scores(engine, [kpi], since=ts, until=ts).empty:
        _fail(f"no scored point of {kpi!r} at {ts}")
    label = "true_positive" if true_positive else "false_positive"
    store.set_feedback(engine, kpi, ts, label, note)
    console.print(f"recorded {label} for {kpi} at {ts}", markup=False)
    if label == "false_positive":
        suppressed = store.suppress_false_positive_alerts(engine)
        console.print(f"suppressed {suppressed} pending alerts of false positives")


from kpi_pipeline.dashboard.cli import register as register_dashboard  # noqa: E402

register_dashboard(app)

from kpi_pipeline.api.cli import register as register_api  # noqa: E402

register_api(app)

from kpi_pipeline.alerts.cli import register as register_alerts  # noqa: E402

register_alerts(app)
