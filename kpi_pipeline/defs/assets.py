"""The asset graph: raw observations -> cleaned series -> models -> scores -> anomaly events.

Assets are thin: each reads from the store through the ``store`` resource, calls
``kpi_pipeline.pipeline`` (which calls ``detection`` and ``store``), and returns metadata. The
data itself lives in the store's tables, so assets pass nothing through IO managers and each
re-reads what it needs. Progress goes to ``get_dagster_logger``, which Dagster records in the
run's event log and the CLI prints.

What the UI shows: assets carry owners, tags (domain and medallion tier) and kinds for the
lineage graph; table-backed assets name their table and its columns; materializations carry
markdown tables (newest anomalies, last score and model of each KPI) and plain numbers (points
scored, anomalies by severity), which Dagster plots across runs.
"""

from dataclasses import asdict

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline import pipeline
from kpi_pipeline import store as kpi_store
from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig
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
    kinds={"python", "pandas"},
    owners=OWNERS,
    tags=_tags("silver"),
)
def cleaned_kpis(store: KpiStore) -> dg.MaterializeResult:
    """Every KPI on its own regular time grid: short gaps interpolated, long gaps flagged."""
    cleaned, frequencies = pipeline.load_cleaned(store.engine())
    _log("cleaned_kpis", f"{len(cleaned)} rows of {cleaned['kpi'].nunique()} KPIs")
    return dg.MaterializeResult(
        metadata={
            "rows": len(cleaned),
            "kpis": int(cleaned["kpi"].nunique()),
            "filled_points": int(cleaned["filled"].sum()),
            "gap_points": int(cleaned["gap"].sum()),
            "frequency": dg.MetadataValue.json({k: str(v) for k, v in frequencies.items()}),
            "preview": _markdown(cleaned.tail(PREVIEW_ROWS)),
        }
    )


@dg.asset(
    deps=[cleaned_kpis],
    group_name="modeling",
    kinds={"python", "pandas"},
    owners=OWNERS,
    tags=_tags("gold"),
)
def kpi_features(store: KpiStore) -> dg.MaterializeResult:
    """Per-point features of every KPI (rolling statistics, lags, calendar and holidays).

    For people exploring the data; the detector derives the features it needs itself.
    """
    cleaned, frequencies = pipeline.load_cleaned(store.engine())
    features = pipeline.feature_table(cleaned, frequencies, get_settings().holiday_country)
    _log("kpi_features", f"{len(features)} rows x {len(features.columns)} columns")
    return dg.MaterializeResult(
        metadata={
            "rows": len(features),
            "columns": dg.MetadataValue.json(list(features.columns)),
            "preview": _markdown(features.tail(PREVIEW_ROWS)),
        }
    )


@dg.asset(
    deps=[cleaned_kpis],
    group_name="modeling",
    kinds={"python", "prophet", "scikit-learn"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata=_table(tables.kpi_models),
    check_specs=[dg.AssetCheckSpec(
        "every_kpi_trained_without_error", asset="kpi_models",
        description="No KPI's training failed with an error in this run (each failure is "
        "recorded with its reason; every other KPI is trained, and the next run tries again).",
    )],
)
def kpi_models(store: KpiStore, config: ModelTrainingConfig) -> dg.MaterializeResult:
    """The model registry (``kpi_models``): a Prophet + Isolation Forest ensemble per KPI.

    New KPIs get walk-forward versions over their history; known KPIs one retrain on every
    scored point once newer points have been scored. Too little history is reported, not failed.
    """
    engine = store.engine()
    cleaned, _ = pipeline.load_cleaned(engine)
    results = pipeline.train_models(
        engine, cleaned, config.detector_config(), progress=_progress("kpi_models")
    )
    failed = {r.kpi: r.detail for r in results if r.status == "failed"}
    return dg.MaterializeResult(
        metadata={
            "versions_trained": sum(len(r.versions) for r in results),
            "kpis_trained": _kpis(results, "trained"),
            "kpis_up_to_date": _kpis(results, "up to date"),
            "insufficient_history": _kpis(results, "insufficient history"),
            "failed": dg.MetadataValue.json(failed),
            "summary": _summary(results),
            "models": _model_table(engine, results),
        },
        check_results=[_failures_check("every_kpi_trained_without_error", failed)],
    )


def _failures_check(name: str, failed: dict[str, str]) -> dg.AssetCheckResult:
    """Passes when no KPI failed; otherwise names each failed KPI with its reason."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"failed_kpis": len(failed), "threshold": 0,
                  "failures": dg.MetadataValue.json(failed)},
    )


@dg.asset(
    deps=[cleaned_kpis, kpi_models],
    group_name="scoring",
    kinds={"python", "postgres"},
    owners=OWNERS,
    tags=_tags("gold"),
    metadata=_table(tables.anomaly_scores),
    check_specs=[dg.AssetCheckSpec(
        "every_kpi_scored_without_error", asset="anomaly_scores",
        description="No KPI's scoring failed with an error in this run (its points stay "
        "unscored and the next run tries again; every other KPI is scored).",
    )],
)
def anomaly_scores(store: KpiStore) -> dg.MaterializeResult:
    """Scores of every point (``anomaly_scores``), each by the newest model trained before it.

    Only points newer than the last scored one are scored, and only they and the context before
    them are read and cleaned; nothing is fitted here.
    """
    engine = store.engine()
    # Every row this run writes carries this time, which tells its anomalies from older ones.
    scored_at = pd.Timestamp.now("UTC").floor("us")
    results = pipeline.score_latest(
        engine, scored_at=scored_at, progress=_progress("anomaly_scores")
    )
    new_by_severity = kpi_store.severity_counts(engine, scored_since=scored_at)
    failed = {r.kpi: r.error for r in results if r.error}
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
            "insufficient_history": dg.MetadataValue.json(
                [r.kpi for r in results if r.unscored and not r.scored]
            ),
            "summary": _summary(results),
            "newest_anomalies": _markdown(_anomaly_rows(kpi_store.newest_anomalies(
                engine, PREVIEW_ROWS
            ))),
            "last_score_per_kpi": _last_scores(engine),
            "dagster/row_count": kpi_store.table_counts(engine)["anomaly_scores"],
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
    """Anomaly events: runs of anomalous points (the ``anomalies`` view), with feedback."""
    events = pipeline.anomaly_events(store.engine())
    by_severity = events["severity"].value_counts()
    _log("anomalies", f"{len(events)} events")
    return dg.MaterializeResult(
        metadata={
            "events": len(events),
            "anomalous_points": int(events["points"].sum()) if len(events) else 0,
            "events_by_severity": dg.MetadataValue.json(
                {level: int(by_severity.get(level, 0)) for level in SEVERITIES}
            ),
            "newest_events": _markdown(events.head(PREVIEW_ROWS)),
        }
    )


ASSETS = [raw_kpis, cleaned_kpis, kpi_features, kpi_models, anomaly_scores, anomalies]


def _kpis(results: list[pipeline.KpiTraining], status: str) -> dg.MetadataValue:
    return dg.MetadataValue.json([r.kpi for r in results if r.status == status])


def _summary(results: list) -> dg.MetadataValue:
    """A markdown table with one row per KPI result."""
    rows = [
        {k: ", ".join(v) if isinstance(v, tuple) else v for k, v in asdict(r).items()}
        for r in results
    ]
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
                "trained at (UTC)": "" if model is None else model["trained_at"].strftime(
                    "%Y-%m-%d %H:%M"
                ),
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
