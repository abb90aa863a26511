"""The serialisers of the hot endpoints (kpi_pipeline/api/schemas.py: ``row_schema``) write
exactly what the response models would, from the store's rows."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from kpi_pipeline.api.schemas import (
    LATEST_SCORE_JSON,
    SCORE_SERIES_JSON,
    LatestScore,
    ScoreSeries,
)

UTC = dt.timezone.utc


def point(**changes) -> dict:
    row = {
        "ts": dt.datetime(2025, 3, 1, 12, 0, 0, 250, tzinfo=UTC), "value": 10.5,
        "expected": 9.75, "lower": 8.0, "upper": 11.0, "score": 0.61, "is_anomaly": True,
        "severity": "medium", "flagged_by": "prophet,iforest", "model_version": "v\u00e9 \"1\"",
    }
    return row | changes


@pytest.mark.parametrize(
    "changes",
    [{}, {"value": None, "severity": None, "flagged_by": None}, {"expected": float("nan"),
     "upper": float("inf")}, {"ts": dt.datetime(2025, 3, 1, 13, tzinfo=dt.timezone(
         dt.timedelta(hours=2)))}],
)
def test_rows_serialise_as_the_response_models_do(changes):
    row = point(**changes)
    latest = row | {"kpi": "sales", "scored_at": dt.datetime(2025, 3, 2, tzinfo=UTC)}
    series = {"kpi": "sales", "points": [row, point()], "truncated": True}

    assert LATEST_SCORE_JSON(latest) == LatestScore.model_validate(latest).model_dump_json(
    ).encode()
    assert SCORE_SERIES_JSON(series) == ScoreSeries.model_validate(series).model_dump_json(
    ).encode()
    assert list(json.loads(LATEST_SCORE_JSON(latest))) == list(LatestScore.model_fields)
