"""Pieces every dashboard page shares: the sidebar, the KPI picker, labels and number formats."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kpi_pipeline.dashboard import data

NO_DATA = (
    "No KPIs in this database yet. Load some with `kpi-pipeline ingest FILE.csv`, then "
    "`kpi-pipeline run` to train the models and score the points."
)
KPI_KEY = "kpi"
"""Session key and URL query parameter of the selected KPI, shared by the KPI and Model pages."""


def sidebar() -> None:
    url = data.database_url()
    with st.sidebar:
        st.caption(f"Database: `{data.masked_url(url)}`")
        st.caption(f"Query results are reused for {data.TTL} s.")
        if st.button("Refresh data", icon=":material/refresh:"):
            data.clear_caches()


def kpi_picker(url: str) -> str | None:
    """The KPI selector (kept in the URL as ``?kpi=``); None, with a message, if there is none."""
    names = data.kpi_names(url)
    if not names:
        st.info(NO_DATA)
        return None
    return st.selectbox("KPI", names, key=KPI_KEY, bind="query-params")


def status(is_anomaly: bool, severity: object, scored: bool) -> str:
    if not scored:
        return "not scored yet"
    if is_anomaly:
        return f"anomalous · {severity}" if isinstance(severity, str) else "anomalous"
    return "ok"


def number(value: float) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.4g}"


def when(ts: pd.Timestamp | None) -> str:
    return "–" if ts is None or pd.isna(ts) else ts.strftime("%Y-%m-%d %H:%M UTC")


def short_when(ts: pd.Timestamp | None) -> str:
    """A time short enough for a metric tile (UTC, year left out)."""
    return "–" if ts is None or pd.isna(ts) else ts.strftime("%b %d, %H:%M")
