"""The asset graph: raw observations -> cleaned series -> models -> scores -> anomaly events.

Assets are thin: each reads from the store through the ``store`` resource, calls
``kpi_pipeline.pipeline`` or, for the cleaned and feature tables, ``kpi_pipeline.derived`` (which
call ``detection`` and ``store``), and returns metadata. The data itself lives in the store's
tables, so assets pass nothing through IO managers and each re-reads what it needs. Progress
goes to ``get_dagster_logger``, which Dagster records in the run's event log and the CLI prints.

What the UI shows: assets carry owners, tags (domain and medallion tier) and kinds for the
lineage graph; table-backed assets name their table and its columns; materializations carry
markdown tables (newest anomalies, last score and model of each KPI) and plain numbers (points
scored, anomalies by severity), which Dagster plots across runs.
"""

import os
import socket
from dataclasses import asdict

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline import derived, groups, pipeline
from kpi_pipeline import store as kpi_store
from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig
from kpi_pipeline.detection.features import FEATURE_COLUMNS
from kpi_pipeline.sharding import kpis_in_shards, shard_keys, shard_of
from kpi_pipeline.store import SEVERITIES, list_kpis, observations_version
from kpi_pipeline.store import schema as tables
from kpi_pipeline.store.dashboard import relative_deviation

PREVIEW_ROWS = 10
"""Rows shown in markdown previews."""

PER_KPI_ROWS = 100
"""KPIs listed in per-KPI metadata tables (most anomalous first); the rest are counted."""

OWNERS = ["team:data-platform"]
"""Who answers for the pipeline's assets in the Dagster UI; set it to your team."""


def _tags(tier: str) -> dict[str, str]:
    """Asset tags: the domain, and the medallion tier (bronze raw, silver clean, gold derived)."""
    return {"domain": "kpi", "tier": tier}


def _table(table) -> dict[str, object]:
    """Definition metadata naming a store table and its columns (the asset page's Columns tab)."""
    columns = [dg.TableColumn(column.name, str(column.type).lower()) for column in table.columns]
    return {
        "dagster/table_name": table.name,
        "dagster/column_schema": dg.TableSchema(columns=columns),
    }


TRAINING_SHARDS = dg.StaticPartitionsDefinition(shard_keys(get_settings().training_shards))
"""The partitions of ``kpi_models``: KPI shards (``kpi_pipeline.sharding``). A shard's run
trains its KPIs; a failure fails that shard alone, and its retries and backfills are its own."""


def every_shard_tags() -> dict[str, str]:
    """Tags of one run over every shard (a partition range: ``kpi-pipeline run`` trains all
    KPIs in its one run this way)."""
    keys = TRAINING_SHARDS.get_partition_keys()
    return {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1],
    }


TRAINING_RETRIES = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)
"""A shard's training step is retried after an unexpected error (the database going away):
30 s, then 60 s. A KPI's own error does not fail the step (it is recorded, see
``every_kpi_trained_without_error``), so it is not retried here but by the next run."""

_DEFAULTS = DetectorConfig()


class ModelTrainingConfig(dg.Config):
    """Detector tunables for training (scoring uses what each model was trained with)."""

    threshold: float = Field(
        default=_DEFAULTS.threshold,
        description="Surprise (-log10 tail probability) at which a point is anomalous.",
    )
    min_train_points: int = Field(
        default=_DEFAULTS.min_train_points,
        description="Usable points a KPI needs before its first model is trained.",
    )
    train_window_days: float = Field(
        default=_DEFAULTS.train_window_days,
        description="Training looks back at least this many days from the newest usable point.",
    )
    train_window_steps: int = Field(
        default=_DEFAULTS.train_window_steps,
        description="... and at least this many steps of the KPI's grid (the longer wins).",
    )
    event_merge_gap: int = Field(
        default=_DEFAULTS.event_merge_gap,
        description="Quiet points allowed inside one anomaly event.",
    )
    kpis: list[str] = Field(
        default=[],
        description="Train only these KPIs (each must belong to the run's shards), e.g. to "
        "retrain or backfill one KPI; empty: every KPI of the shards.",
    )

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            threshold=self.threshold,
            min_train_points=self.min_train_points,
            train_window_days=self.train_window_days,
            train_window_steps=self.train_window_steps,
            event_merge_gap=self.event_merge_gap,
            prophet=ProphetConfig(holidays_country=get_settings().holiday_country),
        )


