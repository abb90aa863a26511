"""``kpi-pipeline``: set up the database, load KPIs, run the pipeline and read its results.

Every command is a thin shell over ``kpi_pipeline.pipeline``, ``store`` and ``evaluation``.
Failures print one ``error: ...`` line on stderr and exit with status 1, never a traceback.
"""

from __future__ import annotations

import logging
import os
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text

from kpi_pipeline import pipeline, store
from kpi_pipeline.alerts.cli import register as register_alerts
from kpi_pipeline.api.cli import register as register_api
from kpi_pipeline.cli_common import (
    console,
    database_url,
    errors,
    fail,
    friendly_errors,
    masked,
    open_engine,
    require_known_kpis,
    utc_timestamp,
)
from kpi_pipeline.config import get_settings
from kpi_pipeline.dashboard.cli import register as register_dashboard
from kpi_pipeline.errors import first_line
from kpi_pipeline.groups_cli import register as register_groups
from kpi_pipeline.ingestion import read_observations_csv
from kpi_pipeline.thresholds_cli import register as register_thresholds
from kpi_pipeline.tune_cli import register as register_tuning

app = typer.Typer(
    name="kpi-pipeline",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
SHOWN_REJECTIONS = 5
"""Rejection reasons ``ingest`` prints; all of them are stored."""

COMPACT_FROM = 1e9
"""Numbers this large or larger are shown in scientific notation in tables."""

MAX_NAME_WIDTH = 40
"""Table columns of free text (KPI names, feedback) fold onto more lines beyond this width."""

Severity = Enum("Severity", {level: level for level in store.SEVERITIES}, type=str)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


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
@friendly_errors
def init(ctx: typer.Context) -> None:
    """Create or upgrade the database schema. Safe to run again."""
    url = database_url(ctx)
    console.print(f"database: {masked(url)}", markup=False)
    applied = store.migrate(url)
    console.print(f"applied migrations: {', '.join(applied)}" if applied else "schema already up to date")


@app.command()
@friendly_errors
def ingest(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV file, wide (timestamp + one column per KPI) or long (kpi, timestamp, value).", show_default=False
        ),
    ],
    tz: Annotated[
        str | None, typer.Option(help="Time zone of timestamps without an offset, e.g. Europe/Berlin. Default: UTC.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Source name stored with the rows. Default: the file name.")
    ] = None,
) -> None:
    """Load observations from a CSV file; rows that fail validation are stored as rejections."""
    result = read_observations_csv(file, tz=tz)
    try:
        counts = pipeline.store_ingested(open_engine(ctx), result, source or file.name)
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        # Writes are idempotent upserts, so the same command finishes the job.
        fail(
            f"lost the database connection while storing {file} ({first_line(error)}); "
            "run the same command again once the database is back: no row is stored twice"
        )
    loaded = counts.inserted + counts.updated + counts.unchanged
    console.print(
        f"{file}: {loaded} observations of {result.observations['kpi'].nunique()} KPIs ({result.layout} layout)",
        markup=False,
    )
    console.print(
        f"accepted {counts.inserted}, updated {counts.updated}, unchanged {counts.unchanged}, "
        f"rejected {len(result.rejections)}"
    )
    for rejection in result.rejections[:SHOWN_REJECTIONS]:
        console.print(f"  line {rejection.line}: {rejection.reason}", markup=False)
    if len(result.rejections) > SHOWN_REJECTIONS:
        console.print(
            f"  ... and {len(result.rejections) - SHOWN_REJECTIONS} more (all stored in rejected_observations)"
        )
    if loaded == 0:
        fail(f"no valid observations in {file}")


@app.command()
@friendly_errors
def run(ctx: typer.Context) -> None:
    """Clean, train, score and summarise anomalies once, in this process."""
    url = database_url(ctx)
    # Reaching and migrating the database first reports its problems in one line.
    pipeline.open_store(url).dispose()
    summary = _materialize_all(url)
    console.print(
        f"KPIs scored: {len(summary['kpis_scored'])}, points scored: {summary['points_scored']}, "
        f"anomalies found: {summary['anomalies']}, outages (data missing): {summary['outages']}"
    )
    short = summary["insufficient_history"]
    console.print(f"insufficient history: {', '.join(short) if short else 'none'}", markup=False)
    for kpi, reason in summary["failed"].items():
        console.print(
            f"failed: {kpi}: {reason} (every other KPI completed; the next run tries it again)",
            markup=False,
            style="bold red",
        )
    home = _dagster_home()
    console.print(
        f"run recorded in the Dagster instance at {home} (DAGSTER_HOME)"
        if home
        else "run not recorded in Dagster: DAGSTER_HOME is not set (make run sets it)",
        markup=False,
    )
    database = " --database-url URL" if ctx.obj else ""
    console.print(f"open the dashboard: kpi-pipeline{database} dashboard", markup=False)


