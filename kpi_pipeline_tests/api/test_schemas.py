"""The serialisers of the hot endpoints (kpi_pipeline/api/schemas.py: ``row_schema``) write
exactly what the response models would, from the store's rows."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from kpi_pipeline.api.schemas import (
    LATEST_SCORE_JSON,
    SCORE_RESPONSE_JSON,
    SCORE_SERIES_JSON,
    IngestCounts,
    LatestScore,
    ScoreResponse,
    ScoreSeries,
)
from kpi_pipeline.detection.ensemble import SCORE_COLUMNS
from kpi_pipeline.api.realtime import RealtimeScores

UTC = dt.timezone.utc


def point(**changes) -> dict:
    row = {
        "ts": dt.datetime(2025, 3, 1, 12, 0, 0, 250, tzinfo=UTC),
        "value": 10.5,
        "expected": 9.75,
        "lower": 8.0,
        "upper": 11.0,
        "score": 0.61,
        "is_anomaly": True,
        "severity": "medium",
        "flagged_by": "prophet,iforest",
        "model_version": 'v\u00e9 "1"',
    }
    return row | changes


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"value": None, "severity": None, "flagged_by": None},
        {"expected": float("nan"), "upper": float("inf")},
        {"ts": dt.datetime(2025, 3, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
    ],
)
def test_rows_serialise_as_the_response_models_do(changes):
    row = point(**changes)
    latest = row | {"kpi": "sales", "scored_at": dt.datetime(2025, 3, 2, tzinfo=UTC)}
    series = {"kpi": "sales", "points": [row, point()], "truncated": True}

    assert LATEST_SCORE_JSON(latest) == LatestScore.model_validate(latest).model_dump_json().encode()
    assert SCORE_SERIES_JSON(series) == ScoreSeries.model_validate(series).model_dump_json().encode()
    assert list(json.loads(LATEST_SCORE_JSON(latest))) == list(LatestScore.model_fields)


@pytest.mark.parametrize("persisted", [None, IngestCounts(inserted=1, updated=0, unchanged=2)])
def test_realtime_scores_serialise_as_the_response_model_does(persisted):
    rows = [point(), point(expected=float("nan"), severity=None, is_anomaly=False)]
    columns = {name: np.array([row.get(name, 0.25) for row in rows]) for name in SCORE_COLUMNS}
    columns["ts"] = [row["ts"] for row in rows]
    # With the detector's components, which are not reported.
    records = RealtimeScores("sales", "v1", columns).records()
    answer = {"kpi": "sales", "model_version": "v1", "points": records, "persisted": persisted}

    assert SCORE_RESPONSE_JSON(answer) == ScoreResponse.model_validate(answer).model_dump_json().encode()