@dg.observable_source_asset(
    # An observable source asset takes its description from here, not from the docstring.
    description="Raw KPI observations in `kpi_observations`, written by `kpi-pipeline ingest` "
    "and the API. The data version changes whenever a row is added or a value corrected.",
    group_name="ingestion",
    # observable_source_asset has no `kinds` argument (this is the tag `kinds` would set) and
    # no `owners`: the rows belong to whoever sends them.
    tags={"dagster/kind/postgres": "", **_tags("bronze")},
    metadata=_table(tables.kpi_observations),
)
def raw_kpis(store: KpiStore) -> dg.ObserveResult:
    engine = store.engine()
    return dg.ObserveResult(
        data_version=dg.DataVersion(observations_version(engine)),
        metadata={"kpis": len(list_kpis(engine))},
    )


@dg.asset(
    deps=[raw_kpis],
    group_name="ingestion",
    kinds={"python", "pandas", "postgres"},
    owners=OWNERS,
    tags=_tags("silver"),
    metadata=_table(tables.kpi_cleaned),
)
def cleaned_kpis(store: KpiStore) -> dg.MaterializeResult:
    """Every KPI on its own regular time grid (``kpi_cleaned``): short gaps interpolated, long
    gaps flagged.

    Only observations ingested since the previous run are cleaned, with the few slots before
    them that cleaning needs; a corrected value re-cleans its KPI from there on.
    """
    engine = store.engine()
    run = derived.clean_new_observations(engine, progress=_progress("cleaned_kpis"))
    _log("cleaned_kpis", f"{run.rows} rows of {len(run.kpis)} KPIs written")
    return dg.MaterializeResult(
        metadata={
            "rows_written": run.rows,
            "kpis_touched": len(run.kpis),
            "kpis": _names(run.kpis),
            "recleaned": dg.MetadataValue.json(dict(list(run.rebuilt.items())[:PER_KPI_ROWS])),
            "filled_points": run.filled,
            "gap_points": run.gaps,
            "frequency": dg.MetadataValue.json(
                {kpi: str(step) for kpi, step in list(run.steps.items())[:PER_KPI_ROWS]}
            ),
            "preview": _markdown(run.preview),
        }
    )