def _dagster_home() -> str | None:
    """The Dagster instance directory runs are recorded in (``DAGSTER_HOME``), if set."""
    return os.environ.get("DAGSTER_HOME") or None


@app.command()
@friendly_errors
def backfill(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="First timestamp to score (ISO 8601; naive = UTC).", show_default=False)],
    until: Annotated[
        str | None,
        typer.Option(help="Last timestamp to score (ISO 8601; naive = UTC). Default: the newest observation."),
    ] = None,
    kpi: Annotated[
        list[str] | None, typer.Option(help="Only this KPI; repeat for several.", show_default=False)
    ] = None,
    retrain_every: Annotated[
        str, typer.Option(help="Retrain after every step of this length (e.g. 1d, 12h), as the daily schedule would.")
    ] = "1d",
    alert: Annotated[
        bool,
        typer.Option(
            "--alert/--no-alert", help="Alert the anomalies found like new ones (default: record them silently)."
        ),
    ] = False,
) -> None:
    """Train and score a historical range, e.g. after loading a year of history.

    The range is replayed as the schedules would have run it, without look-ahead. Its anomalies
    are recorded but, unless --alert, silenced, so loading history never floods anyone.
    """
    from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig

    engine = open_engine(ctx)
    require_known_kpis(engine, kpi or [])
    first = utc_timestamp(since)
    newest = store.load_observations(engine, kpis=kpi or None, since=first)["ts"].max()
    if pd.isna(newest):
        raise ValueError(f"no observations{' of ' + ', '.join(kpi) if kpi else ''} after {first}")
    last = min(utc_timestamp(until), newest) if until else newest
    if last < first:
        raise ValueError(f"--until ({last}) is before --since ({first})")
    settings = get_settings()
    if not (alert or settings.alert_on_history):
        # Silence only the range that exists now, so live points landing later still alert.
        for pattern in kpi or ["*"]:
            store.add_silence(engine, pattern, first, last, "backfill")
    config = DetectorConfig(prophet=ProphetConfig(holidays_country=settings.holiday_country))
    results = pipeline.backfill(
        engine,
        config,
        first,
        last,
        kpis=kpi or None,
        retrain_every=pd.Timedelta(retrain_every),
        rescore_horizon=pd.Timedelta(settings.model_rescore_horizon()),
        progress=lambda line: console.print(line, markup=False),
    )
    store.record_kpi_outcomes(engine, "scoring", {r.kpi: r.error for r in results if r.error}, [r.kpi for r in results])
    scored = sum(r.scored for r in results)
    found = sum(r.anomalies for r in results)
    console.print(
        f"backfill {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC: {len(results)} KPIs, "
        f"{scored} points scored, {found} anomalous"
        + ("" if alert or settings.alert_on_history else " (recorded without alerts)")
    )


@app.command()
@friendly_errors
def bench(
    kpis: Annotated[int, typer.Option(help="Synthetic KPIs in the database (at least 3).")] = 50,
    days: Annotated[int, typer.Option(help="Days of history per KPI.")] = 60,
    freq: Annotated[
        str, typer.Option(help="The KPIs' frequency: 1h (1 new point per KPI per hourly run) or 1min (60).")
    ] = "1h",
    url: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL server to create the scratch database on. Default: the server of "
            "KPI_DATABASE_URL if it is PostgreSQL, else postgresql://postgres@127.0.0.1:5432.",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the database afterwards (its URL is printed).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic series.")] = 0,
    retrain_kpis: Annotated[
        int, typer.Option(help="KPIs retrained in each of the one- and two-process measurements.")
    ] = 4,
    retrain_days: Annotated[
        int, typer.Option(help="Simulated days of scoring and retraining for the registry size (0: skip).")
    ] = 30,
) -> None:
    """Measure scoring, retraining and the registry on a synthetic PostgreSQL database.

    Ends with one line: scoring: <ratio>x floor, history ratio <r>, peak RSS <MiB> MiB,
    registry <KB> KB/KPI. See docs/scaling.md.
    """
    from kpi_pipeline.bench import BenchOptions, run_bench

    server = url or _bench_server()
    console.print(f"server: {masked(server)}", markup=False)
    report = run_bench(
        BenchOptions(
            server_url=server,
            kpis=kpis,
            days=days,
            freq=freq,
            keep=keep,
            seed=seed,
            retrain_kpis=retrain_kpis,
            retrain_days=retrain_days,
        ),
        say=lambda line: console.print(line, markup=False),
    )
    console.print(report.summary, markup=False)


