"""The asset graph: raw observations -> cleaned series -> models -> scores -> anomaly events.

Assets are thin: each reads from the store through the ``store`` resource, calls
``kpi_pipeline.pipeline`` (which calls ``detection`` and ``store``), and returns metadata. The
data itself lives in the store's tables, so assets pass nothing through IO managers and each
re-reads what it needs. Progress goes to ``get_dagster_logger``, which Dagster records in the
run's event log and the CLI prints.
"""

from dataclasses import asdict

import dagster as dg
import pandas as pd
from pydantic import Field

from kpi_pipeline import pipeline
from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig
from kpi_pipeline.store import SEVERITIES, list_kpis, observations_version

PREVIEW_ROWS = 10
"""Rows shown in markdown previews."""

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
    max_train_points: int = Field(
        default=_DEFAULTS.max_train_points,
        description="Most recent points a model learns from.",
    )
    event_merge_gap: int = Field(
        default=_DEFAULTS.event_merge_gap,
        description="Quiet points allowed inside one anomaly event.",
    )

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            threshold=self.threshold,
            min_train_points=self.min_train_points,
            max_train_points=self.max_train_points,
            event_merge_gap=self.event_merge_gap,
            prophet=ProphetConfig(holidays_country=get_settings().holiday_country),
        )


@dg.observable_source_asset(
    # An observable source asset takes its description from here, not from the docstring.
    description="Raw KPI observations in `kpi_observations`, written by `kpi-pipeline ingest` "
    "and the API. The data version changes whenever a row is added or a value corrected.",
    group_name="ingestion",
    # observable_source_asset has no `kinds` argument; this is the tag `kinds` would set.
    tags={"dagster/kind/postgres": ""},
)
def raw_kpis(store: KpiStore) -> dg.ObserveResult:
    engine = store.engine()
    return dg.ObserveResult(
        data_version=dg.DataVersion(observations_version(engine)),
        metadata={"kpis": len(list_kpis(engine))},
    )


@dg.asset(deps=[raw_kpis], group_name="ingestion", kinds={"python", "pandas"})
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


@dg.asset(deps=[cleaned_kpis], group_name="modeling", kinds={"python", "pandas"})
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
    deps=[cleaned_kpis], group_name="modeling", kinds={"python", "prophet", "scikit-learn"}
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
    return dg.MaterializeResult(
        metadata={
            "versions_trained": sum(len(r.versions) for r in results),
            "kpis_trained": _kpis(results, "trained"),
            "kpis_up_to_date": _kpis(results, "up to date"),
            "insufficient_history": _kpis(results, "insufficient history"),
            "summary": _summary(results),
        }
    )


@dg.asset(deps=[cleaned_kpis, kpi_models], group_name="scoring", kinds={"python", "postgres"})
def anomaly_scores(store: KpiStore) -> dg.MaterializeResult:
    """Scores of every point (``anomaly_scores``), each by the newest model trained before it.

    Only points newer than the last scored one are scored; nothing is fitted here.
    """
    engine = store.engine()
    cleaned, _ = pipeline.load_cleaned(engine)
    results = pipeline.score_new_points(engine, cleaned, progress=_progress("anomaly_scores"))
    return dg.MaterializeResult(
        metadata={
            "points_scored": sum(r.scored for r in results),
            "anomalies": sum(r.anomalies for r in results),
            "unscored_points": sum(r.unscored for r in results),
            "kpis_scored": dg.MetadataValue.json([r.kpi for r in results if r.scored]),
            # KPIs with new points but no model trained before any of them.
            "insufficient_history": dg.MetadataValue.json(
                [r.kpi for r in results if r.unscored and not r.scored]
            ),
            "summary": _summary(results),
        }
    )


@dg.asset(deps=[anomaly_scores], group_name="scoring", kinds={"postgres"})
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


def _markdown(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_(none)_")


def _log(asset: str, message: str) -> None:
    dg.get_dagster_logger().info(f"{asset}: {message}")


def _progress(asset: str) -> pipeline.Progress:
    return lambda message: _log(asset, message)
