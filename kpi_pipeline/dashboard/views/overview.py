"""Overview: every KPI as a row with a 7-day sparkline, its latest value against the expected
one, its status and its recent anomaly counts; searchable, sortable and paginated."""

import math

import pandas as pd
import streamlit as st

from kpi_pipeline.dashboard import data, ui
from kpi_pipeline.dashboard.charts import SEVERITY_COLORS
from kpi_pipeline.store import OVERVIEW_SORTS, SEVERITIES
from kpi_pipeline.store.dashboard import relative_deviation

PAGE_SIZES = (25, 50, 100)
SORT_LABELS = {
    "severity": "Severity (anomalous first)",
    "recency": "Most recent anomaly",
    "name": "Name",
}
PAGE_KEY = "overview_page"
SPARKLINE_DAYS = pd.Timedelta(days=7)
TIME_FORMAT = "%Y-%m-%d %H:%M"
FAILURES_SHOWN = 5
"""Failing KPIs named in the overview's warning (``kpi-pipeline status`` lists them all)."""

url = data.database_url()
st.title("KPI overview")
if not data.kpi_names(url):
    st.info(ui.NO_DATA)
    st.stop()


def warn_about(headline: str, items: list[str], command: str) -> None:
    """One warning naming the first ``FAILURES_SHOWN`` of ``items``; ``command`` lists them all."""
    more = f" … and {len(items) - FAILURES_SHOWN} more (`{command}`)" if len(items) > FAILURES_SHOWN else ""
    st.warning(f"{headline}: " + "; ".join(items[:FAILURES_SHOWN]) + more)


failures = data.kpi_failures(url)
if len(failures):
    # One KPI's failure never stops the others; the next run tries it again.
    warn_about(
        f"{failures['kpi'].nunique()} KPI(s) failing, the others are up to date",
        [
            f"**{row.kpi}** ({row.stage}: {row.reason}, since {ui.when(row.failing_since)}, {row.attempts} attempt(s))"
            for row in failures.itertuples(index=False)
        ],
        "kpi-pipeline status",
    )

search_column, sort_column, size_column = st.columns([3, 2, 1])
search = search_column.text_input("Search KPIs", placeholder="name contains …")
sort = sort_column.selectbox("Sort by", OVERVIEW_SORTS, format_func=SORT_LABELS.get)
page_size = size_column.selectbox("Per page", PAGE_SIZES, index=1)

page_number = st.session_state.get(PAGE_KEY, 1)
page = data.overview(url, page_number, page_size, sort, search)
if page.rows.empty and page.total and page_number > 1:
    # The search or page size changed under a page that no longer exists.
    st.session_state[PAGE_KEY] = page_number = 1
    page = data.overview(url, page_number, page_size, sort, search)

if page.as_of is not None:
    stopped = data.ongoing_outages(url, page.as_of)
    if len(stopped):
        # Judged at the newest scored point, as the rest of the page: a KPI that stopped while
        # the others went on (``kpi-pipeline outages`` judges at the current time).
        warn_about(
            f"{len(stopped)} KPI(s) stopped reporting",
            [
                f"**{row.kpi}** (no point since {ui.when(row.last_observed)}, {row.missing_points:,} missing)"
                for row in stopped.itertuples(index=False)
            ],
            "kpi-pipeline outages",
        )

if page.as_of is None:
    st.caption("Nothing is scored yet: run `kpi-pipeline run` to train the models and score.")
else:
    week = data.severity_counts(url, page.as_of - SPARKLINE_DAYS, page.as_of)
    day = data.severity_counts(url, page.as_of - pd.Timedelta(hours=24), page.as_of)
    kpis_column, day_column, week_column, worst_column = st.columns(4)
    kpis_column.metric("KPIs", len(data.kpi_names(url)))
    day_column.metric("Anomalous points, last 24 h", sum(day.values()))
    week_column.metric("Anomalous points, last 7 days", sum(week.values()))
    worst_column.metric("High or critical, last 7 days", week["high"] + week["critical"])
    outages = sum(data.severity_counts(url, page.as_of - SPARKLINE_DAYS, page.as_of, "outage").values())
    st.caption(
        f"As of {ui.when(page.as_of)}, the newest scored point. Last 7 days by severity: "
        + ", ".join(f"{week[level]} {level}" for level in reversed(SEVERITIES))
        + f"; outages (data missing), counted apart: {outages}"
    )

if page.rows.empty:
    st.info(f"No KPI name contains “{search}”.")
    st.stop()

rows = page.rows
lines = (
    data.sparklines(url, tuple(rows["kpi"]), page.as_of - SPARKLINE_DAYS, page.as_of) if page.as_of is not None else {}
)
table = pd.DataFrame(
    {
        "KPI": rows["kpi"],
        "Status": [
            ui.status(anomalous, severity, pd.notna(ts))
            for anomalous, severity, ts in zip(rows["is_anomaly"], rows["severity"], rows["ts"])
        ],
        "Last 7 days": [lines.get(kpi, []) for kpi in rows["kpi"]],
        "Latest point": rows["ts"].dt.strftime(TIME_FORMAT),
        "Value": rows["value"],
        "Expected": rows["expected"],
        "Deviation": relative_deviation(rows["value"], rows["expected"]) * 100,
        "Score": rows["score"],
        "24 h": rows["anomalies_24h"],
        "7 d": rows["anomalies_7d"],
        "Outages 7 d": rows["outages_7d"],
        # Text, so a KPI without one shows an empty cell; ISO order still sorts by time.
        "Last anomaly": rows["last_anomaly"].dt.strftime(TIME_FORMAT).fillna(""),
    }
)


def _status_style(label: str) -> str:
    for level in SEVERITIES:
        if label.endswith(level):
            text = "white" if level in ("high", "critical") else "black"
            return f"background-color: {SEVERITY_COLORS[level]}; color: {text}"
    return "color: #2a9d8f" if label == "ok" else "color: #8d99ae"


selection = st.dataframe(
    table.style.map(_status_style, subset=["Status"]),
    key="overview_table",
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    column_config={
        "KPI": st.column_config.TextColumn(pinned=True),
        "Status": st.column_config.TextColumn(width="medium"),
        "Last 7 days": st.column_config.LineChartColumn(width="medium", color="#1d3557"),
        "Latest point": st.column_config.TextColumn(help="Newest scored point (UTC)"),
        "Value": st.column_config.NumberColumn(format="%.4g"),
        "Expected": st.column_config.NumberColumn(format="%.4g"),
        "Deviation": st.column_config.NumberColumn(format="%+.0f%%"),
        "Score": st.column_config.ProgressColumn(
            min_value=0.0,
            max_value=1.0,
            format="%.2f",
            width="small",
            help="Anomaly score of the newest point (0.5 and above: anomalous)",
        ),
        "24 h": st.column_config.NumberColumn(help="Anomalous points in the last 24 hours"),
        "7 d": st.column_config.NumberColumn(help="Anomalous points in the last 7 days"),
        "Last anomaly": st.column_config.TextColumn(help="Newest anomaly in the last 7 days (UTC)"),
    },
)
st.caption("Select a row to open its KPI page.")
num_pages = max(1, math.ceil(page.total / page_size))
if num_pages > 1:
    st.pagination(num_pages, key=PAGE_KEY)
    st.caption(f"{page.total} KPIs, {page_size} per page.")

if selection.selection.rows:
    chosen = table["KPI"].iloc[selection.selection.rows[0]]
    st.switch_page("views/kpi.py", query_params={ui.KPI_KEY: chosen})
