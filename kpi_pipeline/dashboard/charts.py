"""Plotly figures of the dashboard, built from the store's frames (no Streamlit, no SQL here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kpi_pipeline.store import SEVERITIES
from kpi_pipeline.store.dashboard import relative_deviation

SEVERITY_COLORS = {
    "low": "#e3b505",
    "medium": "#f08a24",
    "high": "#d62828",
    "critical": "#6a040f",
}
FALSE_POSITIVE_COLOR = "#8d99ae"
ACTUAL_COLOR = "#1d3557"
EXPECTED_COLOR = "#2a9d8f"
BAND_COLOR = "rgba(42, 157, 143, 0.18)"

MAX_LINE_POINTS = 10_000
"""Lines are thinned to this many points so a long range stays responsive; anomaly markers
are never thinned."""


def _thinned(frame: pd.DataFrame) -> pd.DataFrame:
    step = int(np.ceil(len(frame) / MAX_LINE_POINTS))
    return frame.iloc[::step] if step > 1 else frame


def _layout(figure: go.Figure, height: int) -> go.Figure:
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "traceorder": "normal"},
        hovermode="closest",
        uirevision="keep",  # keep the user's zoom across reruns
    )
    return figure


def kpi_figure(series: pd.DataFrame, kpi: str) -> go.Figure:
    """Actual values, the expected line and band, and anomalies coloured by severity.

    ``series`` has the columns of ``store.kpi_series``. A confirmed false positive is drawn
    grey; a missing-data gap (no value) is marked on the expected line.
    """
    figure = go.Figure()
    lines = _thinned(series)
    scored = lines[lines["expected"].notna()]
    if len(scored):
        # The band is a filled area between the upper and lower traces.
        figure.add_scatter(
            x=scored["ts"],
            y=scored["upper"],
            mode="lines",
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            name="upper",
        )
        figure.add_scatter(
            x=scored["ts"],
            y=scored["lower"],
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=BAND_COLOR,
            name="expected band",
            hoverinfo="skip",
        )
        figure.add_scatter(
            x=scored["ts"],
            y=scored["expected"],
            mode="lines",
            name="expected",
            line={"color": EXPECTED_COLOR, "width": 1.5, "dash": "dash"},
            hovertemplate="expected %{y:,.4g}<extra></extra>",
        )
    figure.add_scatter(
        x=lines["ts"],
        y=lines["value"],
        mode="lines",
        name="actual",
        line={"color": ACTUAL_COLOR, "width": 1.6},
        hovertemplate="%{x|%Y-%m-%d %H:%M}<br>value %{y:,.4g}<extra></extra>",
    )
    flagged = series[series["is_anomaly"]]
    false_positive = flagged["feedback"] == "false_positive"
    for level in SEVERITIES:
        _add_markers(figure, flagged[(flagged["severity"] == level) & ~false_positive], level, SEVERITY_COLORS[level])
    _add_markers(figure, flagged[false_positive], "false positive", FALSE_POSITIVE_COLOR)
    figure.update_yaxes(title_text=kpi)
    return _layout(figure, height=470)


def _add_markers(figure: go.Figure, points: pd.DataFrame, name: str, color: str) -> None:
    if points.empty:
        return
    off = relative_deviation(points["value"], points["expected"])
    details = np.column_stack(
        [
            points["expected"].to_numpy(dtype=float),
            off.to_numpy(dtype=float) * 100,
            points["score"].to_numpy(dtype=float),
            points["severity"].fillna("").to_numpy(dtype=object),
            points["flagged_by"].fillna("").to_numpy(dtype=object),
            points["feedback"].fillna("no feedback").to_numpy(dtype=object),
        ]
    )
    figure.add_scatter(
        # A gap has no value; its marker sits on the expected line.
        x=points["ts"],
        y=points["value"].fillna(points["expected"]),
        mode="markers",
        name=name,
        customdata=details,
        marker={"color": color, "size": 11, "line": {"color": "white", "width": 1.5}},
        hovertemplate=(
            "<b>%{x|%Y-%m-%d %H:%M}</b><br>value %{y:,.4g} · expected %{customdata[0]:,.4g}"
            " (%{customdata[1]:+.0f}%)<br>score %{customdata[2]:.2f} · %{customdata[3]}"
            "<br>flagged by %{customdata[4]} · %{customdata[5]}<extra></extra>"
        ),
    )


def components_figure(frame: pd.DataFrame, log_space: bool) -> go.Figure:
    """One panel per Prophet component over time.

    In log space the trend is shown in KPI units and every other component as the percentage
    it multiplies the KPI by; otherwise all are in KPI units.
    """
    names = [c for c in frame.columns if c not in {"ds", "yhat"}]
    titles = [f"{name} ({'level' if name == 'trend' or not log_space else '% effect'})" for name in names]
    figure = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.06)
    for row, name in enumerate(names, start=1):
        values = frame[name].to_numpy(dtype=float)
        if log_space:
            values = np.exp(values) if name == "trend" else (np.exp(values) - 1) * 100
        figure.add_scatter(
            x=frame["ds"],
            y=values,
            mode="lines",
            name=name,
            showlegend=False,
            line={"color": EXPECTED_COLOR if name != "trend" else ACTUAL_COLOR, "width": 1.6},
            row=row,
            col=1,
        )
    return _layout(figure, height=170 * len(names) + 40)


def training_figure(versions: pd.DataFrame) -> go.Figure:
    """How the residual scale and the in-sample error moved across model versions."""
    ordered = versions.sort_values("train_end")
    figure = go.Figure()
    for column, color in (("residual_scale", ACTUAL_COLOR), ("in_sample_mae", EXPECTED_COLOR)):
        if column in ordered:
            figure.add_scatter(
                x=ordered["train_end"],
                y=ordered[column],
                mode="lines+markers",
                name=column.replace("_", " "),
                line={"color": color},
            )
    figure.update_xaxes(title_text="end of training window")
    return _layout(figure, height=300)


def backtest_figure(scores: pd.DataFrame, threshold: float = 0.5) -> go.Figure:
    """A backtest's values with the points it flagged, and its score against the threshold."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05)
    figure.add_scatter(
        x=scores["timestamp"],
        y=scores["value"],
        mode="lines",
        name="value",
        line={"color": ACTUAL_COLOR, "width": 1.2},
        row=1,
        col=1,
    )
    flagged = scores[scores["is_anomaly"].astype(bool)]
    figure.add_scatter(
        x=flagged["timestamp"],
        y=flagged["value"],
        mode="markers",
        name="flagged",
        marker={"color": SEVERITY_COLORS["high"], "size": 7},
        row=1,
        col=1,
    )
    figure.add_scatter(
        x=scores["timestamp"],
        y=scores["anomaly_score"],
        mode="lines",
        name="score",
        line={"color": EXPECTED_COLOR, "width": 1},
        row=2,
        col=1,
    )
    figure.add_hline(y=threshold, line={"color": SEVERITY_COLORS["high"], "dash": "dot"}, row=2, col=1)
    figure.update_yaxes(range=[0, 1], title_text="score", row=2, col=1)
    return _layout(figure, height=420)


