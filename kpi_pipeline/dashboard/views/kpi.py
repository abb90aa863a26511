"""KPI page: actual values against the expected band with anomalies by severity, the anomaly
table for the range, and triage (label anomalies as real incidents or false alarms)."""

import pandas as pd
import streamlit as st

from kpi_pipeline.dashboard import data, ui
from kpi_pipeline.dashboard.charts import kpi_figure
from kpi_pipeline.store import SEVERITIES
from kpi_pipeline.store.dashboard import relative_deviation

RANGES = {
    "24 h": pd.Timedelta(hours=24),
    "7 d": pd.Timedelta(days=7),
    "14 d": pd.Timedelta(days=14),
    "30 d": pd.Timedelta(days=30),
    "90 d": pd.Timedelta(days=90),
    "All": None,
    "Custom": None,
}
DEFAULT_RANGE = "14 d"
FEEDBACK_FILTERS = {
    "any": None,
    "not labelled yet": "",
    "true positive": "true_positive",
    "false positive": "false_positive",
}
FLASH_KEY = "kpi_feedback_message"
NOTE_KEY = "kpi_feedback_note"


def _pick_range(first: pd.Timestamp, last: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The range picked above the chart; presets end at the KPI's newest point."""
    choice = st.segmented_control("Time range", list(RANGES), default=DEFAULT_RANGE, required=True, key="kpi_range")
    if choice != "Custom":
        span = RANGES[choice]
        return (first if span is None else max(first, last - span)), last
    picked = st.date_input(
        "From / to (UTC dates)",
        value=(max(first, last - RANGES[DEFAULT_RANGE]).date(), last.date()),
        min_value=first.date(),
        max_value=last.date(),
    )
    if len(picked) != 2:
        st.info("Pick the last day of the range too.")
        st.stop()
    start = pd.Timestamp(picked[0], tz="UTC")
    return start, pd.Timestamp(picked[1], tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta("1us")


def _save_feedback(url: str, kpi: str, stamps: list[pd.Timestamp], label: str) -> None:
    """Button callback: runs before the rerun, so the page redraws with the new labels."""
    data.save_feedback(url, kpi, stamps, label, st.session_state.get(NOTE_KEY, ""))
    st.session_state[NOTE_KEY] = ""
    points = "point" if len(stamps) == 1 else "points"
    st.session_state[FLASH_KEY] = f"Recorded {label.replace('_', ' ')} for {len(stamps)} {points} of {kpi}."


url = data.database_url()
heading = st.empty()
picker_column, range_column = st.columns([1, 2], vertical_alignment="bottom")
with picker_column:
    kpi = ui.kpi_picker(url)
if kpi is None:
    st.stop()
heading.title(kpi)
first, last = data.time_range(url, kpi)
with range_column:
    since, until = _pick_range(first, last)
series = data.series(url, kpi, since, until)
scored = series[series["expected"].notna()]

value_column, expected_column, status_column, count_column = st.columns(4)
if scored.empty:
    st.info(
        f"No point of {kpi} is scored yet (too little history for a first model, or "
        "`kpi-pipeline run` has not run since it arrived): only its values are shown."
    )
else:
    latest = scored.iloc[-1]
    off = relative_deviation(scored["value"].tail(1), scored["expected"].tail(1)).iloc[0]
    value_column.metric(f"Latest value, {ui.short_when(latest['ts'])}", ui.number(latest["value"]))
    expected_column.metric(
        "Expected",
        ui.number(latest["expected"]),
        delta=None if pd.isna(off) else f"{off:+.1%} off",
        delta_color="off",
    )
    status_column.metric("Latest point", str(latest["severity"]).capitalize() if latest["is_anomaly"] else "OK")
    count_column.metric("Anomalous points in range", int(series["is_anomaly"].sum()))

st.plotly_chart(kpi_figure(series, kpi), key="kpi_chart", config={"displaylogo": False})
st.caption(
    f"{ui.when(since)} – {ui.when(until)}. Drag to zoom, double-click to reset. The band is where "
    "99% of normal points fall; markers are anomalies by severity, grey ones false alarms."
)
limit = data.threshold(url, kpi)
if limit is not None:
    raised = (
        f" + {limit.raised_by:.2f} from {limit.false_positives} false positive"
        f"{'s' * (limit.false_positives != 1)} (at most {limit.cap:.2f}) = {limit.effective:.2f}"
        if limit.raised_by > 0
        else " (no false positives raise it)"
    )
    st.caption(
        f"Anomaly threshold: {limit.base:.2f}{raised}, in surprise units (-log10 of the tail "
        f"probability). False positives raise it, fading with age; `kpi-pipeline thresholds reset {kpi}` "
        "undoes it (docs/adaptive-thresholds.md)."
    )
st.page_link(
    "views/model.py",
    label=f"Models and backtests of {kpi}",
    icon=":material/model_training:",
    query_params={ui.KPI_KEY: kpi},
)

st.subheader("Anomalies in this range")
severity_column, feedback_column = st.columns(2)
min_severity = severity_column.selectbox("Severity at least", ("any", *SEVERITIES), key="kpi_min_severity")
feedback_filter = feedback_column.selectbox("Feedback", list(FEEDBACK_FILTERS), key="kpi_feedback_filter")
found = data.anomalies(url, kpi, since, until, None if min_severity == "any" else min_severity)
wanted = FEEDBACK_FILTERS[feedback_filter]
if wanted is not None:
    found = found[found["feedback"].fillna("") == wanted]

message = st.session_state.pop(FLASH_KEY, None)
if message:
    st.success(message)

if found.empty:
    filtered = min_severity != "any" or wanted is not None
    st.info(
        f"No anomalies for {kpi} in this range"
        + (" match these filters." if filtered else ": every point was within expectations.")
    )
    st.stop()

found = found.reset_index(drop=True)
table = pd.DataFrame(
    {
        "Time": found["ts"],
        "Value": found["value"],
        "Expected": found["expected"],
        "Deviation": relative_deviation(found["value"], found["expected"]) * 100,
        "Score": found["score"],
        "Severity": found["severity"],
        "Flagged by": found["flagged_by"],
        "Prophet score": found["prophet_score"],
        "IForest score": found["iforest_score"],
        "Feedback": found["feedback"].fillna("").str.replace("_", " "),
        "Note": found["feedback_note"].fillna(""),
    }
)
selection = st.dataframe(
    table,
    key="anomaly_table",
    hide_index=True,
    on_select="rerun",
    selection_mode="multi-row",
    column_config={
        "Time": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        "Value": st.column_config.NumberColumn(format="%.4g"),
        "Expected": st.column_config.NumberColumn(format="%.4g"),
        "Deviation": st.column_config.NumberColumn(format="%+.0f%%"),
        "Score": st.column_config.NumberColumn(format="%.2f"),
        "Prophet score": st.column_config.NumberColumn(format="%.2f"),
        "IForest score": st.column_config.NumberColumn(format="%.2f"),
    },
)

chosen = found.iloc[selection.selection.rows]
if chosen.empty:
    st.caption("Select anomalies in the table to label them as real incidents or false alarms.")
    st.stop()
stamps = list(chosen["ts"])
with st.container(border=True):
    st.markdown(
        f"**Label {len(stamps)} selected point{'s' if len(stamps) > 1 else ''}:** "
        + ", ".join(ui.when(ts) for ts in stamps[:5])
        + (" …" if len(stamps) > 5 else "")
    )
    st.text_input("Note (optional)", key=NOTE_KEY)
    true_column, false_column = st.columns(2)
    true_column.button(
        "Real incident (true positive)",
        icon=":material/check:",
        key="label_true_positive",
        on_click=_save_feedback,
        args=(url, kpi, stamps, "true_positive"),
    )
    false_column.button(
        "False alarm (false positive)",
        icon=":material/close:",
        key="label_false_positive",
        on_click=_save_feedback,
        args=(url, kpi, stamps, "false_positive"),
    )
