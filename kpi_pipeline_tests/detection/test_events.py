import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.calibration import score_from_surprise, surprise_from_score
from kpi_pipeline.detection.events import (
    opening_scores,
    OpenEvent,
    assign_events,
    event_id_for,
    open_event_from,
    summarize_events,
)

TS = pd.date_range("2025-01-01", periods=12, freq="h", tz="UTC")


def flags(pattern: str) -> np.ndarray:
    return np.array([c == "x" for c in pattern])


def ids_of(event_ids) -> list[str | None]:
    # pandas may hold "no event" as None or NaN depending on the column dtype.
    return [None if pd.isna(e) else e for e in event_ids]


def starts(event_ids) -> list[str | None]:
    """Each point's event as the HH:MM of its first point."""
    return [None if e is None else e.split("@", 1)[1][11:16] for e in ids_of(event_ids)]


def test_event_id_is_the_kpi_and_its_first_timestamp():
    assert event_id_for("sales", TS[3]) == "sales@2025-01-01T03:00:00+00:00"


def test_consecutive_flags_form_one_event_that_alerts_once():
    ids, alert = assign_events("sales", TS[:6], flags(".xxx.x"))
    assert starts(ids) == [None, "01:00", "01:00", "01:00", None, "05:00"]
    assert alert.tolist() == [False, True, False, False, False, True]


@pytest.mark.parametrize(
    "merge_gap, expected",
    [
        (0, ["00:00", None, None, "03:00", None, "05:00"]),
        (1, ["00:00", None, None, "03:00", None, "03:00"]),
        (2, ["00:00", None, None, "00:00", None, "00:00"]),
    ],
)
def test_merge_gap_allows_quiet_points_inside_one_event(merge_gap, expected):
    ids, alert = assign_events("k", TS[:6], flags("x..x.x"), merge_gap=merge_gap)
    assert starts(ids) == expected
    assert alert.sum() == len({e for e in expected if e})


def test_an_open_event_from_the_previous_batch_is_continued():
    previous = OpenEvent(event_id="k@earlier", quiet_points=1)
    ids, alert = assign_events("k", TS[:3], flags(".x."), merge_gap=2, open_event=previous)
    assert ids.tolist() == [None, "k@earlier", None]
    assert not alert.any()


def test_an_open_event_is_closed_once_the_quiet_run_exceeds_the_merge_gap():
    previous = OpenEvent(event_id="k@earlier", quiet_points=1)
    ids, alert = assign_events("k", TS[:3], flags("..x"), merge_gap=2, open_event=previous)
    assert ids[2] == event_id_for("k", TS[2])
    assert alert.tolist() == [False, False, True]


def scored(pattern: str, merge_gap: int, kpi: str = "k") -> pd.DataFrame:
    is_anomaly = flags(pattern)
    ts = TS[: len(pattern)]
    ids, alert = assign_events(kpi, ts, is_anomaly, merge_gap)
    return pd.DataFrame({"ts": ts, "is_anomaly": is_anomaly, "event_id": ids, "alert": alert})


def test_open_event_from_reports_the_last_event_and_its_quiet_points():
    rows = scored("x..xx.", merge_gap=2)
    assert open_event_from(rows, merge_gap=2) == OpenEvent(event_id_for("k", TS[0]), 1)


@pytest.mark.parametrize("pattern", ["", "....", "x..."])
def test_open_event_from_is_none_when_nothing_can_be_joined(pattern):
    assert open_event_from(scored(pattern, merge_gap=2), merge_gap=2) is None


@pytest.mark.parametrize("split", range(1, 12))
def test_batches_joined_by_open_event_match_one_pass(split):
    pattern, gap = "x.xx...x..xx", 2
    whole = scored(pattern, gap)
    first = scored(pattern[:split], gap)
    ids, alert = assign_events(
        "k", TS[split:], flags(pattern[split:]), gap, open_event_from(first, gap)
    )
    assert ids_of([*first["event_id"], *ids]) == ids_of(whole["event_id"])
    assert [*first["alert"], *alert] == whole["alert"].tolist()


