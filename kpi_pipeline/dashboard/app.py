"""Entry script of the dashboard (``streamlit run`` target): page navigation and the sidebar."""

import streamlit as st

from kpi_pipeline.dashboard import ui

st.set_page_config(page_title="KPI anomalies", layout="wide", initial_sidebar_state="collapsed")

page = st.navigation(
    [
        st.Page("views/overview.py", title="Overview", url_path="overview", default=True),
        st.Page("views/kpi.py", title="KPI", url_path="kpi"),
        st.Page("views/model.py", title="Model", url_path="model"),
        st.Page("views/group.py", title="Groups", url_path="group"),
    ],
    position="top",
)
ui.sidebar()
page.run()