@dg.asset(
    deps=[cleaned_kpis],
    group_name="modeling",
    kinds={"python", "pandas", "postgres"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata=_table(tables.kpi_features),
)
def kpi_features(store: KpiStore) -> dg.MaterializeResult:
    """Per-point features of every KPI (``kpi_features``): rolling statistics, lags, calendar
    and holidays, from past values only.

    Built for the cleaned rows written since the previous run, from the few points before them
    the features read. For people exploring the data; the detector derives what it needs itself.
    """
    run = derived.build_new_features(store.engine(), get_settings().holiday_country, progress=_progress("kpi_features"))
    _log("kpi_features", f"{run.rows} rows of {len(run.kpis)} KPIs written")
    return dg.MaterializeResult(
        metadata={
            "rows_written": run.rows,
            "kpis_touched": len(run.kpis),
            "kpis": _names(run.kpis),
            "rebuilt": _names(run.rebuilt),
            "columns": dg.MetadataValue.json(list(FEATURE_COLUMNS)),
            "preview": _markdown(run.preview),
        }
    )


@dg.asset(
    deps=[cleaned_kpis],
    group_name="modeling",
    kinds={"python", "prophet", "scikit-learn"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata=_table(tables.kpi_models),
    partitions_def=TRAINING_SHARDS,
    # No backfill policy: a backfill of several shards runs each in its own run (Dagster's
    # default), so they train in parallel.
    retry_policy=TRAINING_RETRIES,
    check_specs=[
        dg.AssetCheckSpec(
            "every_kpi_trained_without_error",
            asset="kpi_models",
            description="No KPI's training failed with an error in this run (each failure is "
            "recorded with its reason; every other KPI is trained, and the next run tries again).",
        )
    ],
)
def kpi_models(context: dg.AssetExecutionContext, store: KpiStore, config: ModelTrainingConfig) -> dg.MaterializeResult:
    """The model registry (``kpi_models``): a Prophet + Isolation Forest ensemble per KPI,
    partitioned by KPI shard.

    New KPIs get walk-forward versions over their history; known KPIs one retrain on every
    scored point once newer points have been scored. Too little history is reported, not failed.
    A run trains the KPIs of its shard (or range of shards), or only ``config.kpis``; versions
    that can score nothing within ``KPI_MODEL_RESCORE_DAYS`` are then deleted.
    """
    engine = store.engine()
    shards = list(context.partition_keys)
    kpis = _shard_kpis(engine, shards, config.kpis)
    _log("kpi_models", f"{len(kpis)} KPIs in {_shard_names(shards)}")
    results = []
    if kpis:
        cleaned, _ = pipeline.load_cleaned(engine, kpis)
        results = pipeline.train_models(
            engine,
            cleaned,
            config.detector_config(),
            rescore_horizon=pd.Timedelta(get_settings().model_rescore_horizon()),
            progress=_progress("kpi_models"),
        )
    failed = {r.kpi: r.detail for r in results if r.status == "failed"}
    kpi_store.record_kpi_outcomes(engine, "training", failed, [r.kpi for r in results])
    return dg.MaterializeResult(
        metadata={
            "shards": dg.MetadataValue.json(shards),
            "executed_by": f"{socket.gethostname()} pid {os.getpid()}",
            "versions_trained": sum(len(r.versions) for r in results),
            "versions_pruned": sum(len(r.pruned) for r in results),
            "kpis_trained": _kpis(results, "trained"),
            "kpis_up_to_date": _kpis(results, "up to date"),
            "insufficient_history": _kpis(results, "insufficient history"),
            "failed": dg.MetadataValue.json(failed),
            "summary": _summary(results),
            "models": _model_table(engine, results),
        },
        check_results=[_failures_check("every_kpi_trained_without_error", failed)],
    )


def _shard_kpis(engine, shards: list[str], only: list[str]) -> list[str]:
    """The KPIs a training run of ``shards`` trains: all of theirs, or those of ``only``."""
    count = TRAINING_SHARDS.get_num_partitions()
    if not only:
        return kpis_in_shards(list_kpis(engine), shards, count)
    unknown = sorted(set(only) - set(list_kpis(engine)))
    if unknown:
        message = f"unknown KPI(s): {', '.join(unknown)} (no observations)"
        raise dg.Failure(message, allow_retries=False)  # config errors: no retry helps
    elsewhere = sorted(set(only) - set(kpis_in_shards(only, shards, count)))
    if elsewhere:
        owners = ", ".join(f"{kpi} is in {shard_of(kpi, count)}" for kpi in elsewhere)
        raise dg.Failure(f"not in {_shard_names(shards)}: {owners}; run that partition", allow_retries=False)
    return sorted(set(only))


def _shard_names(shards: list[str]) -> str:
    return shards[0] if len(shards) == 1 else f"{len(shards)} shards ({shards[0]} .. {shards[-1]})"


def _failures_check(name: str, failed: dict[str, str]) -> dg.AssetCheckResult:
    """Passes when no KPI failed; otherwise names each failed KPI with its reason."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"failed_kpis": len(failed), "threshold": 0, "failures": dg.MetadataValue.json(failed)},
    )


@dg.asset(
    deps=[cleaned_kpis, kpi_models],
    group_name="scoring",
    kinds={"python", "postgres"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata=_table(tables.anomaly_scores),
    check_specs=[
        dg.AssetCheckSpec(
            "every_kpi_scored_without_error",
            asset="anomaly_scores",
            description="No KPI's scoring failed with an error in this run (its points stay "
            "unscored and the next run tries again; every other KPI is scored).",
        )
    ],
)
def anomaly_scores(store: KpiStore) -> dg.MaterializeResult:
    """Scores of every point (``anomaly_scores``), each by the newest model trained before it.

    Only points newer than the last scored one are scored, and only they and the context before
    them are read and cleaned; nothing is fitted here.
    """
    engine = store.engine()
    # Every row this run writes carries this time, which tells its anomalies from older ones.
    scored_at = pd.Timestamp.now("UTC").floor("us")
    results = pipeline.score_latest(engine, scored_at=scored_at, progress=_progress("anomaly_scores"))
    new_by_severity = kpi_store.severity_counts(engine, scored_since=scored_at, kind="anomaly")
    failed = {r.kpi: r.error for r in results if r.error}
    kpi_store.record_kpi_outcomes(engine, "scoring", failed, [r.kpi for r in results])
    return dg.MaterializeResult(
        metadata={
            "points_scored": sum(r.scored for r in results),
            "anomalies": sum(r.anomalies for r in results),
            "outages": sum(r.outages for r in results),
            # One number per severity, so the UI plots each across runs.
            **{f"{level}_anomalies": new_by_severity[level] for level in SEVERITIES},
            "unscored_points": sum(r.unscored for r in results),
            "kpis_scored": dg.MetadataValue.json([r.kpi for r in results if r.scored]),
            # KPIs with new points but no model trained before any of them.
            "insufficient_history": dg.MetadataValue.json([r.kpi for r in results if r.unscored and not r.scored]),
            "summary": _summary(results),
            "newest_anomalies": _markdown(_anomaly_rows(kpi_store.newest_anomalies(engine, PREVIEW_ROWS))),
            "last_score_per_kpi": _last_scores(engine),
            # Exact up to a million rows, Postgres' estimate above: constant cost per run.
            "dagster/row_count": kpi_store.row_count(engine, tables.anomaly_scores),
            "failed": dg.MetadataValue.json(failed),
        },
        check_results=[_failures_check("every_kpi_scored_without_error", failed)],
    )


@dg.asset(
    deps=[anomaly_scores],
    group_name="scoring",
    kinds={"postgres"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata={"dagster/table_name": "anomalies"},
)
def anomalies(store: KpiStore) -> dg.MaterializeResult:
    """Anomaly events: runs of anomalous points (the ``anomalies`` view), with feedback.

    Each run summarises the events of the 7 days up to the newest scored point (the events
    of all time are in the view, the API and the dashboard): the summary's cost follows the
    recent anomalies, not the history."""
    events, as_of = pipeline.recent_anomaly_events(store.engine())
    by_severity = events["severity"].value_counts()
    _log("anomalies", f"{len(events)} events in the 7 days up to {as_of}")
    return dg.MaterializeResult(
        metadata={
            **({"as_of": str(as_of)} if as_of is not None else {}),  # nothing scored yet: no span
            "events": len(events),
            "anomalous_points": int(events["points"].sum()) if len(events) else 0,
            "events_by_severity": dg.MetadataValue.json(
                {level: int(by_severity.get(level, 0)) for level in SEVERITIES}
            ),
            "newest_events": _markdown(events.head(PREVIEW_ROWS)),
        }
    )


@dg.asset(
    deps=[anomaly_scores],
    group_name="scoring",
    kinds={"python", "postgres"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata={"dagster/table_name": "group_events"},
)
def group_events(store: KpiStore) -> dg.MaterializeResult:
    """Group events of the KPI groups in ``KPI_GROUPS_FILE``: each group's detector judges its
    members' newly scored points jointly (docs/multivariate.md); no groups: nothing to do."""
    engine = store.engine()
    declared = groups.load_groups(get_settings().groups_file)
    if declared:
        groups.check_members_known(declared, set(kpi_store.list_kpis(engine)))
    results = groups.update_groups(engine, declared, progress=_progress("group_events"))
    failed = {r.group: r.detail for r in results if r.status == "failed"}
    if failed:
        _log("group_events", f"failed groups: {failed}")
    return dg.MaterializeResult(
        metadata={
            "groups": len(declared),
            "timestamps_judged": sum(r.judged for r in results),
            "events_written": sum(r.events for r in results),
            "failed": dg.MetadataValue.json(failed),
            "newest_events": _markdown(kpi_store.load_group_events(engine).head(PREVIEW_ROWS)),
        }
    )


ASSETS = [raw_kpis, cleaned_kpis, kpi_features, kpi_models, anomaly_scores, anomalies, group_events]


def _names(kpis: list[str]) -> dg.MetadataValue:
    """KPI names as JSON, the first ``PER_KPI_ROWS`` of them and how many more."""
    more = len(kpis) - PER_KPI_ROWS
    return dg.MetadataValue.json(kpis[:PER_KPI_ROWS] + ([f"… and {more} more"] if more > 0 else []))


def _kpis(results: list[pipeline.KpiTraining], status: str) -> dg.MetadataValue:
    return dg.MetadataValue.json([r.kpi for r in results if r.status == status])


def _summary(results: list) -> dg.MetadataValue:
    """A markdown table with one row per KPI result."""
    rows = [{k: ", ".join(v) if isinstance(v, tuple) else v for k, v in asdict(r).items()} for r in results]
    return _markdown(pd.DataFrame(rows))


def _markdown(frame: pd.DataFrame, note: str = "") -> dg.MetadataValue:
    table = frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "_(none)_"
    return dg.MetadataValue.md(table + (f"\n\n{note}" if note else ""))


def _when(column: pd.Series) -> pd.Series:
    return column.dt.strftime("%Y-%m-%d %H:%M").fillna("")


def _anomaly_rows(found: pd.DataFrame) -> pd.DataFrame:
    """Anomalous points as a person reads them: what, when, how far off, how sure, feedback."""
    deviation = relative_deviation(found["value"], found["expected"])
    return pd.DataFrame(
        {
            "kpi": found["kpi"],
            "time (UTC)": _when(found["ts"]),
            "value": found["value"],
            "expected": found["expected"],
            "deviation": deviation.map(lambda d: "" if pd.isna(d) else f"{d:+.0%}"),
            "score": found["score"].round(3),
            "severity": found["severity"],
            "flagged by": found["flagged_by"],
            "feedback": found["feedback"].fillna(""),
        }
    )


def _last_scores(engine) -> dg.MetadataValue:
    """Each KPI's newest scored point, anomalous KPIs first."""
    page = kpi_store.kpi_overview(engine, page_size=PER_KPI_ROWS, sort="severity")
    rows = page.rows
    table = pd.DataFrame(
        {
            "kpi": rows["kpi"],
            "time (UTC)": _when(rows["ts"]),
            "value": rows["value"],
            "expected": rows["expected"],
            "score": rows["score"].round(3),
            "status": [
                ("not scored" if pd.isna(ts) else severity if anomalous else "ok")
                for ts, anomalous, severity in zip(rows["ts"], rows["is_anomaly"], rows["severity"])
            ],
            "anomalies 24 h": rows["anomalies_24h"],
            "anomalies 7 d": rows["anomalies_7d"],
        }
    )
    hidden = page.total - len(rows)
    return _markdown(table, f"… and {hidden} more KPIs." if hidden > 0 else "")


def _model_table(engine, results: list[pipeline.KpiTraining]) -> dg.MetadataValue:
    """Per KPI: this run's outcome and its newest model's training metrics and versions."""
    versions = kpi_store.model_versions(engine, [r.kpi for r in results])
    newest = versions.groupby("kpi", sort=False).head(1).set_index("kpi")
    counts = versions.groupby("kpi").size()
    rows = []
    for result in results[:PER_KPI_ROWS]:
        model = newest.loc[result.kpi] if result.kpi in newest.index else None
        rows.append(
            {
                "kpi": result.kpi,
                "this run": result.status,
                "new versions": len(result.versions),
                "newest version": "" if model is None else model["version"],
                "trained at (UTC)": "" if model is None else model["trained_at"].strftime("%Y-%m-%d %H:%M"),
                "points": None if model is None else model["n_points"],
                "residual scale": None if model is None else model.get("residual_scale"),
                "in-sample MAE": None if model is None else model.get("in_sample_mae"),
                "versions": int(counts.get(result.kpi, 0)),
            }
        )
    hidden = len(results) - len(rows)
    return _markdown(pd.DataFrame(rows), f"… and {hidden} more KPIs." if hidden > 0 else "")


def _log(asset: str, message: str) -> None:
    dg.get_dagster_logger().info(f"{asset}: {message}")


def _progress(asset: str) -> pipeline.Progress:
    return lambda message: _log(asset, message)