DEFAULT_BENCH_SERVER = "postgresql://postgres@127.0.0.1:5432"


def _bench_server() -> str:
    """The PostgreSQL server of ``KPI_DATABASE_URL``, else the local default."""
    configured = get_settings().database_url
    if configured and sa.make_url(configured).get_backend_name() == "postgresql":
        return configured
    return DEFAULT_BENCH_SERVER


def _materialize_all(url: str) -> dict:
    """Materialize every asset against ``url``, printing progress lines; returns the scoring
    metadata, with the KPIs too short to model or score as ``insufficient_history``."""
    # Dagster is imported here so that the other commands start fast.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"dagster(\.|$)")  # beta notices, not for users
        import dagster as dg

        from kpi_pipeline.defs.assets import ASSETS, every_shard_tags
        from kpi_pipeline.defs.resources import KpiStore

    progress = logging.getLogger(dg.get_dagster_logger().name)
    handler = _ConsoleHandler()
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    # Recorded in the instance at DAGSTER_HOME when it is set (make run sets it), so that the
    # Dagster UI on the same home shows what this run materialized; else nothing is recorded.
    instance = dg.DagsterInstance.get() if _dagster_home() else dg.DagsterInstance.ephemeral()
    try:
        with instance:
            # The console logger stays quiet; a failure is reported below in one line.
            result = dg.materialize(
                ASSETS,
                resources={"store": KpiStore(database_url=url)},
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
                instance=instance,
                tags=every_shard_tags(),
                raise_on_error=False,
            )
    finally:
        progress.removeHandler(handler)
    if not result.success:
        failure = result.get_step_failure_events()[0]
        fail(f"{failure.step_key} failed: {_root_cause(failure.step_failure_data.error)}")
    metadata = {
        event.asset_key.to_user_string(): {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }
    scores = metadata["anomaly_scores"]
    short = {*metadata["kpi_models"]["insufficient_history"], *scores["insufficient_history"]}
    failed = {**scores["failed"], **metadata["kpi_models"]["failed"]}
    return {**scores, "insufficient_history": sorted(short), "failed": failed}


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
@friendly_errors
def anomalies(
    ctx: typer.Context,
    kpi: Annotated[
        list[str] | None, typer.Option(help="Only this KPI; repeat for several.", show_default=False)
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only anomalies at or after this time (ISO 8601; naive = UTC).")
    ] = None,
    severity: Annotated[Severity | None, typer.Option(help="Only anomalies at least this severe.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (OutputFormat.table),
    limit: Annotated[int, typer.Option(min=1, help="Newest N anomalies.")] = 50,
) -> None:
    """List detected anomalies, newest first, with any feedback."""
    engine = open_engine(ctx)
    require_known_kpis(engine, kpi or [])
    found = store.load_anomalies(
        engine,
        kpi=kpi or None,
        since=since,
        min_severity=severity.value if severity else None,
    )
    if len(found) > limit:
        # On stderr, so that JSON and CSV output stays machine-readable.
        errors.print(
            f"showing the newest {limit} of {len(found)} anomalies; pass --limit {len(found)} to see them all",
            markup=False,
        )
    found = found.head(limit)
    if _machine_readable(found, output):
        return
    if found.empty:
        console.print("no anomalies found")
    else:
        console.print(_anomaly_table(found))


def _machine_readable(frame: pd.DataFrame, output: OutputFormat) -> bool:
    """Print ``frame`` as JSON or CSV if ``output`` asks for it; whether it did."""
    if output is OutputFormat.json:
        typer.echo(frame.to_json(orient="records", date_format="iso", indent=2))
    elif output is OutputFormat.csv:
        typer.echo(frame.to_csv(index=False), nl=False)
    else:
        return False
    return True


@app.command()
@friendly_errors
def status(
    ctx: typer.Context,
    kpi: Annotated[
        list[str] | None, typer.Option(help="Only this KPI; repeat for several.", show_default=False)
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (OutputFormat.table),
    check: Annotated[
        bool, typer.Option("--check", help="Exit with status 2 when a KPI is failing (for monitoring).")
    ] = False,
) -> None:
    """Each KPI's state: failing (and why), without a model, behind, or ok."""
    from kpi_pipeline.status import kpi_status

    engine = open_engine(ctx)
    require_known_kpis(engine, kpi or [])
    found = kpi_status(engine, kpi or None)
    counts = found["state"].value_counts()
    if _machine_readable(found, output):
        pass
    elif found.empty:
        console.print("no KPIs yet: load some with kpi-pipeline ingest FILE")
    else:
        console.print(_status_table(found))
        console.print(
            ", ".join(f"{int(counts.get(state, 0))} {state}" for state in ("ok", "behind", "no model", "failing"))
            + f" of {len(found)} KPIs"
        )
    if check and counts.get("failing", 0):
        raise typer.Exit(2)


@app.command()
@friendly_errors
def outages(
    ctx: typer.Context,
    kpi: Annotated[
        list[str] | None, typer.Option(help="Only this KPI; repeat for several.", show_default=False)
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (OutputFormat.table),
    as_of: Annotated[
        str | None,
        typer.Option(help="Judge ongoing outages at this time (ISO 8601; naive = UTC). Default: now."),
    ] = None,
) -> None:
    """Stretches of missing data (outages), newest first: start, end, missing points. A KPI
    whose newest point is KPI_OUTAGE_AFTER_INTERVALS (default 4) of its intervals old is an
    ongoing outage, counted up to now."""
    from kpi_pipeline.status import outages as find_outages

    engine = open_engine(ctx)
    require_known_kpis(engine, kpi or [])
    found = find_outages(engine, kpi or None, now=utc_timestamp(as_of) if as_of else None)
    if _machine_readable(found, output):
        return
    if found.empty:
        console.print("no outages found")
        return
    table = Table(box=None)
    table.add_column("kpi", max_width=MAX_NAME_WIDTH, overflow="fold")
    for header in ("first missing (UTC)", "last missing (UTC)", "missing points"):
        table.add_column(header, no_wrap=True)
    for row in found.itertuples(index=False):
        table.add_row(
            Text(row.kpi),
            row.start.strftime("%Y-%m-%d %H:%M"),
            "ongoing" if row.ongoing else row.end.strftime("%Y-%m-%d %H:%M"),
            f"{row.missing_points:,}" + (" so far" if row.ongoing else ""),
        )
    console.print(table)


def _status_table(found: pd.DataFrame) -> Table:
    table = Table(box=None)
    table.add_column("kpi", max_width=MAX_NAME_WIDTH, overflow="fold")
    table.add_column("state", no_wrap=True)
    for header in ("last point (UTC)", "last scored (UTC)", "model", "shard"):
        table.add_column(header, no_wrap=True)
    table.add_column("detail", max_width=2 * MAX_NAME_WIDTH, overflow="fold")

    def when(value) -> str:
        return "" if value is None or pd.isna(value) else value.strftime("%Y-%m-%d %H:%M")

    for row in found.itertuples(index=False):
        style = {"failing": "bold red", "no model": "yellow", "behind": "cyan"}.get(row.state)
        # Names and reasons are the user's and the errors' text, never markup.
        table.add_row(
            Text(row.kpi),
            Text(row.state, style=style or ""),
            when(row.last_ts),
            when(row.last_scored),
            _text(row.model_version),
            row.shard,
            Text(_text(row.detail)),
        )
    return table


def _anomaly_table(found: pd.DataFrame) -> Table:
    """The columns a person reads first; ``--format json/csv`` give them all.

    Every cell has a bounded width (numbers are compact, long names fold), so no value can
    push other columns out of the table.
    """
    table = Table(box=None)
    table.add_column("kpi", max_width=MAX_NAME_WIDTH, overflow="fold")
    for header in ("time (UTC)", "value", "expected", "deviation", "band", "score", "severity"):
        table.add_column(header, no_wrap=True)
    table.add_column("flagged by", max_width=MAX_NAME_WIDTH, overflow="fold")
    table.add_column("feedback", max_width=MAX_NAME_WIDTH, overflow="fold")
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
    """At most about ten characters: thousands separators up to a billion, then 1.235e+12."""
    if pd.isna(value):
        return ""
    if abs(value) >= COMPACT_FROM:
        return f"{value:.4g}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _deviation(value: float, expected: float) -> str:
    if pd.isna(value) or pd.isna(expected) or expected == 0:
        return ""
    percent = (value - expected) / abs(expected) * 100
    return f"{percent:+.3g}%" if abs(percent) >= COMPACT_FROM else f"{percent:+.0f}%"


def _text(value: object) -> str:
    return "" if pd.isna(value) else str(value)


@app.command()
@friendly_errors
def evaluate(
    data: Annotated[
        list[str],
        typer.Option(
            help="NAB data directory (<category>/<file>.csv) or "
            "a KPI CSV file; repeat it to evaluate several as "
            "folds (a KPI file's labels are then kpi_labels.csv "
            "beside it). NAME=PATH names a fold.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for per-series scores and the summary.", show_default=False)],
    windows: Annotated[
        Path | None, typer.Option(help="NAB windows.json. Default: windows.json beside or inside --data.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (kpi, start, end) for a KPI CSV file.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel processes. Default: one per CPU.")] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="An earlier folds.json: the fold report shows each figure's change.")
    ] = None,
    simulate_feedback: Annotated[
        bool,
        typer.Option(
            "--simulate-feedback",
            help="Replay an analyst's feedback: each event is confirmed (inside a label window) or "
            "marked false positive (outside) the day after it starts, and later points are scored "
            "with the threshold that feedback raises (docs/adaptive-thresholds.md).",
        ),
    ] = False,
) -> None:
    """Backtest the detector on labelled corpora and print NAB scores, precision and recall,
    per fold (each NAB category, each KPI file)."""
    from kpi_pipeline.evaluation.runner import (
        evaluate_dataset,
        evaluate_folds,
        evaluate_nab,
        windows_of,
    )

    sources = [_fold_source(item) for item in data]
    for _, path in sources:
        if not path.exists():
            fail(f"not found: {path}")
    out.mkdir(parents=True, exist_ok=True)
    if len(sources) > 1:
        evaluate_folds(
            sources, out, workers=workers, baseline=baseline, progress=typer.echo, simulate_feedback=simulate_feedback
        )
        typer.echo((out / "folds.md").read_text())
        return
    name, path = sources[0]
    if path.is_dir():
        if windows is None:
            try:
                windows = windows_of(path)
            except FileNotFoundError as error:
                fail(f"{error}: pass --windows")
        evaluate_nab(path, windows, out, workers=workers, progress=typer.echo, simulate_feedback=simulate_feedback)
    else:
        if labels is None:
            fail("a KPI CSV file needs --labels")
        evaluate_dataset(
            path,
            labels,
            out,
            workers=workers,
            progress=typer.echo,
            fold=name,
            simulate_feedback=simulate_feedback,
        )
    typer.echo((out / "summary.md").read_text())


def _fold_source(item: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, separator, path = item.partition("=")
    return (name, Path(path)) if separator and "/" not in name else (None, Path(item))


@app.command()
@friendly_errors
def feedback(
    ctx: typer.Context,
    kpi: Annotated[str, typer.Argument(help="KPI name.", show_default=False)],
    ts: Annotated[
        str, typer.Argument(help="Timestamp of the scored point (ISO 8601; naive = UTC).", show_default=False)
    ],
    false_positive: Annotated[bool, typer.Option("--false-positive", help="The point was normal.")] = False,
    true_positive: Annotated[bool, typer.Option("--true-positive", help="The point was a real incident.")] = False,
    note: Annotated[str | None, typer.Option(help="Free-text note.")] = None,
) -> None:
    """Label a scored point as a real incident or a false alarm (used by later training)."""
    if false_positive == true_positive:
        fail("pass exactly one of --false-positive and --true-positive")
    engine = open_engine(ctx)
    point = store.load_scores(engine, [kpi], since=ts, until=ts)
    if point.empty:
        fail(f"no scored point of {kpi!r} at {ts}")
    if not point["is_anomaly"].iloc[0]:
        fail(
            f"the point of {kpi!r} at {ts} is not an anomaly (score "
            f"{point['score'].iloc[0]:.2f}): feedback labels flagged points only"
        )
    label = "true_positive" if true_positive else "false_positive"
    store.set_feedback(engine, kpi, ts, label, note)
    console.print(f"recorded {label} for {kpi} at {ts}", markup=False)
    if label == "false_positive":
        suppressed = store.suppress_false_positive_alerts(engine)
        console.print(f"suppressed {suppressed} pending alerts of false positives")


register_dashboard(app)
register_api(app)
register_alerts(app)
register_groups(app)
register_thresholds(app)
register_tuning(app)
