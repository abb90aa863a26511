"""Scores, feedback and the anomalies view (kpi_pipeline/store/scores.py), on both databases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.store import (
    last_scored_ts,
    load_anomalies,
    load_scores,
    set_feedback,
    table_counts,
    upsert_scores,
)

DAY = pd.Timestamp("2024-05-01", tz="UTC")


def scores(kpi: str, rows: list[tuple[int, float | None, bool, str | None]]) -> pd.DataFrame:
    """Score rows from (day offset, value, is_anomaly, severity)."""
    return pd.DataFrame(
        {
            "kpi": kpi,
            "ts": [DAY + pd.Timedelta(days=day) for day, *_ in rows],
            "value": [np.nan if value is None else value for _, value, _, _ in rows],
            "expected": 10.0,
            "score": [0.9 if anomaly else 0.1 for _, _, anomaly, _ in rows],
            "is_anomaly": [anomaly for _, _, anomaly, _ in rows],
            "severity": [severity for *_, severity in rows],
            "flagged_by": ["prophet,iforest" if anomaly else None for _, _, anomaly, _ in rows],
            "model_version": "v1",
        }
    )


def test_scores_upsert_is_idempotent_and_keeps_null_values(migrated_engine):
    df = scores("sales", [(0, 10.0, False, None), (1, None, True, "high"), (2, 30.0, True, "low")])
    df.loc[1, "flagged_by"] = "gap"

    assert upsert_scores(migrated_engine, df) == 3
    assert upsert_scores(migrated_engine, df) == 3
    assert table_counts(migrated_engine)["anomaly_scores"] == 3

    loaded = load_scores(migrated_engine)
    assert loaded["ts"].tolist() == df["ts"].tolist()
    assert np.isnan(loaded.loc[1, "value"]) and loaded.loc[1, "flagged_by"] == "gap"
    assert loaded["is_anomaly"].tolist() == [False, True, True]
    assert pd.isna(loaded.loc[0, "severity"]) and pd.isna(loaded.loc[0, "lower"])
    assert str(loaded["scored_at"].dtype) == "datetime64[us, UTC]"
    assert loaded["scored_at"].notna().all()


def test_rescoring_a_point_replaces_its_score(migrated_engine):
    upsert_scores(migrated_engine, scores("sales", [(0, 10.0, True, "critical")]))
    upsert_scores(migrated_engine, scores("sales", [(0, 10.0, False, None)]))

    loaded = load_scores(migrated_engine)
    assert len(loaded) == 1
    assert not loaded.loc[0, "is_anomaly"] and pd.isna(loaded.loc[0, "severity"])


def test_load_scores_filters(migrated_engine):
    sales = [(0, 1.0, False, None), (1, 2.0, True, "low"), (2, 3.0, True, "low")]
    upsert_scores(migrated_engine, scores("sales", sales))
    upsert_scores(migrated_engine, scores("orders", [(0, 1.0, True, "low")]))

    recent_sales = load_scores(migrated_engine, kpis=["sales"], since=DAY + pd.Timedelta(days=1))
    assert recent_sales["value"].tolist() == [2.0, 3.0]
    assert load_scores(migrated_engine, until=DAY)["kpi"].tolist() == ["orders", "sales"]
    anomalous = load_scores(migrated_engine, only_anomalies=True)
    assert anomalous[["kpi", "value"]].values.tolist() == [["orders", 1.0], ["sales", 2.0], ["sales", 3.0]]
    assert last_scored_ts(migrated_engine) == {"sales": DAY + pd.Timedelta(days=2), "orders": DAY}


def test_invalid_score_frames_are_refused(migrated_engine):
    valid = scores("sales", [(0, 1.0, False, None)])
    with pytest.raises(ValueError, match="unknown columns"):
        upsert_scores(migrated_engine, valid.assign(extra=1))
    with pytest.raises(ValueError, match="missing"):
        upsert_scores(migrated_engine, valid.drop(columns="is_anomaly"))
    with pytest.raises(ValueError, match="severities"):
        upsert_scores(migrated_engine, scores("sales", [(0, 1.0, True, "severe")]))
    assert load_scores(migrated_engine).empty


def test_anomalies_view_lists_anomalies_newest_first_with_feedback(migrated_engine):
    sales = [(0, 1.0, True, "low"), (1, 2.0, False, None), (2, 3.0, True, "high")]
    upsert_scores(migrated_engine, scores("sales", sales))

    set_feedback(migrated_engine, "sales", "2024-05-03T02:00:00+02:00", "false_positive", note="promo")
    anomalies = load_anomalies(migrated_engine)

    assert anomalies["ts"].tolist() == [DAY + pd.Timedelta(days=2), DAY]
    assert anomalies["feedback"].tolist()[0] == "false_positive"
    assert anomalies["feedback_note"].tolist()[0] == "promo"
    assert pd.isna(anomalies.loc[1, "feedback"])

    set_feedback(migrated_engine, "sales", DAY + pd.Timedelta(days=2), "true_positive")
    assert load_anomalies(migrated_engine)["feedback"].tolist()[0] == "true_positive"
    assert table_counts(migrated_engine)["anomaly_feedback"] == 1
    with pytest.raises(ValueError, match="label"):
        set_feedback(migrated_engine, "sales", DAY, "maybe")


def test_min_severity_keeps_that_level_and_above(migrated_engine):
    levels = ["low", "medium", "high", "critical", None]
    upsert_scores(migrated_engine, scores("sales", [(day, 1.0, True, level) for day, level in enumerate(levels)]))
    upsert_scores(migrated_engine, scores("orders", [(3, 1.0, True, "critical")]))

    severe = load_anomalies(migrated_engine, kpi="sales", min_severity="high")
    assert severe["severity"].tolist() == ["critical", "high"]
    assert len(load_anomalies(migrated_engine, min_severity="low")) == 5
    assert len(load_anomalies(migrated_engine, kpi="sales")) == 5
    window = load_anomalies(migrated_engine, since=DAY + pd.Timedelta(days=1), until=DAY + pd.Timedelta(days=2))
    assert window["severity"].tolist() == ["high", "medium"]
    with pytest.raises(ValueError, match="min_severity"):
        load_anomalies(migrated_engine, min_severity="severe")


def test_score_windows_hold_each_kpis_own_rows_whatever_their_names(migrated_engine):
    from kpi_pipeline.store.scoring import load_score_windows

    # Names that sort between one another: a window of "a" must not reach into "a b" or "aa".
    names = ["a", "a b", "a_", "aa", "ab", "A"]
    upsert_scores(
        migrated_engine, pd.concat([scores(name, [(d, float(d), False, None) for d in range(5)]) for name in names])
    )
    day = pd.Timedelta(days=1)

    windows = load_score_windows(
        migrated_engine,
        {"a": (DAY + day, DAY + 3 * day), "aa": (DAY + 2 * day, DAY + 2 * day), "ab": (DAY + 9 * day, DAY + 12 * day)},
    )

    got = [(kpi, int((ts - DAY) / day)) for kpi, ts in zip(windows["kpi"], windows["ts"], strict=True)]
    assert got == [("a", 1), ("a", 2), ("a", 3), ("aa", 2)]
    assert str(windows["ts"].dtype) == "datetime64[us, UTC]"
