"""What the dashboard pages show, read through ``kpi_pipeline.store`` and cached for a short TTL.

Every cached function takes the database URL as its first argument, so two databases never
share an entry. Results live ``Settings.dashboard_cache_seconds``; writing feedback clears the
entries it changes, and the sidebar's refresh button clears them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
import streamlit as st

from kpi_pipeline import pipeline, store
from kpi_pipeline.config import get_settings
from kpi_pipeline.store import dashboard as queries
from kpi_pipeline.store import groups as group_store

TTL = get_settings().dashboard_cache_seconds

COMPONENT_WINDOW = pd.Timedelta(days=14)
"""How much recent history the Prophet components view covers."""


def database_url() -> str:
    return get_settings().resolved_database_url()


def masked_url(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


@st.cache_resource(show_spinner=False)
def engine(url: str) -> sa.Engine:
    """One pooled engine per database for the whole server; the schema is brought up to date
    so a fresh database shows "no data yet" instead of a missing-table error."""
    created = store.make_engine(url)
    store.migrate(created)
    return created


@st.cache_data(ttl=TTL, show_spinner=False)
def kpi_names(url: str) -> list[str]:
    return store.list_kpi_names(engine(url))


@st.cache_data(ttl=TTL, show_spinner=False)
def overview(url: str, page: int, page_size: int, sort: str, search: str) -> queries.OverviewPage:
    return store.kpi_overview(engine(url), page=page, page_size=page_size, sort=sort, search=search or None)


@st.cache_data(ttl=TTL, show_spinner=False)
def sparklines(url: str, kpis: tuple[str, ...], since: pd.Timestamp, until: pd.Timestamp) -> dict[str, list[float]]:
    return store.sparklines(engine(url), kpis, since, until)


@st.cache_data(ttl=TTL, show_spinner=False)
def kpi_failures(url: str) -> pd.DataFrame:
    """The KPIs whose training or scoring failed in their last attempt, with the reason."""
    return store.load_kpi_failures(engine(url))


@st.cache_data(ttl=TTL, show_spinner=False)
def ongoing_outages(url: str, now: pd.Timestamp) -> pd.DataFrame:
    """KPIs that had stopped reporting by ``now`` (``KPI_OUTAGE_AFTER_INTERVALS`` of their
    intervals without a point)."""
    return store.ongoing_outages(engine(url), now, get_settings().outage_after_intervals)


@st.cache_data(ttl=TTL, show_spinner=False)
def severity_counts(url: str, since: pd.Timestamp, until: pd.Timestamp, kind: str | None = "anomaly") -> dict[str, int]:
    return store.severity_counts(engine(url), since=since, until=until, kind=kind)


@st.cache_data(ttl=TTL, show_spinner=False)
def time_range(url: str, kpi: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    return store.kpi_time_range(engine(url), kpi)


@st.cache_data(ttl=TTL, show_spinner=False)
def series(url: str, kpi: str, since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    return store.kpi_series(engine(url), kpi, since, until)


@st.cache_data(ttl=TTL, show_spinner=False)
def anomalies(url: str, kpi: str, since: pd.Timestamp, until: pd.Timestamp, min_severity: str | None) -> pd.DataFrame:
    return store.load_anomalies(engine(url), kpi, since, until, min_severity)


@st.cache_data(ttl=TTL, show_spinner=False)
def model_versions(url: str, kpi: str) -> pd.DataFrame:
    return store.model_versions(engine(url), kpi)


@st.cache_data(ttl=TTL, show_spinner=False)
def threshold(url: str, kpi: str) -> pipeline.KpiThreshold | None:
    """``kpi``'s threshold with what analysts' false positives raise it by (None: no model)."""
    return pipeline.kpi_thresholds(engine(url), [kpi]).get(kpi)


@st.cache_data(ttl=TTL, show_spinner=False)
def parameters(url: str, kpi: str) -> pd.DataFrame:
    """The KPI's stored parameter overrides, tuned and pinned (``store.load_parameter_rows``)."""
    return store.load_parameter_rows(engine(url), [kpi])


def save_feedback(url: str, kpi: str, stamps: list[pd.Timestamp], label: str, note: str) -> None:
    """Label anomalous points (the store the CLI and API use) and drop the cached views of them."""
    for ts in stamps:
        store.set_feedback(engine(url), kpi, ts, label, note or None)
    series.clear()
    anomalies.clear()
    threshold.clear()


