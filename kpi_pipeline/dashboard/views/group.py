"""Group page: a KPI group's members aligned in time, its group events shaded, and the list
of events with the members that moved (docs/multivariate.md)."""

import json

import pandas as pd
import streamlit as st

from kpi_pipeline.dashboard import data
from kpi_pipeline.dashboard.charts import group_figure
from kpi_pipeline.detection.multivariate import describe_members

WINDOWS = {"7 days": pd.Timedelta(days=7), "30 days": pd.Timedelta(days=30), "90 days": pd.Timedelta(days=90)}

url = data.database_url()
st.title("KPI groups")
declared = data.kpi_groups(url)
if not declared:
    st.info(
        "No KPI group has been judged yet. Declare groups in a YAML file, point `KPI_GROUPS_FILE` "
        "at it and run the pipeline (`kpi-pipeline groups suggest` proposes some)."
    )
    st.stop()
group = st.selectbox("Group", sorted(declared), key="group", bind="query-params")
window = st.segmented_control("Window", list(WINDOWS), default="30 days", key="group_window") or "30 days"
members = declared[group]
events = data.group_events(url, group)
newest = data.group_members(url, members, None)["ts"].max()
if pd.isna(newest):
    st.info(f"No member of {group} is scored yet.")
    st.stop()
since = newest - WINDOWS[window]
scores = data.group_members(url, members, since)
shown = events[(events["end"] >= since)]

left, middle, right = st.columns(3)
left.metric("Members", len(members))
middle.metric("Group events (all time)", len(events))
right.metric(f"Group events ({window})", len(shown))
st.plotly_chart(group_figure(scores, members, shown), key="group_chart")
st.caption(
    "Shaded: group events (the group's detector judged the members' joint residuals unlikely). "
    "Marked: the points of members that moved in them."
)
st.subheader("Group events")
if events.empty:
    st.info(f"No group event of {group} yet.")
else:
    table = pd.DataFrame(
        {
            "Start": events["start"],
            "End": events["end"],
            "Points": events["points"],
            "Peak score": events["peak_score"].round(3),
            "Members that moved": [describe_members(m) for m in events["members"]],
            "Members": [len(json.loads(m)) for m in events["members"]],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={name: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm") for name in ("Start", "End")},
    )
