"""Model page: a KPI's training history and model versions, what Prophet expects it to do
(trend and seasonal components over the recent window) and its backtests, if any."""

import pandas as pd
import streamlit as st

from kpi_pipeline.config import get_settings
from kpi_pipeline.dashboard import data, ui
from kpi_pipeline.dashboard.charts import backtest_figure, components_figure, training_figure

VERSION_COLUMNS = {
    "version": "Version",
    "trained_at": "Trained at",
    "train_start": "Training from",
    "train_end": "Training to",
    "n_points": "Points",
    "residual_scale": "Residual scale",
    "in_sample_mae": "In-sample MAE",
    "deviation_tail_shape": "Tail shape",
    "repeat_rate": "Repeat rate",
}

url = data.database_url()
heading = st.empty()
kpi = ui.kpi_picker(url)
if kpi is None:
    st.stop()
heading.title(f"Models of {kpi}")
st.page_link(
    "views/kpi.py", label=f"Back to the {kpi} chart", icon=":material/show_chart:", query_params={ui.KPI_KEY: kpi}
)

versions = data.model_versions(url, kpi)
if versions.empty:
    st.info(f"No model is trained for {kpi} yet: `kpi-pipeline run` trains one once the KPI has enough history.")
else:
    newest = versions.iloc[0]
    trained_column, versions_column, points_column, scale_column = st.columns(4)
    trained_column.metric("Last trained (UTC)", ui.short_when(versions["trained_at"].max()))
    versions_column.metric("Model versions", len(versions))
    points_column.metric("Points in newest model", ui.number(newest["n_points"]))
    scale_column.metric("Residual scale", ui.number(newest.get("residual_scale")))
    st.caption(
        f"Newest version {newest['version']}: trained on {ui.when(newest['train_start'])} – "
        f"{ui.when(newest['train_end'])}. Each version scores the points after its training "
        "window, until the next one."
    )
    shown = [column for column in VERSION_COLUMNS if column in versions]
    st.dataframe(
        versions[shown].rename(columns=VERSION_COLUMNS),
        hide_index=True,
        column_config={
            label: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
            for label in ("Trained at", "Training from", "Training to")
        },
    )
    if len(versions) > 1:
        st.plotly_chart(training_figure(versions), key="training_chart")

    st.subheader("Parameters")
    stored = data.parameters(url, kpi)
    if stored.empty:
        st.caption(
            f"{kpi} trains with the default parameters. `kpi-pipeline tune --kpi {kpi}` searches its own; "
            f"`kpi-pipeline params pin {kpi} key=value` fixes one by hand (docs/tuning.md)."
        )
    else:
        pinned = {key for row in stored.itertuples() if row.source == "pinned" for key in row.params}
        rows = [
            {
                "Parameter": key,
                "Value": str(value),
                "Source": row.source,
                "Used": row.source == "pinned" or key not in pinned,
            }
            for row in stored.itertuples()
            for key, value in sorted(row.params.items())
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="parameters_table")
        for row in stored.itertuples():
            if row.source == "tuned":
                st.caption(
                    f"Tuned {ui.when(row.updated_at)}: {row.objective} {row.default_value:.4g} with the defaults, "
                    f"{row.objective_value:.4g} tuned, on its last folds; {int(row.trials)} trials "
                    f"({int(row.pruned_trials)} pruned). Pinned values win; each model version records the "
                    "parameters it was trained with, and new ones apply from the next retrain."
                )

    st.subheader("What Prophet expects")
    version = st.selectbox("Model version", list(versions["version"]), key="model_version")
    until = data.time_range(url, kpi)[1]
    parts = data.components(url, kpi, version, until)
    if parts is None:
        st.info(f"The stored artifacts of version {version} are incomplete; retrain to see them.")
    else:
        st.plotly_chart(components_figure(parts.frame, parts.log_space), key="components_chart")
        if parts.log_space:
            st.caption(
                "Modelled in log space: the trend is in KPI units, and each other component "
                "is the percentage by which it raises or lowers the KPI at that time."
            )
        st.caption(f"The {data.COMPONENT_WINDOW.days} days up to {ui.when(until)}.")

st.subheader("Backtests")
backtest_dir = get_settings().backtest_dir
runs = data.backtests(backtest_dir, kpi)
if not runs:
    st.info(
        f"No backtest of {kpi} under `{backtest_dir}`. Run `kpi-pipeline evaluate --data FILE.csv "
        f"--labels LABELS.csv --out {backtest_dir}/<name>` (the directory is `KPI_BACKTEST_DIR`)."
    )
for run in runs:
    with st.container(border=True):
        st.markdown(f"**{run.run}** · {run.corpus} · written {ui.when(run.finished)}")
        metrics = run.kpi_metrics or run.overall
        scope = f"{kpi} alone" if run.kpi_metrics else "whole run"
        columns = st.columns(4)
        for column, name in zip(columns, ("precision", "recall", "f1")):
            value = metrics.get(name)
            column.metric(f"{name.capitalize()} ({scope})", "–" if value is None else f"{value:.3f}")
        columns[3].metric(
            "Incidents caught / missed / false",
            "/".join(str(metrics.get(key, "–")) for key in ("tp_events", "fn_events", "fp_events")),
        )
        st.plotly_chart(backtest_figure(run.scores), key=f"backtest_{run.run}")