def test_summarize_events_one_row_per_event_newest_first():
    rows = pd.DataFrame(
        {
            "kpi": ["a"] * 6 + ["b"] * 2,
            "ts": [*TS[:6], *TS[:2]],
            "is_anomaly": [True, True, False, True, False, False, True, False],
            "score": [0.55, 0.9, 0.1, 0.6, 0.2, 0.1, 0.52, 0.1],
            "severity": ["low", "critical", None, "medium", None, None, "low", None],
            "flagged_by": ["prophet", "iforest,prophet", None, "flatline", None, None, "gap", None],
        }
    )
    rows["event_id"] = None
    for kpi, part in rows.groupby("kpi"):
        ids, _ = assign_events(kpi, part["ts"], part["is_anomaly"].to_numpy(), merge_gap=0)
        rows.loc[part.index, "event_id"] = ids

    summary = summarize_events(rows)
    assert list(summary.columns) == [
        "kpi", "event_id", "start", "end", "points", "peak_score", "severity", "flagged_by",
    ]
    assert summary["start"].is_monotonic_decreasing
    by_id = summary.set_index("event_id")
    first = by_id.loc[event_id_for("a", TS[0])]
    assert (first["start"], first["end"], first["points"]) == (TS[0], TS[1], 2)
    assert first["peak_score"] == 0.9 and first["severity"] == "critical"
    assert first["flagged_by"] == "iforest,prophet"
    assert by_id.loc[event_id_for("a", TS[3]), "severity"] == "medium"
    assert by_id.loc[event_id_for("b", TS[0]), "flagged_by"] == "gap"
    assert len(summary) == 3


def test_summarize_events_without_anomalies_is_empty():
    rows = scored("....", merge_gap=0).assign(score=0.0, severity=None, flagged_by=None, kpi="k")
    summary = summarize_events(rows)
    assert summary.empty and "event_id" in summary.columns


def scores_of(surprise) -> np.ndarray:
    return score_from_surprise(np.asarray(surprise, dtype=float), 3.5)


def test_opening_scores_keep_points_a_decade_above_the_openings_in_the_merge_window_before():
    surprise = [0.5, 2.0, 1.0, 4.0, 4.5, 6.0, 2.0, 1.0, 0.2, 0.2, 0.2, 1.5, 1.1]
    score = scores_of(surprise)
    opening = opening_scores(score, merge_gap=2, threshold=3.5)
    # 0.5 opens (nothing before); 2.0 beats it by > 1; 1.0 does not beat 2.0; 4.0 beats the
    # three before it, by 2 over the opening 2.0; 4.5 beats them but climbs less than a decade
    # above the opening 4.0 (the same episode); 6.0 is 2 above 4.0; the quiet points after it
    # each follow a higher one within three points; 1.5 beats the three 0.2s before it (no
    # opening among them); 1.1 does not beat 1.5.
    opens = [True, True, False, True, False, True, False, False, False, False, False, True, False]
    np.testing.assert_array_equal(opening, np.where(opens, score, 0.0))


def test_evidence_that_climbs_point_by_point_registers_once_per_decade():
    # A stuck value gathers evidence row by row: 0.4 decades more each row, up to 7.8.
    climb = np.arange(1.0, 8.0, 0.4)
    surprise = np.array([0.3, 0.2, 0.4, *climb, 0.2, 0.1])
    opening = opening_scores(scores_of(surprise), merge_gap=2, threshold=3.5)
    passes = np.flatnonzero(opening > 0)
    assert passes.tolist() == [0, 4, 7, 10, 13, 16, 19]  # every third row of the climb
    # At any threshold up to a decade below its peak, the climb passes within a decade of first
    # reaching it.
    for level in climb[climb <= climb.max() - 1.0]:
        reached = np.flatnonzero(surprise >= level)[0]
        assert surprise[passes[passes >= reached][0]] <= level + 1.0


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.5, 0.6, 0.8, 0.95])
def test_at_any_threshold_passes_open_events_or_lie_inside_open_events(threshold):
    rng = np.random.default_rng(3)
    # Quiet stretches with bursts of high scores, so events open and run at every threshold.
    score = np.where(rng.uniform(size=600) < 0.1, rng.uniform(0.5, 1.0, 600), rng.uniform(0, 0.5, 600))
    opening = opening_scores(score, merge_gap=2, threshold=3.5)
    flagged = score >= threshold
    ts = pd.date_range("2025-01-01", periods=len(score), freq="h")
    _, alert = assign_events("k", ts, flagged, merge_gap=2)
    passes = opening >= threshold
    recent = pd.Series(flagged).shift(1).rolling(3, min_periods=1).max().fillna(0).astype(bool)
    assert (passes <= flagged).all()
    assert recent.to_numpy()[passes & ~alert].all()
    # An event that opens out of a quiet stretch (everything in the merge window before it more
    # than a decade less surprising) always passes; only climbs within an episode are dropped.
    surprise = surprise_from_score(score, 3.5)
    quiet_before = pd.Series(surprise).shift(1).rolling(3, min_periods=1).max().fillna(-np.inf)
    from_quiet = alert & (surprise >= quiet_before.to_numpy() + 1.0)
    assert from_quiet.any() and passes[from_quiet].all()
    assert passes.sum() <= alert.sum() + (passes & ~alert).sum()
