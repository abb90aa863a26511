"""Reading an ``AppTest`` run: exceptions, texts, metrics and tables."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

import kpi_pipeline.dashboard

APP = Path(kpi_pipeline.dashboard.__file__).resolve().parent / "app.py"


def assert_no_exception(app: AppTest) -> None:
    assert not app.exception, [exception.value for exception in app.exception]


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def select_rows(app: AppTest, key: str, rows: list[int]) -> AppTest:
    """Select table rows the way a click does (AppTest cannot click into a data grid)."""
    app.session_state[key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return app.run()


def plotly_traces(app: AppTest, index: int = 0) -> dict[str, dict]:
    """The traces of the page's ``index``-th Plotly chart by name, numeric arrays decoded."""
    chart = app.get("plotly_chart")[index]
    traces = json.loads(chart.proto.spec)["data"]
    return {trace.get("name", ""): {k: _decoded(v) for k, v in trace.items()} for trace in traces}


def _decoded(value):
    # Plotly sends numpy arrays as typed arrays: {"dtype": "f8", "bdata": <base64>}.
    if isinstance(value, dict) and {"dtype", "bdata"} <= set(value):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return value
