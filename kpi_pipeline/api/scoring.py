"""Real-time scoring for the API: ``pipeline.score_points`` does the work (the scoring step's
own context, grid and detector, nothing written); each worker keeps a ``pipeline.ScoringCache``
of detectors and cleaned recent observations. What is left here is the answer's shape."""

from __future__ import annotations

import pandas as pd


def as_records(scores: pd.DataFrame) -> list[dict]:
    """Score rows as plain Python values with missing values as None (JSON has no NaN)."""
    return scores.astype(object).where(scores.notna(), None).to_dict("records")