def clear_caches() -> None:
    st.cache_data.clear()


# -- the model view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Components:
    """Prophet's decomposition of a KPI's expected value over a recent window."""

    frame: pd.DataFrame
    """``ds`` then one column per component the model has (trend, daily, weekly, yearly,
    holidays) and ``yhat``, in model space."""
    log_space: bool
    """Model space is log(value): components multiply the KPI instead of adding to it."""


@st.cache_data(ttl=TTL, show_spinner=False)
def components(url: str, kpi: str, version: str, until: pd.Timestamp) -> Components | None:
    """Prophet components of a registered model version over the ``COMPONENT_WINDOW`` ending at
    ``until``, on the model's sampling grid; None if the version's artifacts are missing."""
    # Imported here: Prophet takes seconds to import and only this view needs it.
    from kpi_pipeline.detection.ensemble import EnsembleDetector

    artifacts = store.model_artifacts(engine(url), kpi, version)
    if not {"ensemble", *EnsembleDetector.COMPONENT_KINDS} <= set(artifacts):
        return None
    detector = EnsembleDetector.from_artifacts(artifacts)
    step = detector.freq_ or pd.Timedelta(hours=1)
    periods = max(2, int(COMPONENT_WINDOW / step) + 1)
    grid = pd.date_range(end=until, periods=periods, freq=step)
    return Components(detector.prophet_.components(grid), bool(detector.log_space_))


# -- backtests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backtest:
    """One ``kpi-pipeline evaluate`` run that covered a KPI."""

    run: str
    """The run's directory, relative to the backtest directory."""
    finished: pd.Timestamp
    """When its summary was written."""
    corpus: str
    overall: dict
    """Event metrics over the whole run (precision, recall, f1, tp/fn/fp_events)."""
    kpi_metrics: dict | None
    """Event metrics of this KPI alone, where the run reports them (labelled KPI files)."""
    scores: pd.DataFrame
    """The run's per-point output for the KPI: timestamp, value, anomaly_score, is_anomaly,
    alert."""


@st.cache_data(ttl=TTL, show_spinner=False)
def backtests(backtest_dir: Path, kpi: str) -> list[Backtest]:
    """Every evaluate run under ``backtest_dir`` with scores for ``kpi``, newest first.

    ``kpi-pipeline evaluate --out DIR`` writes ``DIR/summary.json`` and ``DIR/<series>.csv``;
    any ``DIR`` below ``backtest_dir`` counts.
    """
    root = Path(backtest_dir)
    if not root.is_dir():
        return []
    found = []
    for summary_path in root.rglob("summary.json"):
        run_dir = summary_path.parent
        scores_path = (run_dir / f"{kpi}.csv").resolve()
        # A KPI name is data: never let it point outside the run's directory.
        if not scores_path.is_relative_to(run_dir.resolve()) or not scores_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text())
            scores = pd.read_csv(scores_path, parse_dates=["timestamp"])
        except (OSError, ValueError):
            continue  # a run still being written or a foreign file: not a backtest to show
        found.append(
            Backtest(
                run=str(run_dir.relative_to(root)) if run_dir != root else ".",
                finished=pd.Timestamp(summary_path.stat().st_mtime, unit="s", tz="UTC"),
                corpus=str(summary.get("corpus", "")),
                overall=summary.get("events", {}),
                kpi_metrics=summary.get("per_kpi", {}).get(kpi),
                scores=scores,
            )
        )
    return sorted(found, key=lambda backtest: backtest.finished, reverse=True)


@st.cache_data(ttl=TTL, show_spinner=False)
def kpi_groups(url: str) -> dict[str, tuple[str, ...]]:
    """The KPI groups the pipeline has judged, by name, with their members."""
    return {name: state.members for name, state in group_store.load_group_states(engine(url)).items()}


@st.cache_data(ttl=TTL, show_spinner=False)
def group_members(url: str, members: tuple[str, ...], since: pd.Timestamp | None) -> pd.DataFrame:
    return group_store.load_member_scores(engine(url), members, since=since)


@st.cache_data(ttl=TTL, show_spinner=False)
def group_events(url: str, group: str) -> pd.DataFrame:
    return group_store.load_group_events(engine(url), group)