GROUP_EVENT_COLOR = "rgba(214, 40, 40, 0.15)"


def group_figure(scores: pd.DataFrame, members: tuple[str, ...], events: pd.DataFrame) -> go.Figure:
    """One row per member (actual and expected), on one time axis, with the group events
    shaded across every row and each member's points where the group component fired marked."""
    figure = make_subplots(rows=len(members), cols=1, shared_xaxes=True, subplot_titles=members, vertical_spacing=0.04)
    for row, kpi in enumerate(members, start=1):
        points = _thinned(scores[scores["kpi"] == kpi])
        first = row == 1
        figure.add_trace(
            go.Scatter(
                x=points["ts"],
                y=points["expected"],
                name="expected",
                legendgroup="expected",
                showlegend=first,
                line={"color": EXPECTED_COLOR, "dash": "dot"},
            ),
            row=row,
            col=1,
        )
        figure.add_trace(
            go.Scatter(
                x=points["ts"],
                y=points["value"],
                name="actual",
                legendgroup="actual",
                showlegend=first,
                line={"color": ACTUAL_COLOR},
            ),
            row=row,
            col=1,
        )
        moved = scores[(scores["kpi"] == kpi) & (scores["multivariate_score"].fillna(0.0) >= 0.5)]
        figure.add_trace(
            go.Scatter(
                x=moved["ts"],
                y=moved["value"],
                mode="markers",
                name="moved in a group event",
                legendgroup="moved",
                showlegend=first,
                marker={"color": SEVERITY_COLORS["high"], "size": 8},
            ),
            row=row,
            col=1,
        )
    for event in events.itertuples(index=False):
        figure.add_vrect(x0=event.start, x1=event.end, fillcolor=GROUP_EVENT_COLOR, line_width=0, row="all", col=1)
    return _layout(figure, 180 * len(members) + 80)
